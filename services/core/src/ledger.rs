//! PostgreSQL's ledger of reservations, written in one place for every process that
//! decides a fate (projectors, the rebuild, the reconciler's repair): confirm a batch of
//! reservations as orders, or record a reservation's fate as released. `confirm` and
//! `release` are one transaction each; the `_in` forms run inside a caller's
//! transaction (a rebuild decides many at once).
//!
//! PostgreSQL decides: a fate row per reservation (primary key); a 'confirmed' fate is
//! the order (it carries the order id, and `orders` is a view of them); counters on
//! `sales` under the no-oversell CHECK; and an outbox row per decision, all committed
//! together or not at all. Each
//! fate keeps the reservation's position and Idempotency-Key, and the sale's high-water
//! mark (`sales.hwm_*`, the newest position decided) is raised in the same statement
//! that counts the units.

use std::collections::HashSet;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use uuid::Uuid;

use crate::db;
use crate::events::Reserved;

/// Why the ledger was not written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// PostgreSQL refused these rows for good (an integrity or data error, SQLSTATE
    /// class 23 or 22: an unknown sale, the no-oversell CHECK): retrying them cannot
    /// succeed.
    #[error("PostgreSQL refused: {}", describe(.0))]
    Refused(#[source] tokio_postgres::Error),
    /// PostgreSQL failed in a way that may pass (down, a timeout, a serialization
    /// failure, or anything not known to be about the rows).
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl LedgerError {
    /// True when PostgreSQL refused the rows themselves (retrying cannot help).
    pub fn is_refusal(&self) -> bool {
        matches!(self, LedgerError::Refused(_))
    }
}

/// `code: message` of a server error (tokio-postgres prints only "db error").
fn describe(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| format!("{}: {}", e.code().code(), e.message()))
        .unwrap_or_else(|| err.to_string())
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(err: tokio_postgres::Error) -> Self {
        let about_the_rows = err
            .code()
            .is_some_and(|c| matches!(&c.code()[..2], "22" | "23"));
        if about_the_rows && !db::is_transient(&err) {
            LedgerError::Refused(err)
        } else {
            LedgerError::Postgres(err)
        }
    }
}

/// One transaction: insert confirmed fates, orders and outbox rows for the
/// reservations not decided yet. Returns how many were new (the rest were already
/// decided: a redelivery, or released earlier).
pub async fn confirm(pool: &Pool, batch: &[(&str, &Reserved)]) -> Result<u64, LedgerError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let new_orders = confirm_in(&tx, batch).await?;
    tx.commit().await?;
    Ok(new_orders)
}

/// A batch of reservations as one array per column, for `UNNEST` (one statement per
/// batch, whatever its size).
pub(crate) struct Columns<'a> {
    pub ids: Vec<Uuid>,
    pub sales: Vec<&'a str>,
    pub users: Vec<&'a str>,
    pub quantities: Vec<i64>,
    pub stream_ids: Vec<&'a str>,
    pub reserved_at_ms: Vec<i64>,
    pub epochs: Vec<Option<i64>>,
    pub seqs: Vec<Option<i64>>,
    pub idempotency_keys: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    pub fn of(batch: &[(&'a str, &'a Reserved)]) -> Self {
        Self {
            ids: batch
                .iter()
                .map(|(_, r)| r.reservation_id.as_uuid())
                .collect(),
            sales: batch.iter().map(|(_, r)| r.sale_id.as_str()).collect(),
            users: batch.iter().map(|(_, r)| r.user_id.as_str()).collect(),
            quantities: batch.iter().map(|(_, r)| r.quantity).collect(),
            stream_ids: batch.iter().map(|(id, _)| *id).collect(),
            reserved_at_ms: batch.iter().map(|(_, r)| r.reserved_at_ms).collect(),
            epochs: batch
                .iter()
                .map(|(_, r)| r.position.map(|p| p.epoch))
                .collect(),
            seqs: batch
                .iter()
                .map(|(_, r)| r.position.map(|p| p.seq))
                .collect(),
            idempotency_keys: batch
                .iter()
                .map(|(_, r)| r.idempotency_key.as_deref())
                .collect(),
        }
    }
}

/// `confirm` inside the caller's transaction.
///
/// One statement: a confirmed fate per new reservation (it is the order: `orders` is
/// a view of confirmed fates), the sale's counters, and an outbox row per order that
/// names its reservation (the relay builds the event from the fate).
pub async fn confirm_in(
    tx: &Transaction<'_>,
    batch: &[(&str, &Reserved)],
) -> Result<u64, LedgerError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let c = Columns::of(batch);
    // Time-ordered ids keep both unique indexes appending at their right edge.
    let order_ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let event_ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let statement = tx
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[],
                                      $5::text[], $6::bigint[], $7::uuid[], $8::bigint[],
                                      $9::bigint[], $10::text[], $11::uuid[])
                     AS t(reservation_id, sale_id, user_id, quantity, stream_id, reserved_at_ms,
                          order_id, epoch, seq, idempotency_key, event_id)
             ), ordered AS (
                 INSERT INTO reservation_fates
                     (reservation_id, sale_id, user_id, quantity, fate, stream_id, reserved_at,
                      epoch, seq, idempotency_key, order_id)
                 SELECT reservation_id, sale_id, user_id, quantity, 'confirmed', stream_id,
                        to_timestamp(reserved_at_ms / 1000.0), epoch, seq, idempotency_key,
                        order_id
                 FROM input
                 -- Decided already (a redelivery, or released earlier): nothing to do.
                 ON CONFLICT DO NOTHING
                 RETURNING reservation_id, sale_id, quantity
             ), newest AS (
                 SELECT DISTINCT ON (sale_id) sale_id, epoch, seq FROM input
                 WHERE epoch IS NOT NULL ORDER BY sale_id, epoch DESC, seq DESC
             ), counted AS (
                 UPDATE sales s SET confirmed_units = s.confirmed_units + c.units,
                        (hwm_epoch, hwm_seq) = (
                            SELECT p.epoch, p.seq
                            FROM (VALUES (s.hwm_epoch, s.hwm_seq), (n.epoch, n.seq)) p(epoch, seq)
                            WHERE p.epoch IS NOT NULL ORDER BY 1 DESC, 2 DESC LIMIT 1)
                 FROM (SELECT sale_id, sum(quantity) AS units FROM ordered GROUP BY sale_id) c
                      LEFT JOIN newest n USING (sale_id)
                 WHERE s.sale_id = c.sale_id
                 RETURNING s.sale_id
             ), published AS (
                 INSERT INTO outbox (event_id, event_type, sale_id, reservation_id)
                 SELECT i.event_id, 'order.confirmed', o.sale_id, o.reservation_id
                 FROM ordered o JOIN input i USING (reservation_id)
                 RETURNING 1
             ), unknown AS (
                 -- An order for a sale PostgreSQL does not know is refused (SQLSTATE
                 -- 23503, as a foreign key would), the whole batch with it.
                 SELECT refuse_unknown_sale(sale_id)
                 FROM (SELECT DISTINCT sale_id FROM input) i
                 WHERE NOT EXISTS (SELECT 1 FROM sales s WHERE s.sale_id = i.sale_id)
             )
             -- Data-modifying CTEs run to completion whether read or not; `unknown`
             -- runs because it is read.
             SELECT count(*) + (SELECT count(*) FROM unknown) FROM ordered",
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
                &order_ids,
                &c.epochs,
                &c.seqs,
                &c.idempotency_keys,
                &event_ids,
            ],
        )
        .await?;
    let new_orders: i64 = row.get(0);
    Ok(new_orders as u64)
}

/// Projects a batch of `reserved` entries in one transaction: reservations of sales
/// without holds become orders (`confirm_in`), holds are recorded (`holds::record_in`)
/// and wait for their decision. Returns (new orders, new holds).
pub async fn project(pool: &Pool, batch: &[(&str, &Reserved)]) -> Result<(u64, u64), LedgerError> {
    if batch.is_empty() {
        return Ok((0, 0));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let projected = project_in(&tx, batch).await?;
    tx.commit().await?;
    Ok(projected)
}

/// `project` inside the caller's transaction.
pub async fn project_in(
    tx: &Transaction<'_>,
    batch: &[(&str, &Reserved)],
) -> Result<(u64, u64), LedgerError> {
    let (holds, orders): (Vec<_>, Vec<_>) =
        batch.iter().partition(|(_, r)| r.expires_at_ms.is_some());
    let new_orders = confirm_in(tx, &orders).await?;
    let new_holds = crate::holds::record_in(tx, &holds).await?;
    Ok((new_orders, new_holds))
}

/// Which of `reservations` PostgreSQL knows: decided (confirmed or released), or
/// recorded as a hold that waits for its decision.
pub async fn decided<'a>(
    client: &impl GenericClient,
    reservations: impl Iterator<Item = &'a Reserved>,
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = reservations.map(|r| r.reservation_id.as_uuid()).collect();
    Ok(client
        .query(
            "SELECT reservation_id FROM reservation_fates WHERE reservation_id = ANY($1)
             UNION SELECT reservation_id FROM holds WHERE reservation_id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Which of `reservations` PostgreSQL decided `released`, with the reason recorded.
pub async fn released<'a>(
    client: &impl GenericClient,
    reservations: impl Iterator<Item = &'a Reserved>,
) -> Result<std::collections::HashMap<Uuid, String>, LedgerError> {
    let ids: Vec<Uuid> = reservations.map(|r| r.reservation_id.as_uuid()).collect();
    Ok(client
        .query(
            "SELECT reservation_id, coalesce(reason, '') FROM reservation_fates
             WHERE reservation_id = ANY($1) AND fate = 'released'",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A reservation's fate as decided by PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Confirmed,
    Released,
}

/// Records `released` for a reservation unless it is already decided; returns the
/// fate that stands. `Released` means its units may go back on sale (exactly once:
/// the release script is idempotent per reservation); `Confirmed` means an order
/// exists and nothing may be released.
pub async fn release(
    pool: &Pool,
    stream_id: &str,
    r: &Reserved,
    reason: &str,
) -> Result<Fate, LedgerError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    release_in(&tx, stream_id, r, reason).await?;
    let fate: String = tx
        .query_one(
            "SELECT fate FROM reservation_fates WHERE reservation_id = $1",
            &[&r.reservation_id.as_uuid()],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(if fate == "released" {
        Fate::Released
    } else {
        Fate::Confirmed
    })
}

/// Records `released` (with its outbox row and counter) inside the caller's
/// transaction, unless the reservation is decided already; true when it was not.
pub async fn release_in(
    tx: &Transaction<'_>,
    stream_id: &str,
    r: &Reserved,
    reason: &str,
) -> Result<bool, LedgerError> {
    let inserted = tx
        .query_opt(
            "INSERT INTO reservation_fates
                 (reservation_id, sale_id, user_id, quantity, fate, reason, stream_id, reserved_at,
                  epoch, seq, idempotency_key)
             VALUES ($1, $2, $3, $4, 'released', $5, $6, to_timestamp($7::bigint / 1000.0),
                     $8, $9, $10)
             -- Decided already (confirmed, or released by another writer).
             ON CONFLICT (reservation_id) DO NOTHING
             RETURNING reservation_id",
            &[
                &r.reservation_id.as_uuid(),
                &r.sale_id.as_str(),
                &r.user_id.as_str(),
                &r.quantity,
                &reason,
                &stream_id,
                &r.reserved_at_ms,
                &r.position.map(|p| p.epoch),
                &r.position.map(|p| p.seq),
                &r.idempotency_key,
            ],
        )
        .await?
        .is_some();
    if inserted {
        tx.execute(
            "UPDATE sales SET released_units = released_units + $2,
                 (hwm_epoch, hwm_seq) = (
                     SELECT p.epoch, p.seq
                     FROM (VALUES (hwm_epoch, hwm_seq), ($3::bigint, $4::bigint)) p(epoch, seq)
                     WHERE p.epoch IS NOT NULL ORDER BY 1 DESC, 2 DESC LIMIT 1)
             WHERE sale_id = $1",
            &[
                &r.sale_id.as_str(),
                &r.quantity,
                &r.position.map(|p| p.epoch),
                &r.position.map(|p| p.seq),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO outbox (event_id, event_type, sale_id, payload)
             VALUES (gen_random_uuid(), 'reservation.released', $1,
                     jsonb_build_object('reservation_id', $2::uuid, 'sale_id', $1::text,
                                        'user_id', $3::text, 'quantity', $4::bigint, 'reason', $5::text))",
            &[
                &r.sale_id.as_str(),
                &r.reservation_id.as_uuid(),
                &r.user_id.as_str(),
                &r.quantity,
                &reason,
            ],
        )
        .await?;
    }
    Ok(inserted)
}
