//! Reads one sale's figures from both stores: Redis in one atomic script call (plus the
//! in-flight entries, read by id range afterwards, in pages: entries never change), then
//! PostgreSQL in one read-only snapshot (orders, releases and holds of one instant, so a
//! hold decided meanwhile is counted once). Read-only: safe during a live sale.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use redis::Script;
use tokio_postgres::IsolationLevel;
use yoink_core::events::Reserved;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::stream::{self, Unacknowledged, parse_id, read_range};
use yoink_core::{Keyspace, Position, RedisConn, SaleId, epochs, holds};

use crate::error::ReconcileError;
use crate::report::{PostgresSide, RedisSide};

static SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reconcile_snapshot.lua")));

/// What Redis holds for a sale, as of one instant.
#[derive(Debug, Clone, Default)]
pub struct RedisSnapshot {
    pub side: RedisSide,
    /// `reserved` entries pending or undelivered at that instant, by stream id.
    pub in_flight: Vec<(String, Reserved)>,
    pub last_entry_id: String,
}

fn text(value: &redis::Value) -> String {
    redis::from_redis_value_ref::<String>(value).unwrap_or_default()
}

/// The Redis side of a sale.
pub async fn redis_snapshot(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> Result<RedisSnapshot, ReconcileError> {
    let reply: Vec<redis::Value> = SNAPSHOT
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.events(sale))
        .key(keys.dead_letters(sale))
        .arg(PROJECTOR_GROUP)
        .invoke_async(redis)
        .await?;
    let int = |i: usize| -> i64 {
        reply
            .get(i)
            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            .unwrap_or(0)
    };
    if reply.len() < 15 {
        return Err(ReconcileError::BadSnapshot("too few values"));
    }
    let last_delivered = text(&reply[10]);
    let last_entry_id = text(&reply[11]);
    let pending_ids: HashSet<String> = reply[15..].iter().map(text).collect();
    let lag = int(9);
    let side = RedisSide {
        present: int(0) == 1,
        initial: int(1),
        remaining: int(2),
        reserved: int(3),
        released: int(4),
        stream_length: int(5),
        dead_letters: int(6),
        pending: int(8),
        lag: (lag >= 0).then_some(lag),
        // Counted once PostgreSQL has said which in-flight entries are decided.
        in_flight_units: 0,
        position: Position::new(int(12), int(13)),
        suspended: int(14) == 1,
    };

    // The in-flight window: pending entries, and everything after the group's
    // last-delivered id, up to the last entry at the snapshot's instant.
    let window = Unacknowledged::new(&last_delivered, pending_ids);
    let start = window.start();
    let mut in_flight = Vec::new();
    if last_entry_id != "0-0" && parse_id(&start) <= parse_id(&last_entry_id) {
        let entries: Vec<_> = read_range(redis, &keys.events(sale), &start, &last_entry_id)
            .await?
            .into_iter()
            .filter(|e| window.contains(&e.id))
            .collect();
        in_flight = stream::reservations(&entries);
    }
    Ok(RedisSnapshot {
        side,
        in_flight,
        last_entry_id,
    })
}

/// The PostgreSQL side of a sale; also drops from `snapshot.in_flight` the entries
/// PostgreSQL has decided (or recorded as holds) meanwhile (committed, not yet
/// acknowledged). A hold still `held` more than `overdue_after` past its deadline counts
/// as overdue.
pub async fn postgres_side(
    pool: &Pool,
    sale: &SaleId,
    snapshot: &mut RedisSnapshot,
    overdue_after: Duration,
) -> Result<PostgresSide, ReconcileError> {
    let mut conn = pool.get().await?;
    // One snapshot for every figure: a hold confirmed or expired between two separate
    // reads would be counted in neither (held, then not yet an order or a release).
    let client = conn
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sale_row = client
        .query_opt(
            "SELECT initial_stock FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    let orders = client
        .query_one(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    let released: i64 = client
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM reservation_fates
             WHERE sale_id = $1 AND fate = 'released'",
            &[&sale.as_str()],
        )
        .await?
        .get(0);
    if !snapshot.in_flight.is_empty() {
        let decided =
            yoink_core::ledger::decided(&client, snapshot.in_flight.iter().map(|(_, r)| r)).await?;
        snapshot
            .in_flight
            .retain(|(_, r)| !decided.contains(&r.reservation_id.as_uuid()));
    }
    snapshot.side.in_flight_units = snapshot.in_flight.iter().map(|(_, r)| r.quantity).sum();
    let held_units = holds::held_units(&client, sale).await?;
    let overdue_ms = i64::try_from(overdue_after.as_millis()).unwrap_or(i64::MAX);
    let (overdue_holds, overdue_hold_units) = holds::overdue(&client, sale, overdue_ms).await?;
    let side = PostgresSide {
        present: sale_row.is_some(),
        initial_stock: sale_row.map(|r| r.get(0)).unwrap_or(0),
        orders: orders.get(0),
        confirmed_units: orders.get(1),
        released_units: released,
        floor: epochs::floor(&client, sale).await?,
        lost_reservations: epochs::lost_reservations(&client, sale).await?,
        held_units,
        overdue_holds,
        overdue_hold_units,
    };
    client.commit().await?;
    Ok(side)
}
