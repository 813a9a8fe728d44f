//! `yoink bench`: the case study's versions side by side, under the same load through the
//! same HTTP shape (`POST /buy`, 202 / 409 sold_out / 503 unavailable), driven by the
//! built-in load generator:
//!
//! - `naive` (V1), `db-atomic` (V2), `redis-sync` (V3): private backends behind a minimal
//!   hyper server in this crate (`server.rs`, `strategies.rs`), on the bench's own tables
//!   (`bench_sales`, `bench_orders`, dropped and recreated per run);
//! - `stream`: Yoink itself, the real API and a projector in this process, as `yoink demo`
//!   runs them.
//!
//! Everything lives in a database of its own (`--database`, default `yoink_bench`, created
//! when missing, on `DATABASE_URL`'s server) and under a Redis key prefix of its own per
//! run: it never flushes, deletes or writes the project's own data. Be warned that
//! `redis-sync` is meant to exhaust PostgreSQL's connections (`--pg-pool`, default 1000),
//! which others sharing that server feel while it runs.
//!
//! The comparison strategies are reachable only through `yoink bench`, never `serve`.

mod chart;
mod report;
mod sampler;
mod server;
mod strategies;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use yoink_core::db::with_database;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db};
use yoink_loadgen::{Load, LoadReport, Progress};
use yoink_reconciler::ReconcileArgs;

pub use report::{Machine, Reconciled, Results, StrategyResult};

pub use sampler::TimePoint;
use sampler::{Peaks, Sampler};
use server::Server;
use strategies::{Backend, Kind};

/// One way to sell, from the case study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// V1: read the stock, then decrement and insert, unlocked (oversells).
    Naive,
    /// V2: one guarded UPDATE … RETURNING and the insert, in a transaction.
    DbAtomic,
    /// V3: Redis reserve script, then a synchronous PostgreSQL insert per request.
    RedisSync,
    /// Yoink: Redis reserve script and stream, orders written by the projector.
    Stream,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::DbAtomic => "db-atomic",
            Strategy::RedisSync => "redis-sync",
            Strategy::Stream => "stream",
        }
    }
}

/// `yoink bench` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Strategies to run, in order.
    #[arg(
        long,
        env = "YOINK_BENCH_STRATEGY",
        value_enum,
        value_delimiter = ',',
        default_value = "naive,db-atomic,redis-sync,stream"
    )]
    pub strategy: Vec<Strategy>,
    /// Units on sale, per strategy.
    #[arg(long, env = "YOINK_BENCH_STOCK", default_value_t = 10_000)]
    pub stock: i64,
    /// Concurrent buyers (connections).
    #[arg(long, env = "YOINK_BENCH_BUYERS", default_value_t = 1_000)]
    pub buyers: usize,
    /// Buy requests in all, per strategy, each from a new buyer.
    #[arg(long, env = "YOINK_BENCH_REQUESTS", default_value_t = 50_000)]
    pub requests: u64,
    /// PostgreSQL pool of `redis-sync` (the case study's 1000): past the server's
    /// `max_connections`, PostgreSQL refuses and units are lost.
    #[arg(long, env = "YOINK_BENCH_PG_POOL", default_value_t = 1_000)]
    pub pg_pool: usize,
    /// PostgreSQL pool of `naive` and `db-atomic`.
    #[arg(long, env = "YOINK_BENCH_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    /// A database of the bench's own on DATABASE_URL's server (created when missing, and
    /// kept) [default: a fresh one per run, `yoink_bench_<unix-time>_<id>`, dropped with
    /// the run's Redis keys at the end unless --keep]. One run's sales must never meet
    /// another's: a projector takes every sale of its database for one its Redis holds.
    #[arg(long, env = "YOINK_BENCH_DATABASE")]
    pub database: Option<String>,
    /// Keep the run's database and Redis keys afterwards.
    #[arg(long, env = "YOINK_BENCH_KEEP")]
    pub keep: bool,
    /// Where to write results.json and report.md [default: bench-results/<unix-time>/].
    #[arg(long, env = "YOINK_BENCH_OUT")]
    pub out: Option<PathBuf>,
    /// Longest wait for the projector to write every order after the load (`stream`).
    #[arg(long, env = "YOINK_BENCH_DRAIN_SECS", default_value_t = 120)]
    pub drain_secs: u64,
    /// Print nothing (for tests and logs); the files are written all the same.
    #[arg(long, env = "YOINK_BENCH_QUIET")]
    pub quiet: bool,
}

impl BenchArgs {
    /// The defaults, ignoring the environment.
    pub fn defaults() -> Self {
        yoink_core::config::clap_defaults()
    }
}

/// What `run` produced: the results and where their files are.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub results: Results,
    pub out_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Settings out of range: nothing ran.
    #[error("{0}")]
    Usage(String),
    #[error("PostgreSQL: {0}")]
    Db(#[from] db::DbError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("creating the sale: {0}")]
    Sale(#[from] sales::SaleError),
    #[error("starting a server: {0}")]
    Server(String),
    #[error("reconcile: {0}")]
    Reconcile(#[from] yoink_reconciler::error::ReconcileError),
    #[error("reading reconcile's JSON: {0}")]
    ReconcileOutput(#[from] serde_json::Error),
    #[error("load generator: {0}")]
    Load(#[from] yoink_loadgen::LoadError),
    #[error("writing the report to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs every chosen strategy under the same load, writes `results.json` and `report.md`
/// and (unless `--quiet`) prints the table.
pub async fn run(stores: &StoreArgs, args: &BenchArgs) -> Result<BenchOutcome, BenchError> {
    check(args)?;
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/{unix_time}")));

    let run_id = run_stamp(Strategy::Stream);
    let run_id = run_id.rsplit('-').next().unwrap_or("run");
    let fresh = args.database.is_none();
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("yoink_bench_{unix_time}_{run_id}"));
    let mut bench_stores = stores.clone();
    bench_stores.database_url = with_database(&stores.database_url, &database);
    bench_stores.key_prefix = format!("{}yoink-bench-{unix_time}-{run_id}:", stores.key_prefix);
    db::ensure_database(&bench_stores.database_url).await?;
    let outcome = run_in(&bench_stores, args, unix_time, out_dir).await;
    if !args.keep {
        let mut redis = RedisConn::open(&bench_stores).await?;
        yoink_core::redis_store::delete_prefixed(&mut redis, &bench_stores.key_prefix).await?;
        if fresh {
            db::drop_database(&bench_stores.database_url).await?;
        }
    }
    outcome
}

async fn run_in(
    bench_stores: &StoreArgs,
    args: &BenchArgs,
    unix_time: u64,
    out_dir: PathBuf,
) -> Result<BenchOutcome, BenchError> {
    let admin = db::pool(&bench_stores.database_url, 2)?;
    // `stream` and the Redis sales need Yoink's schema, in the bench's own database.
    db::migrate(&admin).await?;

    let machine = Machine::this();
    say(
        args,
        &format!(
            "yoink bench: {} units, {} buyers, {} requests per strategy; {} CPUs, {}.",
            args.stock, args.buyers, args.requests, machine.nproc, machine.cpu_model
        ),
    );
    let mut strategies = Vec::new();
    for &strategy in &args.strategy {
        say(args, &format!("Running {}…", strategy.name()));
        let result = match strategy {
            Strategy::Naive | Strategy::DbAtomic | Strategy::RedisSync => {
                comparison(strategy, bench_stores, &admin, args).await?
            }
            Strategy::Stream => stream(bench_stores, &admin, args).await?,
        };
        say(
            args,
            &format!(
                "  {:.0} req/s, p99 {:.1} ms, orders {}, oversold {}, lost {}",
                result.requests_per_second,
                result.p99_ms,
                result.orders,
                result.oversold,
                result.lost
            ),
        );
        strategies.push(result);
    }
    admin.close();

    let results = Results {
        machine,
        unix_time,
        strategies,
    };
    results
        .write(&out_dir)
        .map_err(|source| BenchError::Write {
            path: out_dir.clone(),
            source,
        })?;
    say(args, &format!("\n{}", results.table()));
    say(args, &format!("Written to {}.", out_dir.display()));
    Ok(BenchOutcome { results, out_dir })
}

fn check(args: &BenchArgs) -> Result<(), BenchError> {
    if args.stock < 1 || args.buyers < 1 || args.requests < 1 {
        return Err(BenchError::Usage(
            "--stock, --buyers and --requests must be at least 1".into(),
        ));
    }
    if args.stock > sales::MAX_UNITS {
        return Err(BenchError::Usage(format!(
            "--stock must be at most {}",
            sales::MAX_UNITS
        )));
    }
    if args.pg_pool < 1 || args.db_pool < 1 {
        return Err(BenchError::Usage(
            "--pg-pool and --db-pool must be at least 1".into(),
        ));
    }
    if args.strategy.is_empty() {
        return Err(BenchError::Usage("--strategy names none".into()));
    }
    let valid_name = args.database.as_deref().is_none_or(|name| {
        !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if !valid_name {
        return Err(BenchError::Usage(
            "--database must be 1-63 letters, digits or underscores".into(),
        ));
    }
    Ok(())
}

/// A name no other run uses, for sale ids, key prefixes and buyers.
fn run_stamp(strategy: Strategy) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let unique = uuid::Uuid::now_v7().simple().to_string();
    format!("{}-{ms}-{}", strategy.name(), &unique[unique.len() - 8..])
}

fn load(addr: std::net::SocketAddr, sale: &str, stamp: &str, args: &BenchArgs) -> Load {
    Load {
        base_url: format!("http://{addr}"),
        sale_id: sale.to_owned(),
        buyers: args.buyers,
        requests: args.requests,
        user_prefix: format!("buyer-{stamp}-"),
    }
}

/// The load, with PostgreSQL connections, memory and the sale's timeline sampled while
/// it runs (`orders_sql`: where this strategy's orders are).
async fn measured(
    load: &Load,
    database_url: &str,
    orders_sql: &'static str,
) -> Result<(LoadReport, Peaks), BenchError> {
    let progress = Arc::new(Progress::default());
    let sampler = Sampler::start(
        database_url,
        orders_sql,
        load.sale_id.clone(),
        progress.clone(),
    )
    .await;
    let report = yoink_loadgen::run(load, progress).await;
    let peaks = sampler.stop().await;
    Ok((report?, peaks))
}

/// `naive`, `db-atomic` and `redis-sync`: fresh tables, a sale, the private server, the load.
async fn comparison(
    strategy: Strategy,
    stores: &StoreArgs,
    admin: &Pool,
    args: &BenchArgs,
) -> Result<StrategyResult, BenchError> {
    let stamp = run_stamp(strategy);
    let sale = SaleId::parse(&format!("bench-{stamp}"))
        .map_err(|e| BenchError::Usage(format!("sale id: {e}")))?;
    {
        let conn = admin.get().await?;
        conn.batch_execute(strategies::RESET_TABLES).await?;
        conn.execute(
            "INSERT INTO bench_sales (sale_id, initial_stock, stock) VALUES ($1, $2, $2)",
            &[&sale.as_str(), &args.stock],
        )
        .await?;
    }
    let (kind, pool_size, redis) = match strategy {
        Strategy::Naive => (Kind::Naive, args.db_pool, None),
        Strategy::DbAtomic => (Kind::DbAtomic, args.db_pool, None),
        _ => {
            // The run's one key prefix, paired with its one database as in a deployment:
            // the stream strategy's API later checks every sale of that database
            // against Redis, this one included.
            let keys = Keyspace::new(stores.key_prefix.clone());
            let mut redis = RedisConn::open(stores).await?;
            create_sale(&mut redis, &keys, admin, &sale, args.stock).await?;
            let kind = Kind::RedisSync {
                redis: redis.clone(),
                keys: keys.clone(),
            };
            (kind, args.pg_pool, Some((redis, keys)))
        }
    };
    let pool = db::pool(&stores.database_url, pool_size)?;
    let backend = Arc::new(Backend::new(kind, pool.clone()));
    let server = Server::start(backend.clone())
        .await
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let load = load(server.addr, sale.as_str(), &stamp, args);
    let orders_sql = match strategy {
        Strategy::RedisSync => sampler::YOINK_ORDERS,
        _ => sampler::BENCH_ORDERS,
    };
    let measured = measured(&load, &stores.database_url, orders_sql).await;
    // Stopped before counting: no request is still writing.
    server.stop().await;
    pool.close();
    let (report, peaks) = measured?;

    let mut notes = Vec::new();
    let (orders, lost, reconciled) = match redis {
        Some((mut redis, keys)) => {
            let orders = yoink_orders(admin, &sale).await?;
            let remaining: i64 = redis.get(keys.stock(&sale)).await?;
            let reconciled = settle_redis_sync(&mut redis, stores, &keys, &sale).await?;
            (
                orders,
                (args.stock - remaining - orders).max(0),
                Some(reconciled),
            )
        }
        None => (bench_orders(admin, &sale).await?, 0, None),
    };
    let refused = backend
        .failures
        .count
        .load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        notes.push(format!(
            "{refused} requests failed in PostgreSQL (503), first: {}",
            backend.failures.first.get().map_or("?", String::as_str)
        ));
    }
    if strategy == Strategy::RedisSync {
        notes.push(format!("PostgreSQL pool of {}", args.pg_pool));
    }
    let mut result = result(strategy, args, &report, orders, lost, peaks, notes);
    result.reconciled = reconciled;
    Ok(result)
}

/// V3 has no queue: its request path was the only writer, and each order was written
/// (or refused) before the buyer got an answer. The `reserved` entries the shared script
/// appended are therefore all delivered, which the consumer group is told (created at
/// the stream's end) before `yoink reconcile` looks: it then sees nothing in flight,
/// and every unit Redis took with no order is what it is, lost.
async fn settle_redis_sync(
    redis: &mut RedisConn,
    stores: &StoreArgs,
    keys: &Keyspace,
    sale: &SaleId,
) -> Result<Reconciled, BenchError> {
    let created: redis::RedisResult<()> = redis
        .xgroup_create_mkstream(keys.events(sale), PROJECTOR_GROUP, "$")
        .await;
    if let Err(err) = created
        && err.code() != Some("BUSYGROUP")
    {
        return Err(err.into());
    }
    reconcile(stores, keys, sale).await
}

/// `yoink reconcile --sale` on the bench's stores, as its verdict and lost units.
async fn reconcile(
    stores: &StoreArgs,
    keys: &Keyspace,
    sale: &SaleId,
) -> Result<Reconciled, BenchError> {
    let mut sale_stores = stores.clone();
    sale_stores.key_prefix = keys.prefix().to_owned();
    let args = ReconcileArgs {
        sale: Some(sale.to_string()),
        json: true,
        // A divergence is confirmed once it held still this long; nothing moves here.
        grace: 1,
        ..yoink_core::config::clap_defaults()
    };
    let mut rendered = Vec::new();
    yoink_reconciler::run_once(&sale_stores, &args, &mut rendered).await?;
    let line: serde_json::Value = serde_json::from_slice(&rendered)?;
    Ok(Reconciled {
        status: line["status"].as_str().unwrap_or("?").to_owned(),
        lost_units: line["lost_units"].as_i64().unwrap_or(0),
    })
}

/// Yoink: the real API and a projector in this process, as `yoink demo` runs them.
async fn stream(
    stores: &StoreArgs,
    admin: &Pool,
    args: &BenchArgs,
) -> Result<StrategyResult, BenchError> {
    let stamp = run_stamp(Strategy::Stream);
    let keys = Keyspace::new(stores.key_prefix.clone());
    let sale = SaleId::parse(&format!("bench-{stamp}"))
        .map_err(|e| BenchError::Usage(format!("sale id: {e}")))?;

    let pipeline = yoink_demo::Pipeline::start(stores, args.buyers, "bench")
        .await
        .map_err(BenchError::Server)?;
    let addr = pipeline.addr;

    let mut redis = match RedisConn::open(stores).await {
        Ok(redis) => redis,
        Err(err) => {
            pipeline.stop().await;
            return Err(err.into());
        }
    };
    let outcome = async {
        create_sale(&mut redis, &keys, admin, &sale, args.stock).await?;
        let load = load(addr, sale.as_str(), &stamp, args);
        let (report, mut peaks) =
            measured(&load, &stores.database_url, sampler::YOINK_ORDERS).await?;

        // Drain: every accepted unit becomes an order.
        let accepted = i64::try_from(report.accepted).unwrap_or(i64::MAX);
        let drain_started = Instant::now();
        let deadline = drain_started + Duration::from_secs(args.drain_secs);
        let mut orders = yoink_orders(admin, &sale).await?;
        while orders < accepted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            orders = yoink_orders(admin, &sale).await?;
        }
        peaks.timeline.push(TimePoint {
            secs: report.elapsed.as_secs_f64() + drain_started.elapsed().as_secs_f64(),
            accepted: report.accepted,
            orders,
        });
        let remaining: i64 = redis.get(keys.stock(&sale)).await?;
        let mut notes = Vec::new();
        if orders < accepted {
            notes.push(format!(
                "drain incomplete after {} s: {} accepted units not yet orders",
                args.drain_secs,
                accepted - orders
            ));
        }
        let lost = (args.stock - remaining - orders).max(0);
        let mut result = result(Strategy::Stream, args, &report, orders, lost, peaks, notes);
        result.reconciled = Some(reconcile(stores, &keys, &sale).await?);
        Ok::<_, BenchError>(result)
    }
    .await;
    pipeline.stop().await;
    outcome
}

async fn create_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    admin: &Pool,
    sale: &SaleId,
    stock: i64,
) -> Result<(), BenchError> {
    sales::create_sale(
        redis,
        keys,
        admin,
        &CreateSale {
            sale_id: sale.clone(),
            terms: SaleTerms {
                initial_stock: stock,
                ..SaleTerms::default()
            },
        },
    )
    .await?;
    Ok(())
}

/// Units in the bench's orders for `sale`.
async fn bench_orders(admin: &Pool, sale: &SaleId) -> Result<i64, BenchError> {
    let row = admin
        .get()
        .await?
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM bench_orders WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

/// Units in Yoink's orders for `sale`.
async fn yoink_orders(admin: &Pool, sale: &SaleId) -> Result<i64, BenchError> {
    let row = admin
        .get()
        .await?
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

fn result(
    strategy: Strategy,
    args: &BenchArgs,
    report: &LoadReport,
    orders: i64,
    lost: i64,
    peaks: Peaks,
    notes: Vec<String>,
) -> StrategyResult {
    let ms = |p: f64| report.percentile(p).as_secs_f64() * 1000.0;
    let mut notes = notes;
    if !report.other_examples.is_empty() {
        notes.push(format!(
            "other answers, e.g. {}",
            report.other_examples.join("; ")
        ));
    }
    StrategyResult {
        strategy: strategy.name().to_owned(),
        stock: args.stock,
        buyers: args.buyers,
        requests: args.requests,
        elapsed_secs: report.elapsed.as_secs_f64(),
        requests_per_second: report.requests_per_second(),
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        accepted: report.accepted,
        sold_out: report.sold_out,
        unavailable: report.unavailable,
        other: report.other,
        orders,
        oversold: report::oversold(orders, args.stock),
        lost,
        peak_pg_connections: peaks.pg_connections,
        peak_rss_bytes: peaks.rss,
        timeline: peaks.timeline,
        notes,
        reconciled: None,
    }
}

fn say(args: &BenchArgs, line: &str) {
    if !args.quiet {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_run_all_four_strategies_at_the_case_study_numbers() {
        let args = BenchArgs::defaults();
        assert_eq!(
            args.strategy,
            [
                Strategy::Naive,
                Strategy::DbAtomic,
                Strategy::RedisSync,
                Strategy::Stream
            ]
        );
        assert_eq!(
            (args.stock, args.buyers, args.requests),
            (10_000, 1_000, 50_000)
        );
        assert_eq!(args.pg_pool, 1_000);
        assert!(check(&args).is_ok());
    }
}
