//! The check after the drain: every request of the history against PostgreSQL's ledger
//! (and Redis, for what PostgreSQL cannot say), per reservation id and per
//! Idempotency-Key. Each failed property becomes a `problem` that names it.
//!
//! Read-only: it must never change either store. It must also never pass on figures it
//! could not read: a store error is an error, not a clean report.

use std::collections::{BTreeMap, HashMap};

use redis::AsyncCommands;
use serde::Serialize;
use uuid::Uuid;
use yoink_core::{Keyspace, RedisConn, SaleId};

use crate::NemesisError;
use crate::history::{Outcome, Request};

/// What PostgreSQL decided for one reservation.
struct Fate {
    user_id: String,
    quantity: i64,
    confirmed: bool,
    idempotency_key: Option<String>,
}

/// Redis's and PostgreSQL's stock figures after the drain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StockCheck {
    pub initial: i64,
    /// Units confirmed in PostgreSQL's ledger (`reservation_fates`).
    pub confirmed_units: i64,
    /// Units in order rows.
    pub order_units: i64,
    /// Units released in PostgreSQL's ledger.
    pub released_units: i64,
    /// `{sale}:stock` in Redis.
    pub redis_stock: i64,
    /// What PostgreSQL's ledger leaves on sale: initial − confirmed.
    pub expected_stock: i64,
    /// `initial − reserved + released` from Redis's own meta.
    pub redis_meta_stock: i64,
}

/// Everything the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub requests: u64,
    /// 202s.
    pub accepted: u64,
    /// Definite refusals, by error code.
    pub failed: BTreeMap<String, u64>,
    pub indefinite: u64,
    /// Indefinite outcomes whose reservation PostgreSQL has.
    pub indefinite_took_effect: u64,
    /// Indefinite outcomes that neither store has: nothing was taken.
    pub indefinite_not_taken: u64,
    /// Indefinite outcomes Redis has and PostgreSQL does not, after the drain.
    pub indefinite_unresolved: u64,
    /// Reservations of the sale PostgreSQL confirmed / released (all, also those of
    /// indefinite requests that took effect).
    pub confirmed: u64,
    pub released: u64,
    /// 202s with a fate, by fate.
    pub accepted_confirmed: u64,
    pub accepted_released: u64,
    /// lost_no_fate + lost_order_missing + lost_units.
    pub lost: u64,
    /// 202s with no fate after the drain.
    pub lost_no_fate: u64,
    /// Confirmed reservations whose order row is gone.
    pub lost_order_missing: u64,
    /// Units missing from Redis's stock with no event: expected − actual, when > 0.
    pub lost_units: u64,
    /// Extra orders for one reservation, extra reservations for one Idempotency-Key,
    /// and answers naming a reservation of another key.
    pub duplicated: u64,
    /// Units confirmed beyond the stock.
    pub oversold: u64,
    /// Buyers holding more confirmed units than the limit.
    pub limit_exceeded_buyers: u64,
    /// Definite refusals whose Idempotency-Key PostgreSQL has a reservation for.
    pub refused_but_taken: u64,
    /// Reservations Yoink itself counts as lost with Redis (`data_lost`).
    pub lost_reported_by_yoink: i64,
    /// Times Yoink rebuilt the sale from PostgreSQL (it found Redis behind): its
    /// epoch − 1.
    pub rebuilds: i64,
    pub stock: StockCheck,
    /// Each failed property, named, with an example.
    pub problems: Vec<String>,
    /// Oddities that do not fail the run.
    pub warnings: Vec<String>,
}

/// Checks `requests` against the stores.
pub async fn check(
    pool: &deadpool_postgres::Pool,
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    limit_per_user: i64,
    requests: &[Request],
) -> Result<Findings, NemesisError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT reservation_id, user_id, quantity, fate = 'confirmed', idempotency_key
             FROM reservation_fates WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    let fates: HashMap<Uuid, Fate> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Fate {
                    user_id: r.get(1),
                    quantity: r.get(2),
                    confirmed: r.get(3),
                    idempotency_key: r.get(4),
                },
            )
        })
        .collect();
    let rows = client
        .query(
            "SELECT reservation_id, count(*)::bigint, sum(quantity)::bigint FROM orders
             WHERE sale_id = $1 GROUP BY reservation_id",
            &[&sale.as_str()],
        )
        .await?;
    let orders: HashMap<Uuid, (i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let initial: i64 = client
        .query_one(
            "SELECT initial_stock FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .get(0);
    let lost_reported_by_yoink = yoink_core::epochs::lost_reservations(&client, sale).await?;
    let epoch: i64 = client
        .query_one(
            "SELECT coalesce(max(epoch), 1)::bigint FROM sale_epochs WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .get(0);

    let mut f = Findings {
        requests: requests.len() as u64,
        lost_reported_by_yoink,
        rebuilds: epoch - 1,
        ..Findings::default()
    };
    let mut by_key: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (id, fate) in &fates {
        if let Some(key) = fate.idempotency_key.as_deref() {
            by_key.entry(key).or_default().push(*id);
        }
    }
    let mut examples = Examples::default();

    // Per request.
    let mut unknown_keys: Vec<&str> = Vec::new();
    for request in requests {
        let found = by_key.get(request.key.as_str());
        match &request.outcome {
            Outcome::Ok { reservation_id } => {
                f.accepted += 1;
                match fates.get(reservation_id) {
                    None => {
                        f.lost_no_fate += 1;
                        examples.lost_no_fate.get_or_insert(*reservation_id);
                    }
                    Some(fate) if fate.confirmed => f.accepted_confirmed += 1,
                    Some(_) => f.accepted_released += 1,
                }
                // Two reservations for the key are counted below, once.
                if found.is_some_and(|ids| ids.len() == 1 && ids[0] != *reservation_id) {
                    f.duplicated += 1;
                    examples.other_key.get_or_insert(*reservation_id);
                }
            }
            Outcome::Fail { code, .. } => {
                *f.failed.entry(code.clone()).or_default() += 1;
                if found.is_some() {
                    f.refused_but_taken += 1;
                    examples
                        .refused_but_taken
                        .get_or_insert(request.key.clone());
                }
            }
            Outcome::Indefinite { reservation_id, .. } => {
                f.indefinite += 1;
                match found {
                    Some(ids) => {
                        f.indefinite_took_effect += 1;
                        if reservation_id.is_some_and(|rid| ids.len() == 1 && ids[0] != rid) {
                            f.duplicated += 1;
                        }
                    }
                    None => unknown_keys.push(&request.key),
                }
            }
        }
    }
    // An indefinite outcome PostgreSQL does not have: does Redis?
    let in_redis = keys_in_redis(redis, &keys.idempotency(sale), &unknown_keys).await?;
    f.indefinite_unresolved = in_redis;
    f.indefinite_not_taken = unknown_keys.len() as u64 - in_redis;

    // Per reservation in PostgreSQL.
    let mut per_buyer: HashMap<&str, i64> = HashMap::new();
    for (id, fate) in &fates {
        let order = orders.get(id).copied().unwrap_or((0, 0));
        if fate.confirmed {
            f.confirmed += 1;
            f.stock.confirmed_units += fate.quantity;
            *per_buyer.entry(&fate.user_id).or_default() += fate.quantity;
            if order.0 == 0 {
                f.lost_order_missing += 1;
                examples.order_missing.get_or_insert(*id);
            }
        } else {
            f.released += 1;
            f.stock.released_units += fate.quantity;
            if order.0 > 0 {
                f.duplicated += order.0 as u64;
                examples.released_with_order.get_or_insert(*id);
            }
        }
        if order.0 > 1 {
            f.duplicated += (order.0 - 1) as u64;
            examples.two_orders.get_or_insert(*id);
        }
    }
    for (key, ids) in &by_key {
        if ids.len() > 1 {
            f.duplicated += ids.len() as u64 - 1;
            examples.two_for_key.get_or_insert((*key).to_owned());
        }
    }
    f.stock.order_units = orders.values().map(|(_, units)| units).sum();
    f.stock.initial = initial;
    let confirmed_max = f.stock.confirmed_units.max(f.stock.order_units);
    f.oversold = (confirmed_max - initial).max(0) as u64;
    let over_limit: Vec<(&&str, &i64)> = per_buyer
        .iter()
        .filter(|(_, units)| **units > limit_per_user)
        .collect();
    f.limit_exceeded_buyers = over_limit.len() as u64;

    // Redis's stock against PostgreSQL's ledger (the sale has no holds).
    let meta: HashMap<String, String> = redis.hgetall(keys.meta(sale)).await?;
    let meta_field =
        |name: &str| -> i64 { meta.get(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let stock: Option<i64> = redis.get(keys.stock(sale)).await?;
    f.stock.redis_stock = stock.unwrap_or(0);
    f.stock.expected_stock = initial - f.stock.confirmed_units;
    f.stock.redis_meta_stock =
        meta_field("initial") - meta_field("reserved") + meta_field("released");
    // A 202 with no fate took its unit with an event (the reservation is in the
    // stream): it is lost once, above, not again here. Every buy of the load asks for
    // one unit (load.rs).
    let missing = f.stock.expected_stock - f.stock.redis_stock - f.lost_no_fate as i64;
    f.lost_units = missing.max(0) as u64;
    f.lost = f.lost_no_fate + f.lost_order_missing + f.lost_units;

    // Name every failure.
    let p = &mut f.problems;
    if f.lost_no_fate > 0 {
        p.push(format!(
            "lost: {} reservation(s) answered 202 have no fate (neither confirmed nor released) after the drain, e.g. {}",
            f.lost_no_fate,
            show(examples.lost_no_fate)
        ));
    }
    if f.lost_order_missing > 0 {
        p.push(format!(
            "lost: {} confirmed reservation(s) have no order row, e.g. {}",
            f.lost_order_missing,
            show(examples.order_missing)
        ));
    }
    if missing > 0 {
        p.push(format!(
            "lost: Redis stock is {} but PostgreSQL's ledger leaves {}: {missing} unit(s) taken from stock with no event",
            f.stock.redis_stock, f.stock.expected_stock
        ));
    } else if missing < 0 {
        p.push(format!(
            "stock: Redis stock is {} but PostgreSQL's ledger leaves {}: {} unit(s) on sale that were sold",
            f.stock.redis_stock, f.stock.expected_stock, -missing
        ));
    }
    if f.stock.redis_meta_stock != f.stock.redis_stock {
        p.push(format!(
            "stock: Redis stock {} != initial - reserved + released = {} (a unit moved with no event)",
            f.stock.redis_stock, f.stock.redis_meta_stock
        ));
    }
    if f.duplicated > 0 {
        let example = [
            examples.two_orders.map(|id| format!("two orders for {id}")),
            examples
                .two_for_key
                .map(|k| format!("two reservations for key {k}")),
            examples
                .other_key
                .map(|id| format!("{id} answered for another key")),
            examples
                .released_with_order
                .map(|id| format!("{id} released and ordered")),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_default();
        p.push(format!("duplicated: {}, e.g. {example}", f.duplicated));
    }
    if f.oversold > 0 {
        p.push(format!(
            "oversold: {} units confirmed of {initial} on sale",
            confirmed_max
        ));
    }
    if let Some((buyer, units)) = over_limit.first() {
        p.push(format!(
            "limit: {} buyer(s) hold more than {limit_per_user} units, e.g. {buyer} holds {units}",
            f.limit_exceeded_buyers
        ));
    }
    if f.indefinite_unresolved > 0 {
        p.push(format!(
            "indefinite: {} request(s) Redis took and PostgreSQL never decided",
            f.indefinite_unresolved
        ));
    }
    if f.refused_but_taken > 0 {
        f.warnings.push(format!(
            "{} definite refusal(s) took effect after all (the buyer was told no and got the unit), e.g. key {}",
            f.refused_but_taken,
            examples.refused_but_taken.unwrap_or_default()
        ));
    }
    if f.lost_reported_by_yoink > 0 {
        f.warnings.push(format!(
            "Yoink counts {} reservation(s) lost with Redis (data_lost)",
            f.lost_reported_by_yoink
        ));
    }
    Ok(f)
}

/// The first example of each kind of failure.
#[derive(Default)]
struct Examples {
    lost_no_fate: Option<Uuid>,
    order_missing: Option<Uuid>,
    two_orders: Option<Uuid>,
    released_with_order: Option<Uuid>,
    other_key: Option<Uuid>,
    two_for_key: Option<String>,
    refused_but_taken: Option<String>,
}

fn show(id: Option<Uuid>) -> String {
    id.map_or_else(String::new, |id| id.to_string())
}

/// How many of `keys` the hash `idem` holds.
async fn keys_in_redis(
    redis: &mut RedisConn,
    idem: &str,
    keys: &[&str],
) -> Result<u64, NemesisError> {
    let mut found = 0;
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(idem)
            .arg(chunk)
            .query_async(redis)
            .await?;
        found += values.iter().filter(|v| v.is_some()).count() as u64;
    }
    Ok(found)
}
