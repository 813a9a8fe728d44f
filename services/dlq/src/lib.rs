//! `yoink dlq`: the dead letters of every sale (`{sale:ID}:dead`, written by the
//! projectors when they give up on an entry) listed, shown with their reservation's
//! fate in PostgreSQL, replayed once their cause is fixed, and purged.
//!
//! ```text
//! yoink dlq list   [--sale ID] [--reason R] [--limit N] [--json]
//! yoink dlq show   ENTRY [--sale ID] [--json]
//! yoink dlq replay ENTRY | --all [--sale ID] [--limit N] [--max-replays N] [--dry-run] [--json]
//! yoink dlq purge  ENTRY | --all [--sale ID] --yes [--json]
//! ```
//!
//! ENTRY is `SALE/ID` (`ID`: the entry's id in the sale's dead stream, as `list`
//! prints it), or `ID` with `--sale SALE`. Copies of one original entry (a crash while
//! dead-lettering writes two) are one dead letter: shown, replayed and purged together.
//!
//! Replay outcomes (`replay::Outcome`): `projected`, `already_confirmed` (both resolved:
//! removed from the dead stream after PostgreSQL committed), `released_final` (refused:
//! PostgreSQL released it for good), `still_failing`, `loop_guard` (replayed
//! `--max-replays` times already; the counts live in `{sale:ID}:dead:replays`),
//! `not_a_reservation`. Details and examples: the crate's README.md.
//!
//! Exit codes (`error::exit`): 0 done (every entry replayed resolved or had nothing to
//! do); 1 `replay` left entries unresolved (`still_failing`, `released_final`,
//! `loop_guard`); 2 a store could not be read or written, or the sale is suspended; 3
//! no such sale or entry; 64 a wrong command line.
//!
//! Never a decision PostgreSQL did not make: replay writes through the projectors'
//! ledger (idempotent per reservation), and nothing here gives units back or takes
//! them. Never an unbounded read: dead streams are read 500 entries at a time.

pub mod entry;
pub mod error;
pub mod fate;
pub mod purge;
mod render;
pub mod replay;
pub mod scan;

use std::collections::BTreeMap;
use std::io::Write;

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use redis::streams::StreamPendingCountReply;
use serde::Serialize;
use yoink_core::events::SaleEvent;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{Keyspace, RedisConn, StoreArgs, db};

pub use entry::{DeadLetter, EntryRef, EventReader};
pub use error::{DlqError, exit};
pub use fate::Fate;
pub use purge::PurgeReport;
pub use replay::{Outcome, ReplayOptions, ReplayReport, Replayed};
pub use scan::Listing;

/// `yoink dlq`: dead letters listed, shown with their fate in PostgreSQL, replayed once
/// their cause is fixed, purged. Exit codes: 0 done; 1 `replay` left entries unresolved
/// (still failing, released for good, stopped by the loop guard); 2 a store could not
/// be read or written (or the sale is suspended); 3 no such sale or entry; 64 a wrong
/// command line.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters with their age and reason, and their counts by reason (exit 0).
    List(ListArgs),
    /// One dead letter: the original event, the reason, the delivery count, its replay
    /// count and its reservation's fate in PostgreSQL (exit 0; 3 no such entry).
    Show(ShowArgs),
    /// Project dead letters again once their cause is fixed; resolved ones leave the
    /// dead stream. Exit 0 all resolved or nothing to do, 1 some unresolved.
    Replay(ReplayArgs),
    /// Remove dead letters and their replay counts (`--all` needs `--yes`).
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this sale's dead letters (default: every sale's).
    #[arg(long, env = "YOINK_DLQ_SALE")]
    pub sale: Option<String>,
    /// Only dead letters whose reason class is R (`malformed`, `refused:23514`,
    /// `unreleasable`, `other`) or whose reason contains R.
    #[arg(long, env = "YOINK_DLQ_REASON")]
    pub reason: Option<String>,
    /// Most dead letters listed (read 500 at a time, oldest first).
    #[arg(long, env = "YOINK_DLQ_LIMIT", default_value_t = 1_000)]
    pub limit: usize,
    /// JSON output.
    #[arg(long, env = "YOINK_DLQ_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// `SALE/ID` (as `list` prints it), or `ID` with `--sale`.
    pub entry: String,
    /// The entry's sale, when ENTRY is only its id.
    #[arg(long, env = "YOINK_DLQ_SALE")]
    pub sale: Option<String>,
    /// JSON output.
    #[arg(long, env = "YOINK_DLQ_JSON")]
    pub json: bool,
}

/// What `replay` and `purge` work on: one dead letter, or all of them.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// `SALE/ID` (as `list` prints it), or `ID` with `--sale`; or `--all`.
    pub entry: Option<String>,
    /// Every dead letter (of `--sale`, or of every sale), oldest first.
    #[arg(long, env = "YOINK_DLQ_ALL")]
    pub all: bool,
    /// The sale: with `--all`, only its dead letters; with an ENTRY that is only an id,
    /// its sale.
    #[arg(long, env = "YOINK_DLQ_SALE")]
    pub sale: Option<String>,
}

impl Target {
    /// Exactly one of ENTRY and `--all`, and an ENTRY that names an entry.
    fn check(&self) -> Result<(), DlqError> {
        match (&self.entry, self.all) {
            (Some(_), true) => Err(DlqError::BadFlags("give ENTRY or --all, not both")),
            (None, false) => Err(DlqError::BadFlags("give ENTRY, or --all")),
            _ => self.entry().map(|_| ()),
        }
    }

    /// The entry named, or `None` for `--all`.
    fn entry(&self) -> Result<Option<EntryRef>, DlqError> {
        self.entry
            .as_deref()
            .map(|raw| EntryRef::parse(raw, self.sale.as_deref()))
            .transpose()
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: Target,
    /// With `--all`: most dead letters replayed in this run.
    #[arg(long, env = "YOINK_DLQ_LIMIT", default_value_t = 1_000)]
    pub limit: usize,
    /// Loop guard: attempts allowed per entry, counted across runs (in Redis).
    #[arg(long, env = "YOINK_DLQ_MAX_REPLAYS", default_value_t = 3)]
    pub max_replays: u64,
    /// Say what would happen, write nothing (PostgreSQL's part runs and is rolled
    /// back, so a refusal shows).
    #[arg(long, env = "YOINK_DLQ_DRY_RUN")]
    pub dry_run: bool,
    /// JSON output.
    #[arg(long, env = "YOINK_DLQ_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Confirms `--all` (never read from the environment: it must be typed).
    #[arg(long)]
    pub yes: bool,
    /// JSON output.
    #[arg(long, env = "YOINK_DLQ_JSON")]
    pub json: bool,
}

/// The exit codes, as `yoink dlq --help` shows them.
const EXIT_CODES: &str = "Exit codes: 0 done (every entry replayed resolved, or nothing to do); \
1 replay left entries unresolved (still_failing, released_final, loop_guard); 2 a store \
could not be read or written, or the sale is suspended; 3 no such sale or entry; 64 a \
wrong command line.";

/// What one `yoink dlq` run works on: the stores, and how keys are named.
pub struct Dlq {
    pub redis: RedisConn,
    pub pool: Pool,
    pub keys: Keyspace,
}

impl Dlq {
    /// Opens both stores and checks they answer (no migration: a tool for a running
    /// deployment).
    pub async fn open(stores: &StoreArgs) -> Result<Self, DlqError> {
        let mut redis = RedisConn::open(stores).await?;
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        let pool = db::pool(&stores.database_url, 2)?;
        pool.get().await?.simple_query("SELECT 1").await?;
        Ok(Self::new(
            redis,
            pool,
            Keyspace::new(stores.key_prefix.clone()),
        ))
    }

    pub fn new(redis: RedisConn, pool: Pool, keys: Keyspace) -> Self {
        Self { redis, pool, keys }
    }
}

/// What `show` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The original entry's fields (bytes that are not text as `0x…`).
    pub event: BTreeMap<String, String>,
    /// Why this version cannot read the event, if it cannot.
    pub parse_error: Option<String>,
    /// The reservation's fate in PostgreSQL; `None` when the entry names no readable
    /// reservation id.
    pub fate: Option<Fate>,
    /// Replays attempted so far (the loop guard's count).
    pub replays: u64,
}

/// One dead letter with its fate. `deliveries` is the count recorded on the copy, or,
/// while the original entry is still pending in the projectors' group, its delivery
/// count there.
pub async fn show(dlq: &mut Dlq, entry: &EntryRef) -> Result<Shown, DlqError> {
    let mut letter = scan::find(dlq, entry).await?;
    let parse_error = letter
        .event(SaleEvent::from_fields)
        .err()
        .map(|e| e.to_string());
    let fate = match letter.reservation_id {
        Some(id) => Some(fate::of(&dlq.pool.get().await?, id).await?),
        None => None,
    };
    if letter.deliveries.is_none() && !letter.original_id.is_empty() {
        let pending: redis::RedisResult<StreamPendingCountReply> = dlq
            .redis
            .xpending_count(
                dlq.keys.events(&entry.sale),
                PROJECTOR_GROUP,
                &letter.original_id,
                &letter.original_id,
                1,
            )
            .await;
        // No group (or no stream) means nothing pending: not an error for a display.
        letter.deliveries = pending
            .ok()
            .and_then(|p| p.ids.first().map(|p| p.times_delivered as u64));
    }
    let replays: Option<u64> = dlq
        .redis
        .hget(
            dlq.keys.dead_letter_replays(&entry.sale),
            &letter.original_id,
        )
        .await?;
    Ok(Shown {
        event: letter.shown_fields(),
        letter,
        parse_error,
        fate,
        replays: replays.unwrap_or(0),
    })
}

/// The flags' own checks (before any store is opened): exactly one of ENTRY and
/// `--all`, `--yes` with `purge --all`, bounds of at least 1.
pub fn check(args: &DlqArgs) -> Result<(), DlqError> {
    match &args.command {
        DlqCommand::List(a) if a.limit == 0 => {
            Err(DlqError::BadFlags("--limit must be at least 1"))
        }
        DlqCommand::List(_) => Ok(()),
        DlqCommand::Show(a) => EntryRef::parse(&a.entry, a.sale.as_deref()).map(|_| ()),
        DlqCommand::Replay(a) => {
            a.target.check()?;
            if a.limit == 0 {
                return Err(DlqError::BadFlags("--limit must be at least 1"));
            }
            if a.max_replays == 0 {
                return Err(DlqError::BadFlags("--max-replays must be at least 1"));
            }
            Ok(())
        }
        DlqCommand::Purge(a) => {
            a.target.check()?;
            if a.target.all && !a.yes {
                return Err(DlqError::BadFlags(
                    "purge --all removes every dead letter: add --yes to confirm",
                ));
            }
            Ok(())
        }
    }
}

/// Runs `args` on `dlq`, writing its output to `out`; returns the exit code. `replay`
/// takes `read` for the events (`SaleEvent::from_fields` from the command line).
pub async fn execute(
    dlq: &mut Dlq,
    args: &DlqArgs,
    read: EventReader,
    out: &mut impl Write,
) -> Result<i32, DlqError> {
    check(args)?;
    match &args.command {
        DlqCommand::List(a) => {
            let listing = scan::list(dlq, a.sale.as_deref(), a.reason.as_deref(), a.limit).await?;
            emit(out, a.json, &listing, render::listing)?;
            Ok(exit::DONE)
        }
        DlqCommand::Show(a) => {
            let entry = EntryRef::parse(&a.entry, a.sale.as_deref())?;
            let shown = show(dlq, &entry).await?;
            emit(out, a.json, &shown, render::shown)?;
            Ok(exit::DONE)
        }
        DlqCommand::Replay(a) => {
            let options = ReplayOptions {
                max_replays: a.max_replays,
                dry_run: a.dry_run,
                read,
            };
            let report = match a.target.entry()? {
                Some(entry) => replay::replay_entry(dlq, &entry, &options).await?,
                None => {
                    replay::replay_all(dlq, a.target.sale.as_deref(), a.limit, &options).await?
                }
            };
            emit(out, a.json, &report, render::replay)?;
            Ok(report.exit_code)
        }
        DlqCommand::Purge(a) => {
            let report = match a.target.entry()? {
                Some(entry) => purge::purge_entry(dlq, &entry).await?,
                None => purge::purge_all(dlq, a.target.sale.as_deref()).await?,
            };
            emit(out, a.json, &report, render::purge)?;
            Ok(exit::DONE)
        }
    }
}

fn emit<T: Serialize>(
    out: &mut impl Write,
    json: bool,
    value: &T,
    human: fn(&T) -> String,
) -> Result<(), DlqError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", human(value))?;
    }
    Ok(())
}

/// Runs `yoink dlq`, printing to stdout; returns the exit code.
pub async fn run(stores: &StoreArgs, args: &DlqArgs) -> Result<i32, DlqError> {
    // A wrong command line is told before any store is opened.
    check(args)?;
    let mut dlq = Dlq::open(stores).await?;
    let mut out = Vec::new();
    let outcome = execute(&mut dlq, args, SaleEvent::from_fields, &mut out).await;
    std::io::stdout().write_all(&out)?;
    outcome
}
