//! Ending a sale now, and archiving one that ended (issue 15): Redis holds what is in
//! flight, PostgreSQL holds history.
//!
//! - `end_sale` (`yoink sale end`): PostgreSQL's `ends_at` moves to now first, then
//!   Redis's meta (`end_sale.lua`), so `reserve.lua` answers `SALE_CLOSED`. Idempotent,
//!   and it never reopens a sale.
//! - `plan`: whether a sale may be archived, and every reason it may not: not ended,
//!   Redis suspended, stream entries pending or undelivered for the projectors' group,
//!   holds waiting, dead letters left. Whether its books reconcile is the reconciler's
//!   check, which the `yoink` binary adds (this crate cannot depend on it).
//! - `record_archived`, then `remove_from_redis` (`yoink sale archive --yes`):
//!   PostgreSQL's `archived_at` first, then every key under the sale's tag
//!   (`archive_sale.lua`, one slot) and its registry entry.
//!
//! It must never remove a Redis key of a sale PostgreSQL has not recorded as archived,
//! and never create one for an archived sale.

use std::sync::LazyLock;

use deadpool_postgres::{GenericClient, Pool};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, Script};

use crate::db::DbError;
use crate::holds;
use crate::ids::SaleId;
use crate::keys::{Keyspace, PROJECTOR_GROUP};
use crate::redis_store::RedisConn;

static END_SALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/end_sale.lua")));
static ARCHIVE_SALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/archive_sale.lua")));

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// exit 3: PostgreSQL has no such sale (it is the record of every sale)
    #[error("no sale {0} in PostgreSQL")]
    Unknown(SaleId),
    /// exit 1: the sale cannot be archived now, for these reasons
    #[error("sale {sale} cannot be archived: {}", list(.reasons))]
    Refused { sale: SaleId, reasons: Vec<Refusal> },
    /// exit 2: Redis could not be read or written
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// exit 2: PostgreSQL could not be read or written
    #[error("{0}")]
    Db(#[from] DbError),
}

impl ArchiveError {
    /// The process exit code `yoink sale end` and `yoink sale archive` end with: 1 refused,
    /// 2 a store could not be read or written, 3 no such sale (as `yoink reconcile`).
    pub fn exit_code(&self) -> i32 {
        match self {
            ArchiveError::Refused { .. } => 1,
            ArchiveError::Redis(_) | ArchiveError::Db(_) => 2,
            ArchiveError::Unknown(_) => 3,
        }
    }
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(err: tokio_postgres::Error) -> Self {
        ArchiveError::Db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for ArchiveError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ArchiveError::Db(DbError::Pool(err))
    }
}

fn list(reasons: &[Refusal]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a sale cannot be archived now. Each says what would change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the sale has not ended (ends_at {}); `yoink sale end --id ID` closes it now", fmt_ms(*.ends_at_ms))]
    NotEnded { ends_at_ms: Option<i64> },
    #[error("Redis still sells it (meta ends_at_ms {}): run `yoink sale end --id ID` again", fmt_ms(*.ends_at_ms))]
    OpenInRedis { ends_at_ms: Option<i64> },
    #[error(
        "Redis is suspended until it is rebuilt from PostgreSQL (a projector, or `yoink reconcile --repair --yes`)"
    )]
    Suspended,
    #[error(
        "{0} stream entries are pending for the projectors' group (delivered, not acknowledged)"
    )]
    Pending(u64),
    #[error(
        "{0} stream entries were never delivered to the projectors' group: is `yoink project` running?"
    )]
    Undelivered(u64),
    #[error("the stream holds {0} entries and no projectors' group: nothing projected them")]
    NoGroup(u64),
    #[error("{0} units are in holds still waiting for a confirm, cancel or expiry")]
    HoldsWaiting(i64),
    #[error("{0} dead letters left: `yoink dlq replay` or `yoink dlq purge` them first")]
    DeadLetters(u64),
    #[error("the stores do not reconcile: {0}")]
    NotConsistent(String),
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
        Some(t) => t.to_string(),
        None => "none".to_owned(),
    }
}

/// `yoink sale end`'s outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ended {
    pub sale_id: SaleId,
    /// When the sale closed (epoch ms): now, or the earlier end it already had.
    pub ends_at_ms: i64,
    /// Its start (epoch ms; 0: none). A sale that had not started is given a start one
    /// millisecond before its end (PostgreSQL's CHECK ends_at > starts_at), so no
    /// future instant is open.
    pub starts_at_ms: i64,
    /// It had ended already; nothing changed in PostgreSQL.
    pub already_ended: bool,
    /// What Redis did: `closed` now, `already_closed`, or `absent` (no Redis state:
    /// archived, or never created there).
    pub redis: &'static str,
}

/// Closes `sale` now: PostgreSQL first (the record), then Redis's meta. The end is the
/// earlier of PostgreSQL's and Redis's clocks, so `reserve.lua` (Redis `TIME`)
/// refuses from the moment this returns. Running it again changes nothing.
pub async fn end_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
) -> Result<Ended, ArchiveError> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
    let redis_now_ms = secs * 1_000 + micros / 1_000;
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT (extract(epoch FROM starts_at) * 1000)::bigint,
                    (extract(epoch FROM ends_at) * 1000)::bigint,
                    (extract(epoch FROM now()) * 1000)::bigint,
                    archived_at IS NOT NULL
             FROM sales WHERE sale_id = $1 FOR UPDATE",
            &[&sale.as_str()],
        )
        .await?
        .ok_or_else(|| ArchiveError::Unknown(sale.clone()))?;
    let starts_at: Option<i64> = row.get(0);
    let ends_at: Option<i64> = row.get(1);
    let pg_now_ms: i64 = row.get(2);
    let archived: bool = row.get(3);
    let now_ms = pg_now_ms.min(redis_now_ms);
    let (starts_at, ends_at, already_ended) = match ends_at {
        Some(end) if end <= now_ms => (starts_at, end, true),
        _ => {
            let start = starts_at.map(|s| s.min(now_ms - 1));
            tx.execute(
                "UPDATE sales SET ends_at = to_timestamp($2::bigint / 1000.0),
                                  starts_at = to_timestamp($3::bigint / 1000.0),
                                  ended_early_at = now()
                 WHERE sale_id = $1",
                &[&sale.as_str(), &now_ms, &start],
            )
            .await?;
            (start, now_ms, false)
        }
    };
    tx.commit().await?;
    let redis_outcome = if archived {
        "absent"
    } else {
        let applied: i64 = END_SALE
            .key(keys.meta(sale))
            .arg(ends_at)
            .arg(starts_at.unwrap_or(0))
            .invoke_async(redis)
            .await?;
        match applied {
            1 => "closed",
            0 => "already_closed",
            _ => "absent",
        }
    };
    Ok(Ended {
        sale_id: sale.clone(),
        ends_at_ms: ends_at,
        starts_at_ms: starts_at.unwrap_or(0),
        already_ended,
        redis: redis_outcome,
    })
}

/// What archiving a sale would do, and what stands in its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sale_id: SaleId,
    /// Set once PostgreSQL recorded the archive (epoch ms): a repeat only removes what
    /// Redis still holds.
    pub archived_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    /// Empty: the sale may be archived (the reconcile check aside, added by the caller).
    pub refusals: Vec<Refusal>,
    /// Every key under the sale's tag now.
    pub keys: Vec<String>,
    /// The sale is in the registry of sales.
    pub registered: bool,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.archived_at_ms {
            Some(at) => writeln!(
                f,
                "sale {} was archived at {}",
                self.sale_id,
                fmt_ms(Some(at))
            )?,
            None => writeln!(
                f,
                "sale {}: ended at {}",
                self.sale_id,
                fmt_ms(self.ends_at_ms)
            )?,
        }
        if !self.refusals.is_empty() {
            writeln!(f, "cannot archive it:")?;
            for r in &self.refusals {
                writeln!(f, "  - {r}")?;
            }
            return Ok(());
        }
        if self.archived_at_ms.is_none() {
            writeln!(
                f,
                "1. record archived_at in PostgreSQL (it stays the record: GET /sales, GET /reservations and yoink reconcile answer from it)"
            )?;
        }
        writeln!(
            f,
            "2. remove the sale's {} Redis key(s){}:",
            self.keys.len(),
            if self.registered {
                " and its entry in the registry of sales"
            } else {
                ""
            }
        )?;
        for k in &self.keys {
            writeln!(f, "     {k}")?;
        }
        Ok(())
    }
}

/// Reads both stores and says whether `sale` may be archived, and why not. Read-only.
pub async fn plan(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
) -> Result<Plan, ArchiveError> {
    let db = pool.get().await?;
    let row = db
        .query_opt(
            "SELECT (extract(epoch FROM ends_at) * 1000)::bigint,
                    ends_at IS NOT NULL AND ends_at <= now(),
                    (extract(epoch FROM archived_at) * 1000)::bigint
             FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .ok_or_else(|| ArchiveError::Unknown(sale.clone()))?;
    let ends_at_ms: Option<i64> = row.get(0);
    let ended: bool = row.get(1);
    let archived_at_ms: Option<i64> = row.get(2);
    let registered: bool = redis
        .sismember(keys.sales_registry(), sale.as_str())
        .await?;
    let mut plan = Plan {
        sale_id: sale.clone(),
        archived_at_ms,
        ends_at_ms,
        refusals: Vec::new(),
        keys: keys_left(redis, keys, sale).await?,
        registered,
    };
    if archived_at_ms.is_some() {
        // Archived: PostgreSQL alone answers for it; whatever Redis still holds (a run
        // that stopped half-way, a stray suspension) is removed.
        return Ok(plan);
    }
    if !ended {
        plan.refusals.push(Refusal::NotEnded { ends_at_ms });
    }
    let (initial, redis_ends, suspended): (Option<i64>, Option<i64>, Option<String>) =
        redis::cmd("HMGET")
            .arg(keys.meta(sale))
            .arg(&["initial", "ends_at_ms", "suspended"])
            .query_async(redis)
            .await?;
    if suspended.is_some() {
        plan.refusals.push(Refusal::Suspended);
    }
    if initial.is_some() {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
        let open = match redis_ends {
            None | Some(0) => true,
            Some(end) => end > secs * 1_000 + micros / 1_000,
        };
        if open {
            plan.refusals.push(Refusal::OpenInRedis {
                ends_at_ms: redis_ends.filter(|e| *e > 0),
            });
        }
    }
    plan.refusals.extend(undrained(redis, keys, sale).await?);
    let held = holds::held_units(&db, sale).await?;
    let waiting: u64 = redis.zcard(keys.holds(sale)).await?;
    if held > 0 || waiting > 0 {
        plan.refusals
            .push(Refusal::HoldsWaiting(held.max(waiting as i64)));
    }
    let dead: u64 = redis.xlen(keys.dead_letters(sale)).await?;
    if dead > 0 {
        plan.refusals.push(Refusal::DeadLetters(dead));
    }
    Ok(plan)
}

/// Entries of the sale's stream the projectors' group has not finished: pending, or
/// after its last-delivered id.
async fn undrained(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> Result<Vec<Refusal>, ArchiveError> {
    let events = keys.events(sale);
    let exists: bool = redis.exists(&events).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let length: u64 = redis.xlen(&events).await?;
    let groups: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(&events).await?;
    let Some(group) = groups.groups.iter().find(|g| g.name == PROJECTOR_GROUP) else {
        return Ok(if length > 0 {
            vec![Refusal::NoGroup(length)]
        } else {
            Vec::new()
        });
    };
    let mut refusals = Vec::new();
    if group.pending > 0 {
        refusals.push(Refusal::Pending(group.pending as u64));
    }
    let undelivered = match group.lag {
        Some(lag) => lag as u64,
        // Redis cannot tell the lag (entries were deleted): count what follows the
        // last-delivered id, a page at most.
        None => {
            let after: redis::streams::StreamRangeReply = redis
                .xrange_count(&events, format!("({}", group.last_delivered_id), "+", 1_000)
                .await?;
            after.ids.len() as u64
        }
    };
    if undelivered > 0 {
        refusals.push(Refusal::Undelivered(undelivered));
    }
    Ok(refusals)
}

/// Records the archive in PostgreSQL, once, and only if the sale has ended and no hold
/// waits (re-checked in the same statement). Returns when it was archived (epoch ms)
/// and whether this call did it.
pub async fn record_archived(pool: &Pool, sale: &SaleId) -> Result<(i64, bool), ArchiveError> {
    let db = pool.get().await?;
    let now = db
        .query_opt(
            "UPDATE sales SET archived_at = now()
             WHERE sale_id = $1 AND archived_at IS NULL
               AND ends_at IS NOT NULL AND ends_at <= now()
               AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.sale_id = $1 AND h.state = 'held')
             RETURNING (extract(epoch FROM archived_at) * 1000)::bigint",
            &[&sale.as_str()],
        )
        .await?;
    if let Some(row) = now {
        return Ok((row.get(0), true));
    }
    let row = db
        .query_opt(
            "SELECT (extract(epoch FROM archived_at) * 1000)::bigint,
                    (extract(epoch FROM ends_at) * 1000)::bigint
             FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .ok_or_else(|| ArchiveError::Unknown(sale.clone()))?;
    match row.get::<_, Option<i64>>(0) {
        Some(at) => Ok((at, false)),
        None => Err(ArchiveError::Refused {
            sale: sale.clone(),
            reasons: vec![Refusal::NotEnded {
                ends_at_ms: row.get(1),
            }],
        }),
    }
}

/// What `remove_from_redis` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Keys of the sale removed (the script's, and any other found under the tag).
    pub keys: u64,
    /// The registry entry was removed.
    pub registry_entry: bool,
}

/// Removes every Redis key of `sale` and its registry entry. Only for a sale
/// PostgreSQL has recorded as archived: it refuses otherwise, so no live sale loses its
/// Redis state by a mistyped id.
pub async fn remove_from_redis(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
) -> Result<Removed, ArchiveError> {
    if !is_archived(&pool.get().await?, sale).await? {
        return Err(ArchiveError::Refused {
            sale: sale.clone(),
            reasons: vec![Refusal::NotEnded { ends_at_ms: None }],
        });
    }
    let mut script = ARCHIVE_SALE.prepare_invoke();
    for key in keys.all_of_sale(sale) {
        script.key(key);
    }
    let mut removed: u64 = script.invoke_async(redis).await?;
    // Anything else under the tag (a key this version does not name): one UNLINK per
    // key, each in the sale's slot.
    for key in keys_left(redis, keys, sale).await? {
        let n: u64 = redis::cmd("UNLINK").arg(&key).query_async(redis).await?;
        removed += n;
    }
    let unregistered: i64 = redis.srem(keys.sales_registry(), sale.as_str()).await?;
    Ok(Removed {
        keys: removed,
        registry_entry: unregistered > 0,
    })
}

/// Every key under `sale`'s tag (`SCAN MATCH {prefix}{sale:ID}*`, a page at a time), on
/// the node that serves the sale's slot when Redis is a Cluster.
pub async fn keys_left(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> redis::RedisResult<Vec<String>> {
    let tag = keys.sale_tag(sale);
    let pattern = format!("{}*", glob_escape(&tag));
    let mut found = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000);
        let (next, page): (u64, Vec<String>) = match redis {
            RedisConn::Single(_) => cmd.query_async(redis).await?,
            RedisConn::Cluster(conn) => {
                let route = Route::with_key(keys.meta(sale), SlotAddr::Master);
                let reply = conn
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(reply)?
            }
        };
        found.extend(page.into_iter().filter(|k| k.starts_with(&tag)));
        if next == 0 {
            return Ok(found.into_iter().collect());
        }
        cursor = next;
    }
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// PostgreSQL recorded `sale` as archived.
pub async fn is_archived(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM sales WHERE sale_id = $1 AND archived_at IS NOT NULL",
            &[&sale.as_str()],
        )
        .await?
        .is_some())
}

/// Sales archived at or after `since_ms` (epoch ms; 0: all), with when, oldest first:
/// a process that watches archives reads only the new ones (overlapping its last read
/// by a margin, since `archived_at` is its transaction's start, not its commit).
pub async fn archived_since(
    client: &impl GenericClient,
    since_ms: i64,
) -> Result<Vec<(SaleId, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT sale_id, (extract(epoch FROM archived_at) * 1000)::bigint FROM sales
             WHERE archived_at >= to_timestamp($1::bigint / 1000.0)
             ORDER BY archived_at",
            &[&since_ms],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((SaleId::parse(r.get(0)).ok()?, r.get(1))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_a_prefix_are_escaped() {
        assert_eq!(
            glob_escape("t[1]*?\\{sale:s}"),
            "t\\[1\\]\\*\\?\\\\{sale:s}"
        );
        assert_eq!(glob_escape("{sale:s-1.x}"), "{sale:s-1.x}");
    }

    #[test]
    fn a_refusal_says_what_would_change_it() {
        let err = ArchiveError::Refused {
            sale: SaleId::parse("s").expect("valid id"),
            reasons: vec![Refusal::Pending(3), Refusal::DeadLetters(1)],
        };
        let text = err.to_string();
        assert!(text.contains("3 stream entries are pending"), "{text}");
        assert!(text.contains("yoink dlq"), "{text}");
        assert!(
            Refusal::NotEnded { ends_at_ms: None }
                .to_string()
                .contains("yoink sale end")
        );
    }
}
