//! The PostgreSQL side of `yoink status`: which sales PostgreSQL knows, each sale's
//! decided figures (orders, releases, holds still held) and the outbox backlog, all
//! from one read-only snapshot. Never writes; every statement is bounded by a
//! `statement_timeout`, so a stuck server is an error, never a hang.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use yoink_core::SaleId;

use crate::error::StoreError;

/// The longest one statement may run: a status call must answer, not wait on a
/// server in trouble (the connection wait is bounded by `db::pool` already).
const STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// One sale's figures in PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresSale {
    /// The sale has a row in `sales`.
    pub known: bool,
    pub initial_stock: Option<i64>,
    /// Order rows, and their units.
    pub orders: i64,
    pub confirmed_units: i64,
    /// Units whose fate is `released`.
    pub released_units: i64,
    /// Units of holds still `held` (waiting for a confirm, a cancel or expiry).
    pub held_units: i64,
    /// Outbox rows of the sale not published yet, and the age of the oldest.
    pub outbox_backlog: i64,
    pub outbox_oldest_age_ms: Option<i64>,
}

/// The unpublished outbox rows of every sale together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxTotal {
    pub backlog: i64,
    pub oldest_age_ms: Option<i64>,
}

/// What PostgreSQL says of the sales asked for, and of the whole outbox.
#[derive(Debug, Clone, Default)]
pub struct PostgresReading {
    pub sales: HashMap<SaleId, PostgresSale>,
    pub outbox: OutboxTotal,
}

/// Every sale id in `sales`, or, for one sale, whether it is there.
pub async fn known_sales(pool: &Pool, only: Option<&SaleId>) -> Result<Vec<String>, StoreError> {
    let client = pool.get().await?;
    let rows = match only {
        Some(sale) => {
            client
                .query(
                    "SELECT sale_id FROM sales WHERE sale_id = $1",
                    &[&sale.as_str()],
                )
                .await?
        }
        None => client.query("SELECT sale_id FROM sales", &[]).await?,
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The figures of `sales`, and the outbox, from one REPEATABLE READ snapshot.
pub async fn read(pool: &Pool, sales: &[SaleId]) -> Result<PostgresReading, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
    ))
    .await?;
    let ids: Vec<&str> = sales.iter().map(SaleId::as_str).collect();
    // One statement for every sale: each figure is an index lookup on its sale
    // (orders_sale, reservation_fates_sale, holds_waiting).
    let rows = tx
        .query(
            "SELECT k.sale_id, s.sale_id IS NOT NULL, s.initial_stock, o.n, o.units, r.units, h.units
             FROM unnest($1::text[]) AS k(sale_id)
             LEFT JOIN sales s ON s.sale_id = k.sale_id
             CROSS JOIN LATERAL (SELECT count(*) AS n, coalesce(sum(quantity), 0)::bigint AS units
                                 FROM orders WHERE sale_id = k.sale_id) o
             CROSS JOIN LATERAL (SELECT coalesce(sum(quantity), 0)::bigint AS units
                                 FROM reservation_fates
                                 WHERE sale_id = k.sale_id AND fate = 'released') r
             CROSS JOIN LATERAL (SELECT coalesce(sum(quantity), 0)::bigint AS units
                                 FROM holds WHERE sale_id = k.sale_id AND state = 'held') h",
            &[&ids],
        )
        .await?;
    // Only unpublished rows are read (the relay's partial index), so the cost is the
    // backlog's, not the outbox's history.
    let outbox = tx
        .query(
            "SELECT sale_id, count(*),
                    (extract(epoch FROM now() - min(created_at)) * 1000)::bigint
             FROM outbox WHERE published_at IS NULL GROUP BY sale_id",
            &[],
        )
        .await?;
    tx.commit().await?;

    let mut backlog: HashMap<String, (i64, i64)> = HashMap::new();
    let mut total = OutboxTotal::default();
    for row in &outbox {
        let (sale, count, age): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        total.backlog += count;
        total.oldest_age_ms = total.oldest_age_ms.max(Some(age.max(0)));
        backlog.insert(sale, (count, age.max(0)));
    }
    let mut reading = PostgresReading {
        sales: HashMap::with_capacity(rows.len()),
        outbox: total,
    };
    for row in &rows {
        let raw: String = row.get(0);
        let Ok(sale) = SaleId::parse(&raw) else {
            continue;
        };
        let outbox = backlog.get(&raw).copied();
        reading.sales.insert(
            sale,
            PostgresSale {
                known: row.get(1),
                initial_stock: row.get(2),
                orders: row.get(3),
                confirmed_units: row.get(4),
                released_units: row.get(5),
                held_units: row.get(6),
                outbox_backlog: outbox.map_or(0, |(count, _)| count),
                outbox_oldest_age_ms: outbox.map(|(_, age)| age),
            },
        );
    }
    Ok(reading)
}
