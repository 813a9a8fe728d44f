//! Holds: reservations of a sale with `hold_seconds` that wait for payment. The checkout
//! side confirms one (it becomes an order), cancels it, or extends it; one nobody
//! confirms expires, and its units go back on sale.
//!
//! PostgreSQL decides which of confirm, cancel and expiry wins. Every decision locks the
//! hold's row in `holds` and moves it out of `held` once, writing the reservation's
//! fate in the same transaction (`ledger`: an order, or `released` with reason
//! `cancelled` or `expired`). Redis follows afterwards (`apply`): `hold.lua` for a
//! confirm or an extension, `release.lua` for a cancel or an expiry; both are
//! idempotent, so whoever applies a decision twice (the API, then the expiry sweep)
//! changes nothing the second time, and the units come back exactly once.
//!
//! Never decide a hold without its row locked, and never touch Redis before PostgreSQL
//! committed the decision: a Redis that applied a decision PostgreSQL did not make is a
//! unit given back twice, or an order nobody paid for.

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use redis::AsyncCommands;
use serde::Serialize;
use uuid::Uuid;

use crate::events::{Reserved, SaleEvent};
use crate::ids::{ReservationId, SaleId, UserId};
use crate::keys::Keyspace;
use crate::ledger::{self, LedgerError};
use crate::position::Position;
use crate::redis_store::RedisConn;
use crate::scripts::{self, HoldChange, ReleaseOutcome, ReservationRecord};
use crate::stream;

/// Holds decided, by outcome (`confirmed`, `cancelled`, `expired`) and sale.
pub const DECIDED: &str = "yoink_holds_decided_total";
/// Seconds from a hold's reservation to its confirm.
pub const CONFIRM_SECONDS: &str = "yoink_hold_confirm_seconds";
/// Seconds from a hold's `expires_at` to its units being back on sale.
pub const EXPIRY_LAG_SECONDS: &str = "yoink_hold_expiry_lag_seconds";
/// Holds waiting for a decision, per sale (the sale's `holds` set in Redis).
pub const ACTIVE: &str = "yoink_holds_active";

/// Where a hold stands in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Waiting for a confirm, a cancel or its deadline.
    Held,
    /// Became an order.
    Confirmed,
    /// The buyer walked away; the units went back on sale.
    Cancelled,
    /// Nobody confirmed it in time; the units went back on sale.
    Expired,
}

impl HoldState {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "held" => Self::Held,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// The name in `holds.state`, and the release reason of a cancel or an expiry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// A hold as PostgreSQL records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub reserved: Reserved,
    pub stream_id: String,
    pub expires_at_ms: i64,
    /// The latest `expires_at_ms` an extension may reach.
    pub max_expires_at_ms: i64,
    pub state: HoldState,
    /// The order it became (confirmed holds).
    pub order_id: Option<Uuid>,
}

/// What the checkout side asks of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Cancel,
    /// Move the deadline `seconds` later (at most to `max_expires_at`).
    Extend {
        seconds: i64,
    },
}

/// What an `act` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This call decided the hold (or moved its deadline). A confirm or an extension
    /// that came after the deadline decides the expiry.
    Decided,
    /// Nothing changed: the hold was decided before (a repeat, or another action won).
    Unchanged,
    /// Extend only: the hold already expires at its `max_expires_at`.
    AtLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A hold row or its stream entry cannot be read back (never written by Yoink).
    #[error("hold {0} is unreadable: {1}")]
    Unreadable(ReservationId, String),
}

impl From<tokio_postgres::Error> for HoldError {
    fn from(err: tokio_postgres::Error) -> Self {
        HoldError::Ledger(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for HoldError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        HoldError::Ledger(err.into())
    }
}

const HOLD_COLUMNS: &str = "h.reservation_id, h.sale_id, h.user_id, h.quantity, h.stream_id,
     (extract(epoch FROM h.reserved_at) * 1000)::bigint,
     (extract(epoch FROM h.expires_at) * 1000)::bigint,
     (extract(epoch FROM h.max_expires_at) * 1000)::bigint,
     h.epoch, h.seq, h.idempotency_key, h.state,
     (SELECT o.order_id FROM orders o WHERE o.reservation_id = h.reservation_id)";

fn hold_from_row(row: &tokio_postgres::Row) -> Result<Hold, HoldError> {
    let id = ReservationId::from_uuid(row.get(0));
    let unreadable = |what: &str| HoldError::Unreadable(id, what.to_owned());
    let sale_id = SaleId::parse(row.get(1)).map_err(|_| unreadable("sale id"))?;
    let user_id = UserId::parse(row.get(2)).map_err(|_| unreadable("user id"))?;
    let state: &str = row.get(11);
    let (epoch, seq): (Option<i64>, Option<i64>) = (row.get(8), row.get(9));
    let expires_at_ms: i64 = row.get(6);
    Ok(Hold {
        reserved: Reserved {
            reservation_id: id,
            sale_id,
            user_id,
            quantity: row.get(3),
            reserved_at_ms: row.get(5),
            position: epoch.zip(seq).map(|(e, s)| Position::new(e, s)),
            idempotency_key: row.get(10),
            expires_at_ms: Some(expires_at_ms),
        },
        stream_id: row.get(4),
        expires_at_ms,
        max_expires_at_ms: row.get(7),
        state: HoldState::parse(state).ok_or_else(|| unreadable("state"))?,
        order_id: row.get(12),
    })
}

/// Records `batch` (reservations of sales with holds, each with its `expires_at_ms`)
/// as holds, inside the caller's transaction, and raises each sale's high-water mark
/// to the newest position recorded. A hold recorded or decided before is left alone
/// (redelivery). Returns how many were new.
pub async fn record_in(
    tx: &Transaction<'_>,
    batch: &[(&str, &Reserved)],
) -> Result<u64, LedgerError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let c = ledger::Columns::of(batch);
    let expires_at_ms: Vec<i64> = batch
        .iter()
        .map(|(_, r)| r.expires_at_ms.unwrap_or(r.reserved_at_ms))
        .collect();
    let statement = tx
        .prepare_cached(
            "WITH input AS (
                 SELECT t.*, to_timestamp(t.reserved_at_ms / 1000.0) AS reserved_at,
                        to_timestamp(t.expires_at_ms / 1000.0) AS expires_at
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[])
                     AS t(reservation_id, sale_id, user_id, quantity, stream_id, reserved_at_ms,
                          expires_at_ms, epoch, seq, idempotency_key)
             ), recorded AS (
                 INSERT INTO holds (reservation_id, sale_id, user_id, quantity, stream_id,
                                    reserved_at, expires_at, max_expires_at, epoch, seq,
                                    idempotency_key)
                 SELECT i.reservation_id, i.sale_id, i.user_id, i.quantity, i.stream_id,
                        i.reserved_at, i.expires_at,
                        greatest(i.expires_at, i.reserved_at + make_interval(secs =>
                            coalesce((SELECT s.max_hold_seconds FROM sales s
                                      WHERE s.sale_id = i.sale_id), 0))),
                        i.epoch, i.seq, i.idempotency_key
                 FROM input i
                 WHERE NOT EXISTS (SELECT 1 FROM reservation_fates f
                                   WHERE f.reservation_id = i.reservation_id)
                 ON CONFLICT (reservation_id) DO NOTHING
                 RETURNING reservation_id
             ), newest AS (
                 SELECT DISTINCT ON (sale_id) sale_id, epoch, seq FROM input
                 WHERE epoch IS NOT NULL ORDER BY sale_id, epoch DESC, seq DESC
             ), raised AS (
                 UPDATE sales s SET (hwm_epoch, hwm_seq) = (
                            SELECT p.epoch, p.seq
                            FROM (VALUES (s.hwm_epoch, s.hwm_seq), (n.epoch, n.seq)) p(epoch, seq)
                            ORDER BY 1 DESC, 2 DESC LIMIT 1)
                 FROM newest n
                 WHERE s.sale_id = n.sale_id
                   AND (n.epoch, n.seq) > (s.hwm_epoch, s.hwm_seq)
                 RETURNING 1
             )
             SELECT count(*) FROM recorded",
        )
        .await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &c.ids,
                &c.sales,
                &c.users,
                &c.quantities,
                &c.stream_ids,
                &c.reserved_at_ms,
                &expires_at_ms,
                &c.epochs,
                &c.seqs,
                &c.idempotency_keys,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Releases `ids` that are still `held` (only those past their deadline with
/// `due_only`) inside the caller's transaction: each leaves `held` for `outcome`
/// (`Cancelled` or `Expired`), and gets its `released` fate (reason: the outcome), its
/// count and its outbox row, in one statement. Returns the ids this call decided.
async fn release_in(
    tx: &Transaction<'_>,
    ids: &[Uuid],
    outcome: HoldState,
    due_only: bool,
) -> Result<Vec<Uuid>, LedgerError> {
    let statement = tx
        .prepare_cached(
            "WITH due AS (
                 UPDATE holds SET state = $2, decided_at = now()
                 WHERE reservation_id IN (
                     -- A hold another transaction is deciding right now (a confirm, or
                     -- another projector's sweep) is skipped, not waited for: whoever
                     -- holds the lock decides it, and the next sweep sees the outcome.
                     SELECT reservation_id FROM holds
                     WHERE reservation_id = ANY($1) AND state = 'held'
                       AND (NOT $3 OR expires_at <= now())
                     FOR UPDATE SKIP LOCKED)
                 RETURNING *
             ), decided AS (
                 INSERT INTO reservation_fates
                     (reservation_id, sale_id, user_id, quantity, fate, reason, stream_id,
                      reserved_at, epoch, seq, idempotency_key)
                 SELECT reservation_id, sale_id, user_id, quantity, 'released', $2, stream_id,
                        reserved_at, epoch, seq, idempotency_key
                 FROM due
                 -- Decided already (by another writer): nothing to do.
                 ON CONFLICT (reservation_id) DO NOTHING
                 RETURNING reservation_id, sale_id, user_id, quantity
             ), counted AS (
                 UPDATE sales s SET released_units = s.released_units + c.units
                 FROM (SELECT sale_id, sum(quantity) AS units FROM decided GROUP BY sale_id) c
                 WHERE s.sale_id = c.sale_id
                 RETURNING 1
             ), published AS (
                 INSERT INTO outbox (event_id, event_type, sale_id, payload)
                 SELECT gen_random_uuid(), 'reservation.released', sale_id,
                        jsonb_build_object('reservation_id', reservation_id, 'sale_id', sale_id,
                                           'user_id', user_id, 'quantity', quantity,
                                           'reason', $2::text)
                 FROM decided
                 RETURNING 1
             )
             SELECT reservation_id FROM due",
        )
        .await?;
    Ok(tx
        .query(&statement, &[&ids, &outcome.as_str(), &due_only])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Decides `action` for the hold `id`, under its row lock: one winner among confirm,
/// cancel and expiry, whatever races. `None` when PostgreSQL has no such hold yet
/// (`record_from_redis` first). Redis is not touched: `apply` the result afterwards.
pub async fn act(
    pool: &Pool,
    id: ReservationId,
    action: Action,
) -> Result<Option<(Hold, Change)>, HoldError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let select = format!(
        "SELECT {HOLD_COLUMNS}, now() >= h.expires_at
         FROM holds h WHERE h.reservation_id = $1 FOR UPDATE"
    );
    let Some(row) = tx.query_opt(&select, &[&id.as_uuid()]).await? else {
        return Ok(None);
    };
    let hold = hold_from_row(&row)?;
    let due: bool = row.get(13);
    if hold.state != HoldState::Held {
        return Ok(Some((hold, Change::Unchanged)));
    }
    let uuid = id.as_uuid();
    let change = match action {
        Action::Confirm | Action::Extend { .. } if due => {
            release_in(&tx, &[uuid], HoldState::Expired, true).await?;
            Change::Decided
        }
        Action::Confirm => {
            ledger::confirm_in(&tx, &[(hold.stream_id.as_str(), &hold.reserved)]).await?;
            tx.execute(
                "UPDATE holds SET state = 'confirmed', decided_at = now() WHERE reservation_id = $1",
                &[&uuid],
            )
            .await?;
            Change::Decided
        }
        Action::Cancel => {
            release_in(&tx, &[uuid], HoldState::Cancelled, false).await?;
            Change::Decided
        }
        Action::Extend { seconds } => {
            let moved = tx
                .execute(
                    "UPDATE holds SET extensions = extensions + 1,
                         expires_at = least(expires_at + make_interval(secs => $2), max_expires_at)
                     WHERE reservation_id = $1 AND expires_at < max_expires_at",
                    &[&uuid, &(seconds as f64)],
                )
                .await?;
            if moved == 1 {
                Change::Decided
            } else {
                Change::AtLimit
            }
        }
    };
    let row = tx
        .query_one(
            &format!("SELECT {HOLD_COLUMNS} FROM holds h WHERE h.reservation_id = $1"),
            &[&uuid],
        )
        .await?;
    let hold = hold_from_row(&row)?;
    tx.commit().await?;
    if change == Change::Decided {
        count_decision(&hold);
    }
    Ok(Some((hold, change)))
}

/// The expiry sweep's decision: of `ids` (holds Redis found past their deadline), those
/// PostgreSQL also finds due and still `held` are expired now, in one transaction.
/// Returns every one of `ids` PostgreSQL records, as it stands after the sweep (an
/// extended one is still `held`, with its new deadline; one decided otherwise keeps
/// that decision), with true for those this call expired.
pub async fn expire_due(
    pool: &Pool,
    ids: &[ReservationId],
) -> Result<Vec<(Hold, bool)>, HoldError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let uuids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let expired = release_in(&tx, &uuids, HoldState::Expired, true).await?;
    let rows = tx
        .query(
            &format!("SELECT {HOLD_COLUMNS} FROM holds h WHERE h.reservation_id = ANY($1)"),
            &[&uuids],
        )
        .await?;
    tx.commit().await?;
    let mut holds = Vec::with_capacity(rows.len());
    for row in &rows {
        let hold = hold_from_row(row)?;
        let now = expired.contains(&hold.reserved.reservation_id.as_uuid());
        if now {
            count_decision(&hold);
        }
        holds.push((hold, now));
    }
    Ok(holds)
}

/// The hold `id` as PostgreSQL records it, if it does.
pub async fn find(
    client: &impl GenericClient,
    id: ReservationId,
) -> Result<Option<Hold>, HoldError> {
    let row = client
        .query_opt(
            &format!("SELECT {HOLD_COLUMNS} FROM holds h WHERE h.reservation_id = $1"),
            &[&id.as_uuid()],
        )
        .await?;
    row.as_ref().map(hold_from_row).transpose()
}

/// What `record_from_redis` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromRedis {
    /// The hold is recorded in PostgreSQL now (or was already).
    Recorded,
    /// The reservation exists but its sale has no holds: it becomes an order by itself.
    NotAHold,
    /// Redis has no such reservation in this sale.
    Unknown,
}

/// Records the hold `id` of `sale` in PostgreSQL from Redis (its record, then its
/// `reserved` stream entry), for a decision that arrives before the projector recorded
/// it.
pub async fn record_from_redis(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
    id: ReservationId,
) -> Result<FromRedis, HoldError> {
    let record: Option<String> = redis.hget(keys.reservations(sale), id.to_string()).await?;
    let Some(record) = record else {
        return Ok(FromRedis::Unknown);
    };
    let record = ReservationRecord::parse(&record)
        .ok_or_else(|| HoldError::Unreadable(id, "Redis record".into()))?;
    let entries = stream::read_range(
        redis,
        &keys.events(sale),
        &record.stream_id,
        &record.stream_id,
    )
    .await?;
    let Some(entry) = entries.first() else {
        // The projector trims only entries PostgreSQL has: it recorded this one since
        // the caller looked, and the trimmer removed it.
        return in_postgres(pool, id)
            .await?
            .ok_or_else(|| HoldError::Unreadable(id, "its stream entry is gone".into()));
    };
    match SaleEvent::from_fields(&stream::fields(entry)) {
        Ok(SaleEvent::Reserved(r)) if r.reservation_id == id => {
            if r.expires_at_ms.is_none() {
                return Ok(FromRedis::NotAHold);
            }
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            record_in(&tx, &[(entry.id.as_str(), &r)]).await?;
            tx.commit().await?;
            Ok(FromRedis::Recorded)
        }
        other => Err(HoldError::Unreadable(
            id,
            format!("its stream entry is not its reservation: {other:?}"),
        )),
    }
}

/// What PostgreSQL holds of the reservation `id`: a hold row (`Recorded`), a fate
/// without one (`NotAHold`: a reservation of a sale without holds, already decided), or
/// nothing (`None`). One statement, so a hold whose fate it sees is seen as a hold: a
/// hold's row commits before its fate and is never deleted.
pub async fn in_postgres(pool: &Pool, id: ReservationId) -> Result<Option<FromRedis>, HoldError> {
    let db = pool.get().await?;
    let row = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM holds WHERE reservation_id = $1),
                    EXISTS (SELECT 1 FROM reservation_fates WHERE reservation_id = $1)",
            &[&id.as_uuid()],
        )
        .await?;
    Ok(match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
        (true, _) => Some(FromRedis::Recorded),
        (false, true) => Some(FromRedis::NotAHold),
        (false, false) => None,
    })
}

/// What `apply` did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The units went back on sale now (a cancel or an expiry).
    UnitsBack(i64),
    /// The confirm or the new deadline was applied now.
    Now,
    /// Nothing to do: applied before.
    Already,
}

/// Applies in Redis what PostgreSQL decided for `hold` (idempotent): a confirm or an
/// extension through `hold.lua`, a cancel or an expiry through `release.lua`.
pub async fn apply(
    redis: &mut RedisConn,
    keys: &Keyspace,
    hold: &Hold,
) -> Result<Applied, HoldError> {
    let r = &hold.reserved;
    let change = match hold.state {
        HoldState::Confirmed => {
            let Some(order_id) = hold.order_id else {
                return Err(HoldError::Unreadable(
                    r.reservation_id,
                    "confirmed without an order".into(),
                ));
            };
            HoldChange::Confirmed { order_id }
        }
        HoldState::Held => HoldChange::Extended {
            expires_at_ms: hold.expires_at_ms,
        },
        HoldState::Cancelled | HoldState::Expired => {
            let outcome = scripts::release(
                redis,
                keys,
                &r.sale_id,
                r.reservation_id,
                hold.state.as_str(),
            )
            .await?;
            return Ok(match outcome {
                ReleaseOutcome::Released(units) => Applied::UnitsBack(units),
                _ => Applied::Already,
            });
        }
    };
    let now = scripts::apply_hold(redis, keys, &r.sale_id, r.reservation_id, change).await?;
    Ok(if now { Applied::Now } else { Applied::Already })
}

fn count_decision(hold: &Hold) {
    let sale = hold.reserved.sale_id.to_string();
    metrics::counter!(DECIDED, "sale" => sale, "outcome" => hold.state.as_str()).increment(1);
    if hold.state == HoldState::Confirmed {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let seconds = (now_ms - hold.reserved.reserved_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(CONFIRM_SECONDS).record(seconds);
    }
}

/// Units of each sale's holds still `held` in PostgreSQL.
pub async fn held_units(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM holds
             WHERE sale_id = $1 AND state = 'held'",
            &[&sale.as_str()],
        )
        .await?
        .get(0))
}

/// Holds of `sale` still `held` whose deadline passed more than `grace_ms` ago: the
/// expiry sweep should have released them (no projector runs, or it cannot reach a
/// store). Returns (count, units).
pub async fn overdue(
    client: &impl GenericClient,
    sale: &SaleId,
    grace_ms: i64,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM holds
             WHERE sale_id = $1 AND state = 'held'
               AND expires_at < now() - make_interval(secs => $2::float8 / 1000)",
            &[&sale.as_str(), &(grace_ms as f64)],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Holds still `held` per user of `sale` (units), for rebuilds that recount the limit.
pub async fn held_by_user(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<HashMap<String, i64>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT user_id, sum(quantity)::bigint FROM holds
             WHERE sale_id = $1 AND state = 'held' GROUP BY user_id",
            &[&sale.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
