//! The case study's three earlier versions, as `POST /buy` backends behind `server.rs`:
//!
//! - `naive` (V1): read the stock, then decrement and insert an order, with no lock: it
//!   oversells under concurrency, on purpose;
//! - `db-atomic` (V2): one guarded `UPDATE … WHERE stock >= q RETURNING` and the insert,
//!   in one transaction: correct, and bounded by PostgreSQL;
//! - `redis-sync` (V3): the real reserve script in Redis, then a synchronous insert per
//!   request over a huge pool: when PostgreSQL refuses, the units Redis took are lost.
//!   Its order goes into Yoink's own ledger (`ledger::confirm`: the order, its fate and
//!   outbox row), so `yoink reconcile` judges V3 by the same books as Yoink.
//!
//! `naive` and `db-atomic` use only the bench's own tables (`bench_sales`,
//! `bench_orders`); all three stay in the bench's own database and key prefix. They must
//! never be reachable from `serve`, and never be "fixed": they are here to show what
//! breaks.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use yoink_core::events::Reserved;
use yoink_core::ledger;
use yoink_core::scripts::{self, Reserve, ReserveError};
use yoink_core::{Keyspace, Position, RedisConn, ReservationId, SaleId, UserId};

use crate::server::BuyBody;

/// Drops and recreates the bench's tables: every run starts from nothing.
pub(crate) const RESET_TABLES: &str = "
    DROP TABLE IF EXISTS bench_orders;
    DROP TABLE IF EXISTS bench_sales;
    CREATE TABLE bench_sales (
        sale_id text PRIMARY KEY,
        initial_stock bigint NOT NULL,
        stock bigint NOT NULL
    );
    CREATE TABLE bench_orders (
        id bigserial PRIMARY KEY,
        sale_id text NOT NULL,
        user_id text NOT NULL,
        quantity bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );";

const INSERT_ORDER: &str =
    "INSERT INTO bench_orders (sale_id, user_id, quantity) VALUES ($1, $2, $3)";

/// What one buy came to, in the real API's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bought {
    /// 202
    Accepted,
    /// 409 sold_out
    SoldOut,
    /// 404 unknown_sale
    UnknownSale,
    /// 503 unavailable
    Unavailable,
}

/// PostgreSQL failures behind 503s, counted without a lock, with the first one kept.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    pub count: AtomicU64,
    pub first: OnceLock<String>,
}

impl Failures {
    fn record(&self, err: &(dyn std::error::Error + 'static)) -> Bought {
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self.first.get_or_init(|| with_causes(err));
        Bought::Unavailable
    }
}

/// An error and its causes in one line (PostgreSQL's own words are in the last one,
/// e.g. "sorry, too many clients already").
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

pub(crate) enum Kind {
    Naive,
    DbAtomic,
    RedisSync { redis: RedisConn, keys: Keyspace },
}

pub(crate) struct Backend {
    pub kind: Kind,
    pub pool: Pool,
    pub failures: Failures,
}

impl Backend {
    pub fn new(kind: Kind, pool: Pool) -> Self {
        Self {
            kind,
            pool,
            failures: Failures::default(),
        }
    }

    pub async fn buy(&self, buy: &BuyBody) -> Bought {
        match &self.kind {
            Kind::Naive => self.naive(buy).await,
            Kind::DbAtomic => self.db_atomic(buy).await,
            Kind::RedisSync { redis, keys } => self.redis_sync(redis, keys, buy).await,
        }
    }

    /// V1: read, check, then write, each its own statement and nothing locked between.
    async fn naive(&self, buy: &BuyBody) -> Bought {
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(err) => return self.failures.record(&err),
        };
        let stock: i64 = match client
            .query_opt(
                "SELECT stock FROM bench_sales WHERE sale_id = $1",
                &[&buy.sale_id],
            )
            .await
        {
            Ok(Some(row)) => row.get(0),
            Ok(None) => return Bought::UnknownSale,
            Err(err) => return self.failures.record(&err),
        };
        if stock < buy.quantity {
            return Bought::SoldOut;
        }
        // The race: others read the same stock in between.
        if let Err(err) = client
            .execute(
                "UPDATE bench_sales SET stock = stock - $2 WHERE sale_id = $1",
                &[&buy.sale_id, &buy.quantity],
            )
            .await
        {
            return self.failures.record(&err);
        }
        match client
            .execute(INSERT_ORDER, &[&buy.sale_id, &buy.user_id, &buy.quantity])
            .await
        {
            Ok(_) => Bought::Accepted,
            Err(err) => self.failures.record(&err),
        }
    }

    /// V2: the guarded decrement and the order in one transaction.
    async fn db_atomic(&self, buy: &BuyBody) -> Bought {
        let mut client = match self.pool.get().await {
            Ok(client) => client,
            Err(err) => return self.failures.record(&err),
        };
        let outcome = async {
            let tx = client.transaction().await?;
            let taken = tx
                .query_opt(
                    "UPDATE bench_sales SET stock = stock - $2
                     WHERE sale_id = $1 AND stock >= $2 RETURNING stock",
                    &[&buy.sale_id, &buy.quantity],
                )
                .await?;
            if taken.is_none() {
                // Dropping the transaction rolls it back.
                return Ok(Bought::SoldOut);
            }
            tx.execute(INSERT_ORDER, &[&buy.sale_id, &buy.user_id, &buy.quantity])
                .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(Bought::Accepted)
        }
        .await;
        match outcome {
            Ok(bought) => bought,
            Err(err) => self.failures.record(&err),
        }
    }

    /// V3: Redis takes the units (the real script), then a synchronous insert of the
    /// order; when PostgreSQL refuses, the buyer gets 503 and the units stay taken, with
    /// no order. The script also appends its `reserved` entry, which no one reads: V3
    /// has no queue (see `lib::settle_redis_sync`).
    async fn redis_sync(&self, redis: &RedisConn, keys: &Keyspace, buy: &BuyBody) -> Bought {
        let (Ok(sale), Ok(user)) = (SaleId::parse(&buy.sale_id), UserId::parse(&buy.user_id))
        else {
            return Bought::UnknownSale;
        };
        let request = Reserve {
            reservation_id: ReservationId::for_sale(&sale),
            sale_id: &sale,
            user_id: &user,
            quantity: buy.quantity,
            idempotency_key: None,
            floor: Position::ZERO,
        };
        let mut conn = redis.clone();
        let taken = match scripts::reserve(&mut conn, keys, &request).await {
            Ok(taken) => taken,
            Err(ReserveError::SoldOut) => return Bought::SoldOut,
            Err(ReserveError::UnknownSale) => return Bought::UnknownSale,
            Err(_) => return Bought::Unavailable,
        };
        let order = Reserved {
            reservation_id: taken.reservation_id,
            sale_id: sale,
            user_id: user,
            quantity: buy.quantity,
            reserved_at_ms: taken.reserved_at_ms,
            // V3 knows nothing of positions, and its sale must set no floor that
            // another strategy's API, sharing the bench's database, would hold its own
            // Redis (another key prefix, where this sale does not exist) against.
            position: None,
            idempotency_key: None,
            expires_at_ms: None,
        };
        match ledger::confirm(&self.pool, &[(taken.stream_id.as_str(), &order)]).await {
            Ok(_) => Bought::Accepted,
            Err(err) => self.failures.record(&err),
        }
    }
}
