//! `yoink nemesis`: a bounded, seeded fault-injection run, then a check of every
//! reservation it was told about.
//!
//! How a run goes:
//! 1. **Stores.** By default private Redis and PostgreSQL (`yoink-localstores`), with a
//!    persistent Redis (an AOF, so killing Redis alone loses nothing, and `SAVE`d
//!    snapshots it can be put back to). `--stores given` uses `REDIS_URL` and
//!    `DATABASE_URL` as given, in a database and key prefix of the run's own (removed
//!    afterwards unless the run failed or `--keep`), and injects only the faults that
//!    need no process control (`rewind-cursor`, `claim-to-ghost`).
//! 2. **Processes.** The `yoink` binary itself (`--yoink-bin`, default this executable)
//!    as one API and two projectors, each logging to `<out>/logs/`.
//! 3. **Schedule.** A seeded splitmix64 draws `(at_ms, fault, lasts_ms)` before the run
//!    and prints it: the same seed, `--seconds` and `--faults` give the same schedule.
//!    Faults never overlap (each is healed before the next begins).
//! 4. **Load.** Buyers arrive at a constant `--rate`, each request from one of a
//!    limited pool of buyers (so the per-buyer limit bites) with an Idempotency-Key of
//!    its own (so an answer that never came can be looked up afterwards). One history
//!    line per request event: `invoke`, then `ok` (202), `fail` (a definite refusal:
//!    4xx, a 503 without a reservation id, a connection that never opened) or
//!    `indefinite` (a timeout, a connection lost after sending, a 503 carrying a
//!    reservation id: it may stand).
//! 5. **Heal and drain.** Everything restarted, then wait until every 202 has a fate,
//!    the stream is drained and the sale is not suspended (bounded by `--drain-secs`).
//! 6. **Check**, in PostgreSQL and Redis: each 202 confirmed (with one order row) or
//!    released exactly once; no duplicate orders or reservations for one
//!    Idempotency-Key; nothing oversold; the per-buyer limit kept; every indefinite
//!    outcome resolved (found in PostgreSQL, or in neither store) and how many took
//!    effect; Redis's stock equal to what PostgreSQL's ledger leaves; and `yoink
//!    reconcile`'s verdict. Then the report, printed and written as `report.json`.
//!
//! Redis back from an older snapshot: before Redis is killed, the API is paused
//! (SIGSTOP) and the projectors get up to 5 s to drain the stream, so every 202 Redis
//! forgets is one PostgreSQL already has. What Yoink promises there is that it fails
//! closed and rebuilds the sale, never that it keeps a 202 Redis lost before any
//! projector read it (those are counted as `data_lost`, see streams.md): the run checks
//! the first promise, and reports (and fails on) any loss if the drain did not finish.
//!
//! Exit codes: 0 nothing lost, duplicated or oversold (and the limit kept, every
//! indefinite outcome resolved, the stock and the reconciler consistent); 1 a check
//! failed (each failure is named, with the seed to replay it); 2 the run could not be
//! carried out; 64 a wrong command line.
//!
//! It must never touch data it did not make: on given stores it works only in its own
//! database and key prefix, and it signals only the processes it started.

mod check;
mod faults;
mod history;
mod load;
mod processes;
mod report;
mod runner;
pub mod schedule;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use yoink_core::StoreArgs;

pub use report::Report;
pub use schedule::{Fault, FaultKind};

/// Which stores a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoresMode {
    /// Private redis-server and PostgreSQL it starts itself: every fault kind.
    Private,
    /// REDIS_URL and DATABASE_URL as given: only the faults that need no process control.
    Given,
}

/// A fault planted on purpose, to prove the checks catch it (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// Delete one order row in PostgreSQL mid-run.
    DeleteOrder,
    /// Take one unit from the Redis stock with no event (`DECR`) mid-run.
    StealUnit,
}

/// `yoink nemesis` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct NemesisArgs {
    /// How long buyers arrive, in seconds (faults happen within it).
    #[arg(long, env = "YOINK_NEMESIS_SECONDS", default_value_t = 60)]
    pub seconds: u64,
    /// The schedule's seed (default: drawn from the clock, and printed).
    #[arg(long, env = "YOINK_NEMESIS_SEED")]
    pub seed: Option<u64>,
    /// Buy requests per second, at a constant rate.
    #[arg(long, env = "YOINK_NEMESIS_RATE", default_value_t = 100)]
    pub rate: u64,
    /// Distinct buyers (default: one per three requests, at least 20).
    #[arg(long, env = "YOINK_NEMESIS_BUYERS")]
    pub buyers: Option<u64>,
    /// Units on sale (default: half the requests: with the default buyers and a limit
    /// of 2, it sells out about two thirds into the run).
    #[arg(long, env = "YOINK_NEMESIS_STOCK")]
    pub stock: Option<i64>,
    /// Most units one buyer may hold.
    #[arg(long, env = "YOINK_NEMESIS_LIMIT_PER_USER", default_value_t = 2)]
    pub limit_per_user: i64,
    /// Private stores it starts (every fault), or REDIS_URL/DATABASE_URL as given
    /// (only rewind-cursor and claim-to-ghost).
    #[arg(long, value_enum, env = "YOINK_NEMESIS_STORES", default_value_t = StoresMode::Private)]
    pub stores: StoresMode,
    /// Fault kinds to draw from, comma-separated (default: all the stores allow):
    /// kill-api, kill-projector, pg-restart, redis-restart, redis-older-snapshot,
    /// rewind-cursor, claim-to-ghost.
    #[arg(long, env = "YOINK_NEMESIS_FAULTS", value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// The `yoink` binary to run as API and projectors (default: this executable).
    #[arg(long, env = "YOINK_NEMESIS_YOINK_BIN")]
    pub yoink_bin: Option<PathBuf>,
    /// Where the history, the report and the processes' logs go (default:
    /// nemesis-results/<unix time>/).
    #[arg(long, env = "YOINK_NEMESIS_OUT")]
    pub out: Option<PathBuf>,
    /// A request without an answer by then is indefinite.
    #[arg(
        long,
        env = "YOINK_NEMESIS_REQUEST_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub request_timeout_ms: u64,
    /// Longest wait, after the load, for every reservation to get its fate.
    #[arg(long, env = "YOINK_NEMESIS_DRAIN_SECS", default_value_t = 60)]
    pub drain_secs: u64,
    /// Print the schedule and exit, running nothing.
    #[arg(long, env = "YOINK_NEMESIS_PRINT_SCHEDULE")]
    pub print_schedule: bool,
    /// On given stores, keep the run's database and keys afterwards.
    #[arg(long, env = "YOINK_NEMESIS_KEEP")]
    pub keep: bool,
    /// Plant a fault the checks must catch (for tests).
    #[arg(long, value_enum, env = "YOINK_NEMESIS_PLANT", hide = true)]
    pub plant: Option<Plant>,
}

/// Why a run could not be carried out (a failed check is not an error: it is the
/// report, and exit 1).
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// 64: a setting out of range.
    #[error("{0}")]
    Usage(String),
    /// 2: the private stores could not start or be restarted.
    #[error("private stores: {0}")]
    Local(#[from] yoink_localstores::LocalError),
    /// 2
    #[error("PostgreSQL: {0}")]
    Db(#[from] yoink_core::db::DbError),
    /// 2
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// 2
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// 2
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// 2
    #[error("creating the sale: {0}")]
    Sale(#[from] yoink_core::sales::SaleError),
    /// 2: a file or a process could not be made.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// 2: the API never answered.
    #[error("the API on port {port} did not answer within {secs} s (logs: {logs})")]
    ApiNotUp { port: u16, secs: u64, logs: String },
    /// 2: the HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl NemesisError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            NemesisError::Usage(_) => 64,
            _ => 2,
        }
    }
}

impl NemesisArgs {
    /// Range checks, with the flag to change.
    fn check(&self) -> Result<(), NemesisError> {
        let usage = |m: &str| Err(NemesisError::Usage(m.to_owned()));
        if !(1..=3_600).contains(&self.seconds) {
            return usage("--seconds must be between 1 and 3600");
        }
        if !(1..=5_000).contains(&self.rate) {
            return usage("--rate must be between 1 and 5000 requests per second");
        }
        if self.buyers == Some(0) || self.stock.is_some_and(|s| s < 1) {
            return usage("--buyers and --stock must be at least 1");
        }
        if self.limit_per_user < 1 {
            return usage("--limit-per-user must be at least 1 (the check needs a limit)");
        }
        if self.request_timeout_ms < 100 {
            return usage("--request-timeout-ms must be at least 100");
        }
        let needs_control = self
            .faults
            .iter()
            .find(|k| !FaultKind::WITHOUT_PROCESS_CONTROL.contains(k));
        match (self.stores, needs_control) {
            (StoresMode::Given, Some(kind)) => Err(NemesisError::Usage(format!(
                "--stores given allows only rewind-cursor and claim-to-ghost, not {kind}"
            ))),
            _ => Ok(()),
        }
    }

    /// The kinds the schedule draws from.
    fn kinds(&self) -> Vec<FaultKind> {
        match (self.faults.is_empty(), self.stores) {
            (false, _) => self.faults.clone(),
            (true, StoresMode::Private) => FaultKind::ALL.to_vec(),
            (true, StoresMode::Given) => FaultKind::WITHOUT_PROCESS_CONTROL.to_vec(),
        }
    }

    fn requests(&self) -> u64 {
        self.rate * self.seconds
    }

    fn buyers(&self) -> u64 {
        self.buyers.unwrap_or((self.requests() / 3).max(20))
    }

    fn stock(&self) -> i64 {
        self.stock
            .unwrap_or_else(|| ((self.requests() / 2) as i64).max(10))
    }
}

/// The settings a run was made with, as the report states them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub seed: u64,
    pub seconds: u64,
    pub rate: u64,
    pub buyers: u64,
    pub stock: i64,
    pub limit_per_user: i64,
    pub stores: &'static str,
    pub faults: Vec<FaultKind>,
    pub request_timeout_ms: u64,
    pub plant: Option<&'static str>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The flags that replay a run's schedule.
fn replay(args: &NemesisArgs, seed: u64) -> String {
    let mut line = format!("--seconds {} --seed {seed}", args.seconds);
    if args.stores == StoresMode::Given {
        line.push_str(" --stores given");
    }
    if !args.faults.is_empty() {
        let names: Vec<&str> = args.faults.iter().map(|k| k.name()).collect();
        line.push_str(&format!(" --faults {}", names.join(",")));
    }
    line
}

/// Runs `yoink nemesis`, printing to stdout; returns the exit code.
pub async fn run(stores: &StoreArgs, args: &NemesisArgs) -> Result<i32, NemesisError> {
    args.check()?;
    let seed = args.seed.unwrap_or(now_ms() as u64 % 1_000_000_007);
    let kinds = args.kinds();
    let schedule = schedule::draw(seed, args.seconds, &kinds);
    print!("{}", schedule::render(seed, args.seconds, &schedule));
    if args.print_schedule {
        return Ok(0);
    }
    let settings = Settings {
        seed,
        seconds: args.seconds,
        rate: args.rate,
        buyers: args.buyers(),
        stock: args.stock(),
        limit_per_user: args.limit_per_user,
        stores: match args.stores {
            StoresMode::Private => "private",
            StoresMode::Given => "given",
        },
        faults: kinds,
        request_timeout_ms: args.request_timeout_ms,
        plant: args.plant.map(|p| match p {
            Plant::DeleteOrder => "delete-order",
            Plant::StealUnit => "steal-unit",
        }),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("nemesis-results/{}", now_ms() / 1_000)));
    std::fs::create_dir_all(&out)
        .map_err(|err| NemesisError::Io(format!("creating {}", out.display()), err))?;
    let bin = match &args.yoink_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .map_err(|err| NemesisError::Io("finding the yoink executable".into(), err))?,
    };
    let report = runner::run(stores, args, &settings, &schedule, &bin, &out).await?;
    println!("{}", report.render());
    let path = out.join("report.json");
    let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
    std::fs::write(&path, json)
        .map_err(|err| NemesisError::Io(format!("writing {}", path.display()), err))?;
    println!("Report: {}", path.display());
    if report.ok() {
        Ok(0)
    } else {
        println!(
            "FAILED with seed {seed}: replay with `yoink nemesis {}`; history and logs: {}",
            replay(args, seed),
            out.display()
        );
        Ok(1)
    }
}
