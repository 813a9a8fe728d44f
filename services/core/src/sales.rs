//! Creating a sale and reading its figures: the one implementation behind both
//! `POST /sales` and `yoink sale create`, and behind `GET /sales/{id}`.
//!
//! PostgreSQL holds the sale's definition and is written first, so the projector never
//! meets a sale PostgreSQL does not know. Creating a sale that exists must never reset
//! its stock: the Redis side is only ever created by `create_sale.lua`, which refuses
//! existing keys.

use deadpool_postgres::{GenericClient, Pool};
use redis::AsyncCommands;
use serde::Serialize;

use crate::db::DbError;
use crate::epochs;
use crate::holds;
use crate::ids::SaleId;
use crate::keys::Keyspace;
use crate::redis_store::RedisConn;
use crate::scripts::{self, SaleInRedis, SaleTerms};

/// The command to create a sale (`POST /sales`, `yoink sale create`).
#[derive(Debug, Clone)]
pub struct CreateSale {
    pub sale_id: SaleId,
    pub terms: SaleTerms,
}

#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    /// 409 sale_exists
    #[error("sale already exists")]
    Exists,
    /// 400 invalid_request
    #[error("{0}")]
    Invalid(&'static str),
    /// 404 unknown_sale
    #[error("no such sale")]
    Unknown,
    /// 503 sale_recovering: Redis is being rebuilt from PostgreSQL
    #[error("the sale is suspended until Redis is rebuilt from PostgreSQL")]
    Recovering,
    /// 503 when Redis is unreachable
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// 503 when PostgreSQL is unreachable
    #[error("{0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for SaleError {
    fn from(err: tokio_postgres::Error) -> Self {
        SaleError::Db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for SaleError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        SaleError::Db(DbError::Pool(err))
    }
}

impl CreateSale {
    fn check(&self) -> Result<(), SaleError> {
        let t = &self.terms;
        if !(0..=MAX_UNITS).contains(&t.initial_stock) {
            return Err(SaleError::Invalid("stock must be between 0 and 10^15"));
        }
        if !(0..=MAX_UNITS).contains(&t.limit_per_user) {
            return Err(SaleError::Invalid(
                "limit_per_user must be between 0 and 10^15",
            ));
        }
        if t.starts_at_ms < 0 || t.ends_at_ms < 0 {
            return Err(SaleError::Invalid("times must be after 1970"));
        }
        if t.starts_at_ms > MAX_TIME_MS || t.ends_at_ms > MAX_TIME_MS {
            return Err(SaleError::Invalid("times must be before the year 10000"));
        }
        if t.ends_at_ms != 0 && t.ends_at_ms <= t.starts_at_ms {
            return Err(SaleError::Invalid("ends_at must be after starts_at"));
        }
        if !(0..=MAX_HOLD_SECONDS).contains(&t.hold_seconds)
            || !(0..=MAX_HOLD_SECONDS).contains(&t.max_hold_seconds)
        {
            return Err(SaleError::Invalid(
                "hold_seconds and max_hold_seconds must be between 0 and 604800 (7 days)",
            ));
        }
        if t.max_hold_seconds != 0 && t.max_hold_seconds < t.hold_seconds {
            return Err(SaleError::Invalid(
                "max_hold_seconds must be at least hold_seconds",
            ));
        }
        if t.hold_seconds == 0 && t.max_hold_seconds != 0 {
            return Err(SaleError::Invalid(
                "max_hold_seconds needs hold_seconds (a sale without holds has nothing to extend)",
            ));
        }
        Ok(())
    }
}

/// Most units a sale may stock or a buyer may be allowed: the Lua scripts count in
/// doubles, exact only up to 2^53, so counts stay well below that.
pub const MAX_UNITS: i64 = 1_000_000_000_000_000;

/// Longest a hold may last, extensions included: 7 days.
pub const MAX_HOLD_SECONDS: i64 = 7 * 24 * 3600;

/// Latest accepted sale time: 9999-12-31T23:59:59.999Z (PostgreSQL and every
/// calendar library agree up to there).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

fn nonzero(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

/// Creates a sale in PostgreSQL, then in Redis. `Exists` when it was there already,
/// except that a sale left half-created (PostgreSQL row, no Redis keys, no reservation
/// decided yet) is finished from its PostgreSQL definition, so a retry after a Redis
/// outage succeeds.
pub async fn create_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &CreateSale,
) -> Result<(), SaleError> {
    sale.check()?;
    let mut sale = sale.clone();
    // Without a bound of its own, a hold cannot be extended.
    if sale.terms.max_hold_seconds == 0 {
        sale.terms.max_hold_seconds = sale.terms.hold_seconds;
    }
    let sale = &sale;
    let db = pool.get().await?;
    let inserted = db
        .query_opt(
            "INSERT INTO sales (sale_id, initial_stock, limit_per_user, starts_at, ends_at,
                                hold_seconds, max_hold_seconds)
             VALUES ($1, $2, $3, to_timestamp($4::bigint / 1000.0), to_timestamp($5::bigint / 1000.0),
                     $6, $7)
             ON CONFLICT (sale_id) DO NOTHING
             RETURNING sale_id",
            &[
                &sale.sale_id.as_str(),
                &sale.terms.initial_stock,
                &sale.terms.limit_per_user,
                &nonzero(sale.terms.starts_at_ms),
                &nonzero(sale.terms.ends_at_ms),
                &sale.terms.hold_seconds,
                &sale.terms.max_hold_seconds,
            ],
        )
        .await?
        .is_some();
    // An archived sale is PostgreSQL's alone: never registered or created in Redis again.
    if !inserted && crate::archive::is_archived(&db, &sale.sale_id).await? {
        return Err(SaleError::Exists);
    }
    // Registered now, before anything below can fail or answer "exists": a retry of a
    // creation whose registration failed registers it, so a sale that takes buys is
    // always one the projectors find.
    let _: i64 = redis
        .sadd(keys.sales_registry(), sale.sale_id.as_str())
        .await?;
    let terms = if inserted {
        sale.terms.clone()
    } else {
        let redis_has_it: bool = redis.exists(keys.meta(&sale.sale_id)).await?;
        let decided: i64 = db
            .query_one(
                "SELECT count(*) FROM reservation_fates WHERE sale_id = $1",
                &[&sale.sale_id.as_str()],
            )
            .await?
            .get(0);
        if redis_has_it || decided > 0 {
            return Err(SaleError::Exists);
        }
        terms_from_db(&db, &sale.sale_id)
            .await?
            .ok_or(SaleError::Unknown)?
    };
    let created = scripts::create_sale(redis, keys, &sale.sale_id, &terms).await?;
    if !created {
        return Err(SaleError::Exists);
    }
    // Only now has the sale a position in Redis that must never go back: epoch 1.
    epochs::open_first(&db, &sale.sale_id).await?;
    Ok(())
}

/// Every sale either store knows (PostgreSQL's `sales` and the Redis registry), sorted;
/// an id that does not parse is skipped. The registry is read with SSCAN, a page at a
/// time, so a large one never holds Redis up. Generic over the caller's error.
pub async fn known_to_either<E>(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
) -> Result<Vec<SaleId>, E>
where
    E: From<redis::RedisError> + From<DbError>,
{
    const PAGE: usize = 500;
    let mut all = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(keys.sales_registry())
            .arg(cursor)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(redis)
            .await?;
        all.extend(page.iter().filter_map(|s| SaleId::parse(s).ok()));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let rows = pool
        .get()
        .await
        .map_err(DbError::from)?
        .query("SELECT sale_id FROM sales", &[])
        .await
        .map_err(DbError::from)?;
    all.extend(rows.iter().filter_map(|r| SaleId::parse(r.get(0)).ok()));
    Ok(all.into_iter().collect())
}

/// The sale's definition as PostgreSQL holds it.
pub async fn terms_from_db(
    db: &impl GenericClient,
    sale: &SaleId,
) -> Result<Option<SaleTerms>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT initial_stock, limit_per_user,
                    coalesce((extract(epoch FROM starts_at) * 1000)::bigint, 0),
                    coalesce((extract(epoch FROM ends_at) * 1000)::bigint, 0),
                    hold_seconds, max_hold_seconds
             FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.map(|r| SaleTerms {
        initial_stock: r.get(0),
        limit_per_user: r.get(1),
        starts_at_ms: r.get(2),
        ends_at_ms: r.get(3),
        hold_seconds: r.get(4),
        max_hold_seconds: r.get(5),
    }))
}

/// `GET /sales/{id}`: live figures from Redis, decided figures from PostgreSQL; an
/// archived sale's figures from PostgreSQL alone (Redis holds nothing of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaleView {
    pub sale_id: SaleId,
    pub initial_stock: i64,
    /// Units on sale now (Redis).
    pub remaining: i64,
    /// Units ever taken by buyers (Redis).
    pub reserved: i64,
    /// Units given back after a permanent failure (PostgreSQL's decision).
    pub released: i64,
    /// Units that became orders (PostgreSQL).
    pub confirmed: i64,
    pub limit_per_user: i64,
    /// Seconds a reservation waits for payment (0: no holds, it is an order at once).
    pub hold_seconds: i64,
    /// The latest an extended hold may expire, in seconds from its reservation.
    pub max_hold_seconds: i64,
    /// Units held for payment right now (PostgreSQL's holds not decided yet).
    pub held: i64,
    /// `open`, `recovering` while buys are suspended until Redis is rebuilt from
    /// PostgreSQL (Redis went back in time), or `archived`.
    pub status: &'static str,
    /// The sale was archived (`yoink sale archive`): PostgreSQL alone holds it.
    pub archived: bool,
}

pub async fn view_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
) -> Result<SaleView, SaleError> {
    // Redis first: a live sale costs PostgreSQL nothing more than before. Only a sale
    // Redis does not hold is looked up as an archive.
    let snapshot = match scripts::sale_snapshot(redis, keys, sale).await? {
        SaleInRedis::Present(snapshot) => snapshot,
        missing => {
            return match archived_view(pool, sale).await? {
                Some(view) => Ok(view),
                None if missing == SaleInRedis::SuspendedEmpty => Err(SaleError::Recovering),
                None => Err(SaleError::Unknown),
            };
        }
    };
    let db = pool.get().await?;
    let (confirmed, released, archived) = db
        .query_opt(
            "SELECT confirmed_units, released_units, archived_at IS NOT NULL
             FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap_or((0, 0, false));
    let held = if snapshot.terms.hold_seconds > 0 {
        holds::held_units(&db, sale).await?
    } else {
        0
    };
    Ok(SaleView {
        sale_id: sale.clone(),
        initial_stock: snapshot.terms.initial_stock,
        remaining: snapshot.remaining,
        reserved: snapshot.reserved,
        released,
        confirmed,
        limit_per_user: snapshot.terms.limit_per_user,
        hold_seconds: snapshot.terms.hold_seconds,
        max_hold_seconds: snapshot.terms.max_hold_seconds,
        held,
        status: if archived {
            "archived"
        } else if snapshot.suspended {
            "recovering"
        } else {
            "open"
        },
        archived,
    })
}

/// An archived sale as PostgreSQL holds it, with the figures Redis showed before the
/// archive: a sale is archived only once drained and reconciled, so every unit taken
/// was decided (`reserved` = confirmed + released) and every unit not confirmed or
/// held is back on sale (`remaining`). `None` when the sale is not archived.
pub async fn archived_view(pool: &Pool, sale: &SaleId) -> Result<Option<SaleView>, SaleError> {
    let db = pool.get().await?;
    let Some(r) = db
        .query_opt(
            "SELECT initial_stock, limit_per_user, hold_seconds, max_hold_seconds,
                    confirmed_units, released_units
             FROM sales WHERE sale_id = $1 AND archived_at IS NOT NULL",
            &[&sale.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let (initial_stock, confirmed, released): (i64, i64, i64) = (r.get(0), r.get(4), r.get(5));
    let hold_seconds: i64 = r.get(2);
    let held = if hold_seconds > 0 {
        holds::held_units(&db, sale).await?
    } else {
        0
    };
    Ok(Some(SaleView {
        sale_id: sale.clone(),
        initial_stock,
        remaining: initial_stock - confirmed - held,
        reserved: confirmed + released + held,
        released,
        confirmed,
        limit_per_user: r.get(1),
        hold_seconds,
        max_hold_seconds: r.get(3),
        held,
        status: "archived",
        archived: true,
    }))
}

/// Parses a sale time given as RFC 3339 (`2026-11-25T12:00:00Z`) or epoch
/// milliseconds, into epoch milliseconds.
pub fn parse_time(raw: &str) -> Result<i64, SaleError> {
    if let Ok(ms) = raw.parse::<i64>() {
        return if ms >= 0 {
            Ok(ms)
        } else {
            Err(SaleError::Invalid("times must be after 1970"))
        };
    }
    raw.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            SaleError::Invalid("times must be RFC 3339 (2026-11-25T12:00:00Z) or epoch ms")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_times_postgres_cannot_store() {
        let sale = |starts_at_ms, ends_at_ms| CreateSale {
            sale_id: SaleId::parse("s").expect("valid id"),
            terms: SaleTerms {
                initial_stock: 1,
                limit_per_user: 0,
                starts_at_ms,
                ends_at_ms,
                ..SaleTerms::default()
            },
        };
        assert!(sale(0, i64::MAX - 1).check().is_err());
        assert!(sale(MAX_TIME_MS + 1, 0).check().is_err());
        assert!(sale(0, MAX_TIME_MS).check().is_ok());
    }

    #[test]
    fn refuses_counts_the_lua_scripts_cannot_hold_exactly() {
        let sale = |initial_stock, limit_per_user| CreateSale {
            sale_id: SaleId::parse("s").expect("valid id"),
            terms: SaleTerms {
                initial_stock,
                limit_per_user,
                starts_at_ms: 0,
                ends_at_ms: 0,
                ..SaleTerms::default()
            },
        };
        assert!(sale(MAX_UNITS, MAX_UNITS).check().is_ok());
        assert!(sale(MAX_UNITS + 1, 0).check().is_err());
        assert!(sale(1, i64::MAX - 1).check().is_err());
        assert!(sale(-1, 0).check().is_err());
    }

    #[test]
    fn parses_rfc3339_and_epoch_millis() {
        assert_eq!(parse_time("1700000000000").ok(), Some(1_700_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z").ok(), Some(1_000));
        assert!(parse_time("tomorrow").is_err());
        assert!(parse_time("-5").is_err());
    }
}
