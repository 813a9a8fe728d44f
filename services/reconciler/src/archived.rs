//! Archived sales, as the reconciler sees them: checked from PostgreSQL alone (their
//! Redis state is gone, on purpose), and the reconcile check `yoink sale archive` runs
//! before it archives a sale.
//!
//! It must never fence, suspend or repair an archived sale: any of those would write
//! Redis keys under a tag the archive emptied, and a rebuild would bring the sale back.

use yoink_core::{SaleId, StoreArgs, archive};

use crate::error::ReconcileError;
use crate::report::{ArchivedBooks, SaleReport, Status};
use crate::snapshot;
use crate::stores::Stores;

/// One archived sale's report: the figures are PostgreSQL's; Redis is asked one
/// `EXISTS` over every key the sale can have (one slot; no `SCAN`, whose cost would
/// grow with the whole keyspace on every pass of `--watch`).
pub(crate) async fn measure(s: &mut Stores, sale: &SaleId) -> Result<SaleReport, ReconcileError> {
    let left: u64 = redis::cmd("EXISTS")
        .arg(s.keys.all_of_sale(sale))
        .query_async(&mut s.redis)
        .await?;
    let mut nothing_in_flight = snapshot::RedisSnapshot::default();
    let postgres =
        snapshot::postgres_side(&s.pool, sale, &mut nothing_in_flight, s.overdue_after).await?;
    let counters = s
        .pool
        .get()
        .await?
        .query_one(
            "SELECT confirmed_units, released_units FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    let books = ArchivedBooks {
        confirmed_counter: counters.get(0),
        released_counter: counters.get(1),
        remaining: postgres.initial_stock - postgres.confirmed_units - postgres.held_units,
        redis_keys_left: left,
        issues: Vec::new(),
    };
    Ok(SaleReport::archived(
        sale,
        nothing_in_flight.side,
        postgres,
        books,
    ))
}

/// Whether `sale`'s two stores reconcile right now, as `yoink sale archive` requires:
/// `None` when consistent with nothing in flight, else why not. No grace period: a
/// disagreement that might still settle is a reason to wait, not to archive.
pub async fn refusal(stores: &StoreArgs, sale: &SaleId) -> Result<Option<String>, ReconcileError> {
    let mut s = Stores::open(stores, std::time::Duration::from_secs(1)).await?;
    let (report, _) = s.measure(sale).await?;
    Ok(match report.status {
        Status::Consistent | Status::Archived => None,
        Status::InFlight => Some(format!(
            "{} units are still in flight (not decided in PostgreSQL)",
            report.in_flight_units
        )),
        Status::Unsettled | Status::Diverged => Some(format!(
            "the stores disagree: {} lost, {} phantom units, {} released units not back in Redis, Redis self-difference {} (see `yoink reconcile --sale {sale}`)",
            report.divergence.lost_units,
            report.divergence.phantom_units,
            report.pending_release_units,
            report.divergence.redis_self_diff
        )),
        other => Some(format!(
            "yoink reconcile says {} (see `yoink reconcile --sale {sale}`)",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
    })
}

/// `yoink sale end` and `yoink sale archive`: what failed.
#[derive(Debug, thiserror::Error)]
pub enum SaleCommandError {
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("sale id {raw:?}: {source}")]
    BadSaleId {
        raw: String,
        #[source]
        source: yoink_core::IdError,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl SaleCommandError {
    /// 1 refused, 2 a store could not be read or written, 3 no such sale, 64 a wrong
    /// command line.
    pub fn exit_code(&self) -> i32 {
        match self {
            SaleCommandError::Archive(err) => err.exit_code(),
            SaleCommandError::Reconcile(err) => err.exit_code(),
            SaleCommandError::BadSaleId { .. } => crate::error::exit::USAGE,
            SaleCommandError::Output(_) => crate::error::exit::STORE,
        }
    }
}

/// `yoink sale archive` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveArgs {
    /// The sale to archive.
    #[arg(long, env = "YOINK_SALE_ID")]
    pub id: String,
    /// Archive it. Without it the plan is printed and nothing changes. Deliberately a
    /// flag only, never read from the environment: whoever types the command confirms.
    #[arg(long)]
    pub yes: bool,
    /// Milliseconds between recording the archive in PostgreSQL and removing the Redis
    /// keys, so every API instance and projector learns of it first (they re-read
    /// PostgreSQL every second, and would otherwise take the emptied sale for a Redis
    /// that lost its data).
    #[arg(long, env = "YOINK_ARCHIVE_SETTLE_MS", default_value_t = 3_000)]
    pub settle_ms: u64,
}

fn parse(raw: &str) -> Result<SaleId, SaleCommandError> {
    SaleId::parse(raw).map_err(|source| SaleCommandError::BadSaleId {
        raw: raw.to_owned(),
        source,
    })
}

async fn open(
    stores: &StoreArgs,
) -> Result<
    (
        yoink_core::RedisConn,
        deadpool_postgres::Pool,
        yoink_core::Keyspace,
    ),
    SaleCommandError,
> {
    let redis = yoink_core::RedisConn::open(stores)
        .await
        .map_err(archive::ArchiveError::from)?;
    let pool =
        yoink_core::db::pool(&stores.database_url, 2).map_err(archive::ArchiveError::from)?;
    Ok((
        redis,
        pool,
        yoink_core::Keyspace::new(stores.key_prefix.clone()),
    ))
}

/// `yoink sale end --id ID`: closes the sale now; prints the outcome as JSON. Exit 0,
/// also when it had ended already.
pub async fn end(
    stores: &StoreArgs,
    raw_id: &str,
    out: &mut impl std::io::Write,
) -> Result<i32, SaleCommandError> {
    let sale = parse(raw_id)?;
    let (mut redis, pool, keys) = open(stores).await?;
    let ended = archive::end_sale(&mut redis, &keys, &pool, &sale).await?;
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&ended).map_err(std::io::Error::other)?
    )?;
    Ok(0)
}

/// `yoink sale archive --id ID [--yes]`: prints the plan, or why the sale cannot be
/// archived (exit 1); with `--yes`, archives it: `archived_at` in PostgreSQL, a settle
/// wait, then every Redis key of the sale and its registry entry removed, and checked
/// gone. A repeat on an archived sale removes whatever Redis still holds of it.
pub async fn archive(
    stores: &StoreArgs,
    args: &ArchiveArgs,
    out: &mut impl std::io::Write,
) -> Result<i32, SaleCommandError> {
    let sale = parse(&args.id)?;
    let (mut redis, pool, keys) = open(stores).await?;
    let mut plan = archive::plan(&mut redis, &keys, &pool, &sale).await?;
    if plan.archived_at_ms.is_none()
        && plan.refusals.is_empty()
        && let Some(why) = refusal(stores, &sale).await?
    {
        plan.refusals.push(archive::Refusal::NotConsistent(why));
    }
    write!(out, "{plan}")?;
    if !plan.refusals.is_empty() {
        return Err(archive::ArchiveError::Refused {
            sale,
            reasons: plan.refusals,
        }
        .into());
    }
    if !args.yes {
        writeln!(out, "nothing changed: add --yes to archive it")?;
        return Ok(0);
    }
    let (at, now) = archive::record_archived(&pool, &sale).await?;
    if now {
        writeln!(
            out,
            "archived_at recorded in PostgreSQL; waiting {} ms for API instances and projectors to learn of it",
            args.settle_ms
        )?;
        tokio::time::sleep(std::time::Duration::from_millis(args.settle_ms)).await;
    }
    let removed = archive::remove_from_redis(&mut redis, &keys, &pool, &sale).await?;
    let left = archive::keys_left(&mut redis, &keys, &sale)
        .await
        .map_err(archive::ArchiveError::from)?;
    writeln!(
        out,
        "sale {sale} archived (archived_at {at} ms): {} Redis key(s) removed{}, {} left",
        removed.keys,
        if removed.registry_entry {
            " and its registry entry"
        } else {
            ""
        },
        left.len()
    )?;
    Ok(if left.is_empty() { 0 } else { 1 })
}
