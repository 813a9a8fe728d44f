//! Rebuilding a suspended sale's Redis state from PostgreSQL's ledger, then resuming it.
//! Projectors run it when they find a sale suspended; `yoink reconcile --repair --yes`
//! runs it too.
//!
//! A sale is suspended when Redis was found below a position someone saw it reach
//! (`fence.lua`, `reserve.lua`): it went back in time and forgot reservations
//! PostgreSQL holds. While suspended, nothing writes the sale's Redis state (reserve and
//! release refuse), so the rebuild works on a still picture:
//!
//! 1. One process at a time (a PostgreSQL advisory lock per sale).
//! 2. Every reservation still in the stream that PostgreSQL has not decided (taken
//!    before the rollback and not projected yet, or taken after it and before the
//!    suspension) is decided now, in stream order: confirmed (on a sale with holds:
//!    recorded as a hold, which keeps its deadline) while units and the buyer's limit
//!    allow, released otherwise. PostgreSQL decides, and the decisions and a new epoch
//!    commit together, before Redis is touched.
//! 3. Redis's reservation records, Idempotency-Keys, buyer counts and waiting holds are
//!    staged from the ledger, then swapped in with the counters, the stock and the new
//!    epoch, and the suspension lifted, in one compare-and-set on the suspension token.
//!
//! It never deletes an order and never gives a unit back twice: released units are
//! back on sale because the stock is computed from the ledger, and their records say
//! `released`, so a late `release.lua` answers "already".

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::TryStreamExt;
use redis::AsyncCommands;
use tokio_postgres::IsolationLevel;

use crate::events::Reserved;
use crate::ids::SaleId;
use crate::keys::Keyspace;
use crate::ledger::{self, LedgerError};
use crate::position::Position;
use crate::redis_store::RedisConn;
use crate::scripts::{self, Fence, Rebuild, ReservationRecord, SaleTerms};
use crate::{epochs, sales, stream};

/// Sales rebuilt from PostgreSQL after Redis went back in time.
pub const RECOVERIES: &str = "yoink_sale_recoveries_total";
/// Seconds from the start of a rebuild to the sale selling again.
pub const RECOVERY_SECONDS: &str = "yoink_sale_recovery_seconds";
/// Reservations a rebuild decided, by fate (`confirmed`, `released`).
pub const RECOVERED_RESERVATIONS: &str = "yoink_sale_recovered_reservations_total";
/// Reservations Redis answered and lost before PostgreSQL saw them, as known at the
/// sale's last rebuild.
pub const LOST_RESERVATIONS: &str = "yoink_sale_lost_reservations";

/// Why a rebuild did not finish (the sale stays suspended; the next attempt starts over).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL has no such sale: there is no ledger to rebuild Redis from.
    #[error("sale {0} is unknown to PostgreSQL: there is no ledger to rebuild Redis from")]
    UnknownSale(SaleId),
    /// The sale was suspended again (or Redis restarted) while it was being rebuilt.
    #[error("the sale was suspended again during its rebuild")]
    SuspendedAgain,
    /// The sale was archived: PostgreSQL alone holds it, Redis must not get it back.
    #[error("sale {0} is archived: PostgreSQL alone holds it, it is never rebuilt in Redis")]
    Archived(SaleId),
}

impl From<tokio_postgres::Error> for RecoveryError {
    fn from(err: tokio_postgres::Error) -> Self {
        RecoveryError::Ledger(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for RecoveryError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        RecoveryError::Ledger(err.into())
    }
}

/// Fields written per HSET while staging.
const STAGE_CHUNK: usize = 1_000;

/// The per-sale advisory lock that lets one process at a time rebuild a sale.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended('yoink-recover:' || $1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('yoink-recover:' || $1, 0))";

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub epoch: i64,
    /// Reservations the rebuild decided: confirmed, and released for want of units or
    /// because the buyer would pass the limit.
    pub confirmed: u64,
    pub released: u64,
    /// Reservations answered in ended epochs and never decided: lost with Redis.
    pub lost_reservations: i64,
    pub stock: i64,
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recovered(Recovered),
    /// The sale is live (someone else finished, or it was never suspended).
    NotSuspended,
    /// Another process is rebuilding it right now.
    Busy,
}

/// Rebuilds `sale` if it is suspended. `who` names the caller in logs and epochs.
pub async fn recover(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
    who: &str,
) -> Result<Outcome, RecoveryError> {
    let lock = pool.get().await?;
    if crate::archive::is_archived(&lock, sale).await? {
        return Err(RecoveryError::Archived(sale.clone()));
    }
    let locked: bool = lock.query_one(TRY_LOCK, &[&sale.as_str()]).await?.get(0);
    if !locked {
        return Ok(Outcome::Busy);
    }
    let outcome = rebuild(redis, keys, pool, sale, who).await;
    let unlocked = lock.execute(UNLOCK, &[&sale.as_str()]).await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool:
        // closed, it releases the lock.
        drop(deadpool_postgres::Object::take(lock));
    }
    let outcome = outcome?;
    if let Outcome::Recovered(r) = &outcome {
        record(sale, r);
    }
    Ok(outcome)
}

async fn rebuild(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
    who: &str,
) -> Result<Outcome, RecoveryError> {
    let started = Instant::now();
    let (token, reason, redis_epoch) =
        match scripts::fence(redis, keys, sale, Position::ZERO, who, false).await? {
            Fence::Live(_) => return Ok(Outcome::NotSuspended),
            Fence::Suspended {
                token,
                reason,
                position,
                ..
            } => (token, reason, position.epoch),
        };
    tracing::warn!(sale_id = %sale, reason = %reason, "Rebuilding the sale's Redis state from PostgreSQL.");

    let in_stream = stream::unacknowledged(redis, keys, sale).await?;
    let (epoch, confirmed, released) =
        decide_and_open_epoch(pool, sale, &in_stream, &token, &reason, redis_epoch).await?;

    let staged = stage(redis, keys, pool, sale).await?;
    let rebuild = Rebuild {
        token,
        stock: staged.terms.initial_stock - (staged.reserved - staged.released),
        terms: staged.terms,
        reserved: staged.reserved,
        released: staged.released,
        epoch,
    };
    match scripts::rebuild_sale(redis, keys, sale, &rebuild).await {
        Ok(()) => {}
        Err(scripts::RebuildError::Stale) => return Err(RecoveryError::SuspendedAgain),
        Err(scripts::RebuildError::Redis(err)) => return Err(err.into()),
    }
    let _: i64 = redis.sadd(keys.sales_registry(), sale.as_str()).await?;
    stream::ensure_group(redis, &keys.events(sale)).await?;
    let lost_reservations = epochs::lost_reservations(&pool.get().await?, sale).await?;
    let recovered = Recovered {
        epoch,
        confirmed,
        released,
        lost_reservations,
        stock: rebuild.stock,
        took: started.elapsed(),
    };
    tracing::warn!(
        sale_id = %sale,
        epoch,
        confirmed,
        released,
        lost_reservations,
        stock = rebuild.stock,
        took_ms = recovered.took.as_millis() as u64,
        "Sale rebuilt from PostgreSQL and resumed."
    );
    if lost_reservations > 0 {
        tracing::error!(sale_id = %sale, lost_reservations, "Redis lost reservations it had answered before PostgreSQL saw them.");
    }
    Ok(Outcome::Recovered(recovered))
}

/// Why a reservation the rebuild found undecided cannot keep its units.
fn refusal(units_left: i64, held: i64, limit: i64, quantity: i64) -> Option<&'static str> {
    if quantity > units_left {
        Some("no units left in PostgreSQL after Redis lost data")
    } else if limit > 0 && held + quantity > limit {
        Some("per-user limit reached in PostgreSQL after Redis lost data")
    } else {
        None
    }
}

/// One transaction: decides every undecided reservation of `in_stream` (stream order,
/// first come first served) and allocates the next epoch. Returns (epoch, confirmed,
/// released).
async fn decide_and_open_epoch(
    pool: &Pool,
    sale: &SaleId,
    in_stream: &[(String, Reserved)],
    token: &str,
    reason: &str,
    redis_epoch: i64,
) -> Result<(i64, u64, u64), RecoveryError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT initial_stock, limit_per_user,
                    confirmed_units + (SELECT coalesce(sum(quantity), 0) FROM holds
                                       WHERE sale_id = $1 AND state = 'held')::bigint
             FROM sales WHERE sale_id = $1 FOR UPDATE",
            &[&sale.as_str()],
        )
        .await?
    else {
        return Err(RecoveryError::UnknownSale(sale.clone()));
    };
    // Units that are not on sale: confirmed, and held for payment.
    let (initial, limit, taken_units): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let decided = ledger::decided(&tx, in_stream.iter().map(|(_, r)| r)).await?;
    let mut seen = std::collections::HashSet::new();
    let undecided: Vec<&(String, Reserved)> = in_stream
        .iter()
        .filter(|(_, r)| {
            let id = r.reservation_id.as_uuid();
            !decided.contains(&id) && seen.insert(id)
        })
        .collect();
    let users: Vec<&str> = undecided.iter().map(|(_, r)| r.user_id.as_str()).collect();
    let mut held: std::collections::HashMap<String, i64> = tx
        .query(
            "SELECT user_id, sum(quantity)::bigint FROM (
                 SELECT user_id, quantity FROM reservation_fates
                 WHERE sale_id = $1 AND fate = 'confirmed' AND user_id = ANY($2)
                 UNION ALL
                 SELECT user_id, quantity FROM holds
                 WHERE sale_id = $1 AND state = 'held' AND user_id = ANY($2)) taken
             GROUP BY user_id",
            &[&sale.as_str(), &users],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut units_left = initial - taken_units;
    let mut to_confirm = Vec::new();
    let mut to_release = Vec::new();
    for (stream_id, r) in undecided {
        let user_held = held.entry(r.user_id.to_string()).or_default();
        match refusal(units_left, *user_held, limit, r.quantity) {
            None => {
                units_left -= r.quantity;
                *user_held += r.quantity;
                to_confirm.push((stream_id.as_str(), r));
            }
            Some(why) => to_release.push((stream_id.as_str(), r, why)),
        }
    }
    // A hold keeps its units and its deadline: it waits for its confirm as before.
    let (to_hold, to_confirm): (Vec<_>, Vec<_>) = to_confirm
        .into_iter()
        .partition(|(_, r)| r.expires_at_ms.is_some());
    let confirmed = ledger::confirm_in(&tx, &to_confirm).await?
        + crate::holds::record_in(&tx, &to_hold).await?;
    let mut released = 0;
    for (stream_id, r, why) in &to_release {
        released += u64::from(ledger::release_in(&tx, stream_id, r, why).await?);
    }
    epochs::close_open(&tx, sale).await?;
    let suspended_at: f64 = token.parse().unwrap_or(0.0);
    let epoch: i64 = tx
        .query_one(
            "INSERT INTO sale_epochs
                 (sale_id, epoch, reason, suspended_at, recovered_confirmed, recovered_released)
             SELECT $1, greatest(coalesce(max(epoch), 0), $2::bigint) + 1, $3,
                    CASE WHEN $4::float8 > 0 THEN to_timestamp($4::float8) END, $5, $6
             FROM sale_epochs WHERE sale_id = $1
             RETURNING epoch",
            &[
                &sale.as_str(),
                &redis_epoch,
                &reason,
                &suspended_at,
                &(confirmed as i64),
                &(released as i64),
            ],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok((epoch, confirmed, released))
}

/// The sale's figures, from one consistent read of the ledger.
struct Staged {
    terms: SaleTerms,
    reserved: i64,
    released: i64,
}

/// Writes the staged reservation records, Idempotency-Keys and buyer counts from
/// PostgreSQL (one REPEATABLE READ snapshot) and returns the counters of the same
/// snapshot.
async fn stage(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
) -> Result<Staged, RecoveryError> {
    let (staged_buyers, staged_idem, staged_records, staged_holds) = (
        keys.staged(&keys.buyers(sale)),
        keys.staged(&keys.idempotency(sale)),
        keys.staged(&keys.reservations(sale)),
        keys.staged(&keys.holds(sale)),
    );
    let _: i64 = redis
        .del(&[&staged_buyers, &staged_idem, &staged_records, &staged_holds])
        .await?;
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let terms = sales::terms_from_db(&tx, sale)
        .await?
        .ok_or_else(|| RecoveryError::UnknownSale(sale.clone()))?;

    let rows = tx
        .query_raw(
            &format!(
                "SELECT reservation_id::text, user_id, quantity, fate = 'released',
                        coalesce(stream_id, ''),
                        (extract(epoch FROM reserved_at) * 1000)::bigint, idempotency_key,
                        NULL::bigint
                 FROM reservation_fates WHERE sale_id = $1
                 UNION ALL
                 SELECT h.reservation_id::text, h.user_id, h.quantity, false, h.stream_id,
                        (extract(epoch FROM h.reserved_at) * 1000)::bigint, h.idempotency_key,
                        (extract(epoch FROM h.expires_at) * 1000)::bigint
                 FROM {WAITING_HOLDS}"
            ),
            &[&sale.as_str()],
        )
        .await?;
    futures::pin_mut!(rows);
    let mut records: Vec<(String, String)> = Vec::with_capacity(STAGE_CHUNK);
    let mut idem: Vec<(String, String)> = Vec::new();
    let mut waiting: Vec<(i64, String)> = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let rid: String = row.get(0);
        let record = ReservationRecord {
            released: row.get(3),
            user_id: row.get(1),
            quantity: row.get(2),
            stream_id: row.get(4),
            reserved_at_ms: row.get(5),
        };
        if let Some(key) = row.get::<_, Option<String>>(6) {
            idem.push((key, rid.clone()));
        }
        if let Some(expires_at_ms) = row.get::<_, Option<i64>>(7) {
            waiting.push((expires_at_ms, rid.clone()));
        }
        if waiting.len() >= STAGE_CHUNK {
            zadd(redis, &staged_holds, &mut waiting).await?;
        }
        records.push((rid, record.encode()));
        if records.len() >= STAGE_CHUNK {
            hset(redis, &staged_records, &mut records).await?;
        }
        if idem.len() >= STAGE_CHUNK {
            hset(redis, &staged_idem, &mut idem).await?;
        }
    }
    hset(redis, &staged_records, &mut records).await?;
    hset(redis, &staged_idem, &mut idem).await?;
    zadd(redis, &staged_holds, &mut waiting).await?;

    let buyers = tx
        .query_raw(
            &format!(
                "SELECT user_id, sum(quantity)::bigint FROM (
                     SELECT user_id, quantity FROM reservation_fates
                     WHERE sale_id = $1 AND fate = 'confirmed'
                     UNION ALL
                     SELECT h.user_id, h.quantity FROM {WAITING_HOLDS}) taken
                 GROUP BY user_id"
            ),
            &[&sale.as_str()],
        )
        .await?;
    futures::pin_mut!(buyers);
    let mut counts: Vec<(String, String)> = Vec::with_capacity(STAGE_CHUNK);
    while let Some(row) = buyers.try_next().await? {
        counts.push((row.get(0), row.get::<_, i64>(1).to_string()));
        if counts.len() >= STAGE_CHUNK {
            hset(redis, &staged_buyers, &mut counts).await?;
        }
    }
    hset(redis, &staged_buyers, &mut counts).await?;

    let totals = tx
        .query_one(
            &format!(
                "SELECT coalesce(sum(quantity), 0)::bigint
                          + (SELECT coalesce(sum(h.quantity), 0) FROM {WAITING_HOLDS})::bigint,
                        coalesce(sum(quantity) FILTER (WHERE fate = 'released'), 0)::bigint
                 FROM reservation_fates WHERE sale_id = $1"
            ),
            &[&sale.as_str()],
        )
        .await?;
    tx.commit().await?;
    Ok(Staged {
        terms,
        reserved: totals.get(0),
        released: totals.get(1),
    })
}

/// Holds of sale `$1` that wait for their decision: staged as `reserved` records and as
/// members of the sale's `holds` set (a hold that has a fate already is that fate's).
const WAITING_HOLDS: &str = "holds h WHERE h.sale_id = $1 AND h.state = 'held'
     AND NOT EXISTS (SELECT 1 FROM reservation_fates f WHERE f.reservation_id = h.reservation_id)";

/// ZADDs `members` (score, member) into `key` (when there are any) and empties them.
async fn zadd(
    redis: &mut RedisConn,
    key: &str,
    members: &mut Vec<(i64, String)>,
) -> Result<(), RecoveryError> {
    if !members.is_empty() {
        let _: i64 = redis.zadd_multiple(key, &members[..]).await?;
        members.clear();
    }
    Ok(())
}

/// HSETs `fields` into `key` (when there are any) and empties them.
async fn hset(
    redis: &mut RedisConn,
    key: &str,
    fields: &mut Vec<(String, String)>,
) -> Result<(), RecoveryError> {
    if !fields.is_empty() {
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(&fields[..])
            .query_async(redis)
            .await?;
        fields.clear();
    }
    Ok(())
}

/// Counts a rebuild in the process's metrics.
fn record(sale: &SaleId, r: &Recovered) {
    let sale = sale.to_string();
    metrics::counter!(RECOVERIES, "sale" => sale.clone()).increment(1);
    metrics::histogram!(RECOVERY_SECONDS).record(r.took.as_secs_f64());
    metrics::counter!(RECOVERED_RESERVATIONS, "sale" => sale.clone(), "fate" => "confirmed")
        .increment(r.confirmed);
    metrics::counter!(RECOVERED_RESERVATIONS, "sale" => sale.clone(), "fate" => "released")
        .increment(r.released);
    metrics::gauge!(LOST_RESERVATIONS, "sale" => sale).set(r.lost_reservations as f64);
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn a_reservation_keeps_its_units_only_while_units_and_the_limit_allow() {
        assert_eq!(refusal(5, 0, 0, 5), None);
        assert!(refusal(4, 0, 0, 5).is_some_and(|r| r.contains("no units")));
        assert_eq!(refusal(5, 1, 2, 1), None);
        assert!(refusal(5, 2, 2, 1).is_some_and(|r| r.contains("limit")));
        // No limit (0) never refuses for the limit.
        assert_eq!(refusal(10, 9, 0, 1), None);
    }
}
