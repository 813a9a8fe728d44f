//! `--repair`: plans (and with `--yes` applies) the fixes for a diverged sale.
//!
//! 1. Re-project reservations that are in the stream but missing in PostgreSQL (no
//!    order and not released), through the projector's own idempotent writer.
//! 2. When Redis is still off (it lost data, or units were taken without an event),
//!    rebuild its stock, counters and buyer counts from PostgreSQL's ledger, with a
//!    compare-and-set so a buy that slips in meanwhile is never overwritten.
//!
//! Never deletes an order, never touches a sale whose figures are still moving.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::LazyLock;

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use redis::Script;
use uuid::Uuid;
use yoink_core::events::{Reserved, SaleEvent};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, sales};

use crate::error::ReconcileError;
use crate::report::SaleReport;
use crate::snapshot::{RedisSnapshot, read_range};

static RESTORE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/restore_sale.lua")));

pub const REPAIRS: &str = "yoink_reconcile_repairs_total";

/// One fix, printed as the plan and applied with `--yes`.
#[derive(Debug, Clone)]
pub enum Action {
    /// Reservations in the stream with no order and no release in PostgreSQL.
    Reproject {
        sale: SaleId,
        entries: Vec<(String, Reserved)>,
    },
    /// Redis state rebuilt from PostgreSQL's ledger.
    RebuildRedis {
        sale: SaleId,
        expected: (bool, i64, i64, i64),
        terms: SaleTerms,
        reserved: i64,
        released: i64,
        stock: i64,
        buyers: BTreeMap<String, i64>,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Reproject { sale, entries } => {
                let units: i64 = entries.iter().map(|(_, r)| r.quantity).sum();
                write!(
                    f,
                    "sale {sale}: re-project {} reservation(s) ({units} units) from the stream into PostgreSQL",
                    entries.len()
                )
            }
            Action::RebuildRedis {
                sale,
                expected,
                stock,
                reserved,
                released,
                buyers,
                ..
            } => write!(
                f,
                "sale {sale}: rebuild Redis from PostgreSQL: remaining {} -> {stock}, reserved {} -> {reserved}, released {} -> {released}, {} buyer count(s)",
                expected.3,
                expected.1,
                expected.2,
                buyers.len()
            ),
        }
    }
}

/// Reservations of the stream that PostgreSQL has neither ordered nor released, and
/// that are not in flight (the projectors will handle those).
pub async fn plan_reproject(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
    snapshot: &RedisSnapshot,
) -> Result<Option<Action>, ReconcileError> {
    if snapshot.last_entry_id == "0-0" {
        return Ok(None);
    }
    let in_flight: HashSet<&str> = snapshot
        .in_flight
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    let mut reserved = Vec::new();
    for entry in read_range(redis, &keys.events(sale), "-", &snapshot.last_entry_id).await? {
        if in_flight.contains(entry.id.as_str()) {
            continue;
        }
        let fields = entry
            .map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                )
            })
            .collect();
        if let Ok(SaleEvent::Reserved(r)) = SaleEvent::from_fields(&fields) {
            reserved.push((entry.id.clone(), r));
        }
    }
    if reserved.is_empty() {
        return Ok(None);
    }
    let ids: Vec<Uuid> = reserved
        .iter()
        .map(|(_, r)| r.reservation_id.as_uuid())
        .collect();
    let client = pool.get().await?;
    let settled: HashSet<Uuid> = client
        .query(
            "SELECT reservation_id FROM orders WHERE reservation_id = ANY($1)
             UNION
             SELECT reservation_id FROM reservation_fates
             WHERE reservation_id = ANY($1) AND fate = 'released'",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    reserved.retain(|(_, r)| !settled.contains(&r.reservation_id.as_uuid()));
    Ok((!reserved.is_empty()).then(|| Action::Reproject {
        sale: sale.clone(),
        entries: reserved,
    }))
}

/// Redis stock, counters and buyer counts as PostgreSQL's ledger says they must be.
pub async fn plan_rebuild(
    pool: &Pool,
    sale: &SaleId,
    snapshot: &RedisSnapshot,
    report: &SaleReport,
) -> Result<Option<Action>, ReconcileError> {
    let Some(terms) = sales::terms_from_db(pool, sale)
        .await
        .map_err(|e| ReconcileError::Unexpected(e.to_string()))?
    else {
        tracing::warn!(sale_id = %sale, "PostgreSQL does not know this sale; cannot rebuild Redis from it.");
        return Ok(None);
    };
    let redis = &snapshot.side;
    let pg = &report.postgres;
    let data_lost = !redis.present;
    // Releases PostgreSQL decided that Redis has not applied stay out of stock: the
    // release script will still give them back, once. After data loss the reservation
    // records are gone and the script cannot, so they count as given back now.
    let (released, pending_release) = if data_lost {
        (pg.released_units, 0)
    } else {
        (redis.released, (pg.released_units - redis.released).max(0))
    };
    let in_flight = redis.in_flight_units;
    let mut stock = terms.initial_stock - pg.confirmed_units - in_flight - pending_release;
    if stock < 0 {
        tracing::error!(sale_id = %sale, stock, "PostgreSQL holds more than the sale's stock; rebuilding with 0 left.");
        stock = 0;
    }
    let reserved = terms.initial_stock - stock + released;
    let client = pool.get().await?;
    let mut buyers: BTreeMap<String, i64> = client
        .query(
            "SELECT user_id, sum(quantity)::bigint FROM orders WHERE sale_id = $1 GROUP BY user_id",
            &[&sale.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (_, r) in &snapshot.in_flight {
        *buyers.entry(r.user_id.to_string()).or_default() += r.quantity;
    }
    Ok(Some(Action::RebuildRedis {
        sale: sale.clone(),
        expected: (
            redis.present,
            redis.reserved,
            redis.released,
            redis.remaining,
        ),
        terms,
        reserved,
        released,
        stock,
        buyers,
    }))
}

/// Applies one action; logs it and counts it.
pub async fn apply(
    action: &Action,
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
) -> Result<(), ReconcileError> {
    match action {
        Action::Reproject { sale, entries } => {
            let batch: Vec<(&str, &Reserved)> =
                entries.iter().map(|(id, r)| (id.as_str(), r)).collect();
            let ids: Vec<Uuid> = entries
                .iter()
                .map(|(_, r)| r.reservation_id.as_uuid())
                .collect();
            // Reservations with no fate at all: the projector's own writer.
            let created = yoink_projector::writer::confirm(pool, &batch)
                .await
                .map_err(|e| ReconcileError::Unexpected(e.to_string()))?;
            // Reservations confirmed whose order row went missing: the order again.
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let restored = tx
                .execute(
                    "WITH restored AS (
                         INSERT INTO orders (order_id, reservation_id, sale_id, user_id, quantity, reserved_at)
                         SELECT gen_random_uuid(), reservation_id, sale_id, user_id, quantity, reserved_at
                         FROM reservation_fates
                         WHERE reservation_id = ANY($1) AND fate = 'confirmed'
                         ON CONFLICT (reservation_id) DO NOTHING
                         RETURNING order_id, reservation_id, sale_id, user_id, quantity, reserved_at
                     )
                     INSERT INTO outbox (event_id, event_type, sale_id, payload)
                     SELECT gen_random_uuid(), 'order.confirmed', sale_id,
                            jsonb_build_object('order_id', order_id, 'reservation_id', reservation_id,
                                               'sale_id', sale_id, 'user_id', user_id,
                                               'quantity', quantity, 'reserved_at', reserved_at,
                                               'repaired', true)
                     FROM restored",
                    &[&ids],
                )
                .await?;
            tx.execute(
                "UPDATE sales SET confirmed_units =
                     (SELECT coalesce(sum(quantity), 0) FROM orders WHERE sale_id = $1)
                 WHERE sale_id = $1",
                &[&sale.as_str()],
            )
            .await?;
            tx.commit().await?;
            metrics::counter!(REPAIRS, "kind" => "reproject").increment(created + restored);
            tracing::warn!(sale_id = %sale, created, restored, "Repair: re-projected reservations.");
        }
        Action::RebuildRedis {
            sale,
            expected,
            terms,
            reserved,
            released,
            stock,
            buyers,
        } => {
            let mut call = RESTORE.prepare_invoke();
            call.key(keys.meta(sale))
                .key(keys.stock(sale))
                .key(keys.buyers(sale))
                .arg(i64::from(expected.0))
                .arg(expected.1)
                .arg(expected.2)
                .arg(expected.3)
                .arg(terms.initial_stock)
                .arg(terms.limit_per_user)
                .arg(terms.starts_at_ms)
                .arg(terms.ends_at_ms)
                .arg(*reserved)
                .arg(*released)
                .arg(*stock);
            for (user, units) in buyers {
                call.arg(user).arg(*units);
            }
            let rebuilt: redis::RedisResult<i64> = call.invoke_async(redis).await;
            match rebuilt {
                Ok(_) => {}
                Err(err) if err.code() == Some("STALE") => {
                    return Err(ReconcileError::Unexpected(format!(
                        "sale {sale}: Redis changed while repairing (buys in progress?); run the repair again"
                    )));
                }
                Err(err) => return Err(err.into()),
            }
            let _: i64 = redis.sadd(keys.sales_registry(), sale.as_str()).await?;
            yoink_projector::consumer::ensure_group(redis, &keys.events(sale)).await?;
            metrics::counter!(REPAIRS, "kind" => "rebuild_redis").increment(1);
            tracing::warn!(sale_id = %sale, stock, reserved, released, "Repair: rebuilt Redis from PostgreSQL.");
        }
    }
    Ok(())
}
