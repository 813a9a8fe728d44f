//! The Lua scripts (`scripts/*.lua`) and the typed Rust calls that run them.
//!
//! Each call is one `EVALSHA` (redis-rs reloads the script on `NOSCRIPT`), with every
//! key of one sale's hash tag, so it runs unchanged on Redis Cluster. Error replies of
//! the scripts become enum variants here and nowhere else. Never add a script that
//! writes before it has checked everything it needs.

use std::sync::LazyLock;

use redis::Script;

use crate::ids::{ReservationId, SaleId, UserId};
use crate::keys::Keyspace;
use crate::redis_store::{RedisConn, is_unavailable};

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reserve.lua")));
static CREATE_SALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/create_sale.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static SALE_SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/sale_snapshot.lua")));

/// The request to take units (`reserve.lua`'s arguments).
#[derive(Debug, Clone)]
pub struct Reserve<'a> {
    pub reservation_id: ReservationId,
    pub sale_id: &'a SaleId,
    pub user_id: &'a UserId,
    pub quantity: i64,
    pub idempotency_key: Option<&'a str>,
}

/// What `reserve.lua` answered when it took (or had already taken) the units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: ReservationId,
    /// The `reserved` event's id in the sale stream.
    pub stream_id: String,
    /// Units left on sale right after this call.
    pub remaining: i64,
    pub reserved_at_ms: i64,
    /// False when this call replayed an earlier reservation and wrote nothing.
    pub fresh: bool,
}

/// Why no units were taken.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// 404 unknown_sale
    #[error("no such sale")]
    UnknownSale,
    /// 403 sale_closed
    #[error("the sale is not open")]
    SaleClosed,
    /// 429 limit_exceeded
    #[error("per-user limit reached")]
    LimitExceeded,
    /// 409 sold_out
    #[error("sold out")]
    SoldOut,
    /// 422 idempotency_key_reused
    #[error("Idempotency-Key was used for another user or quantity")]
    IdempotencyMismatch,
    /// 400 invalid_request (the API checks quantity first; the script checks again)
    #[error("quantity must be an integer >= 1")]
    BadQuantity,
    /// 503 unavailable
    #[error("Redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// 500 internal: Redis answered something the script never returns.
    #[error("unexpected Redis reply: {0}")]
    Unexpected(#[source] redis::RedisError),
}

impl ReserveError {
    fn from_redis(err: redis::RedisError) -> Self {
        match err.code() {
            Some("UNKNOWN_SALE") => Self::UnknownSale,
            Some("SALE_CLOSED") => Self::SaleClosed,
            Some("LIMIT_EXCEEDED") => Self::LimitExceeded,
            Some("SOLD_OUT") => Self::SoldOut,
            Some("IDEMPOTENCY_MISMATCH") => Self::IdempotencyMismatch,
            Some("BAD_QUANTITY") => Self::BadQuantity,
            _ if is_unavailable(&err) => Self::Unavailable(err),
            _ => Self::Unexpected(err),
        }
    }
}

/// Runs `reserve.lua`: checks and takes units and appends the `reserved` event, atomically.
pub async fn reserve(
    conn: &mut RedisConn,
    keys: &Keyspace,
    req: &Reserve<'_>,
) -> Result<Reservation, ReserveError> {
    let sale = req.sale_id;
    let reply: (String, String, String, i64, i64) = RESERVE
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.buyers(sale))
        .key(keys.idempotency(sale))
        .key(keys.reservations(sale))
        .key(keys.events(sale))
        .arg(req.reservation_id.to_string())
        .arg(sale.as_str())
        .arg(req.user_id.as_str())
        .arg(req.quantity)
        .arg(req.idempotency_key.unwrap_or(""))
        .invoke_async(conn)
        .await
        .map_err(ReserveError::from_redis)?;
    let (outcome, rid, stream_id, remaining, reserved_at_ms) = reply;
    let reservation_id = ReservationId::parse(&rid).map_err(|_| {
        ReserveError::Unexpected(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "reserve.lua returned a reservation id that is not a UUID",
        )))
    })?;
    Ok(Reservation {
        reservation_id,
        stream_id,
        remaining,
        reserved_at_ms,
        fresh: outcome == "reserved",
    })
}

/// A sale's definition as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleTerms {
    pub initial_stock: i64,
    /// 0 = no limit.
    pub limit_per_user: i64,
    /// 0 = open from creation.
    pub starts_at_ms: i64,
    /// 0 = never closes.
    pub ends_at_ms: i64,
}

/// Runs `create_sale.lua`. Returns false (and changes nothing) when the sale exists.
pub async fn create_sale(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    terms: &SaleTerms,
) -> redis::RedisResult<bool> {
    let created: i64 = CREATE_SALE
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .arg(terms.initial_stock)
        .arg(terms.limit_per_user)
        .arg(terms.starts_at_ms)
        .arg(terms.ends_at_ms)
        .invoke_async(conn)
        .await?;
    Ok(created == 1)
}

/// What `release.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The units went back on sale now.
    Released(i64),
    /// An earlier call released them; nothing changed.
    AlreadyReleased(i64),
    /// Redis knows no such reservation: nothing was taken, nothing to give back.
    Unknown,
}

/// Runs `release.lua`: gives a reservation's units back, at most once per reservation.
pub async fn release(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    reservation: ReservationId,
    reason: &str,
) -> redis::RedisResult<ReleaseOutcome> {
    let (outcome, quantity): (String, i64) = RELEASE
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.buyers(sale))
        .key(keys.reservations(sale))
        .key(keys.events(sale))
        .arg(reservation.to_string())
        .arg(reason)
        .invoke_async(conn)
        .await?;
    Ok(match outcome.as_str() {
        "released" => ReleaseOutcome::Released(quantity),
        "already" => ReleaseOutcome::AlreadyReleased(quantity),
        _ => ReleaseOutcome::Unknown,
    })
}

/// A sale's Redis-side figures, read in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleSnapshot {
    pub terms: SaleTerms,
    pub remaining: i64,
    /// Units ever taken by `reserve.lua`.
    pub reserved: i64,
    /// Units ever given back by `release.lua`.
    pub released: i64,
    pub stream_length: i64,
}

/// Runs `sale_snapshot.lua`; `None` when Redis has no such sale.
pub async fn sale_snapshot(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> redis::RedisResult<Option<SaleSnapshot>> {
    let values: Vec<i64> = SALE_SNAPSHOT
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.events(sale))
        .invoke_async(conn)
        .await?;
    let [
        initial,
        remaining,
        reserved,
        released,
        limit,
        starts,
        ends,
        length,
    ] = values[..]
    else {
        return Ok(None);
    };
    Ok(Some(SaleSnapshot {
        terms: SaleTerms {
            initial_stock: initial,
            limit_per_user: limit,
            starts_at_ms: starts,
            ends_at_ms: ends,
        },
        remaining,
        reserved,
        released,
        stream_length: length,
    }))
}

/// Where a reservation stands in Redis (`reserve.lua`'s record of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRecord {
    pub released: bool,
    pub user_id: String,
    pub quantity: i64,
    pub stream_id: String,
    pub reserved_at_ms: i64,
}

impl ReservationRecord {
    /// Parses `state|user_id|quantity|stream_id|reserved_at_ms`.
    pub fn parse(record: &str) -> Option<Self> {
        let mut parts = record.split('|');
        let state = parts.next()?;
        let user_id = parts.next()?.to_owned();
        let quantity = parts.next()?.parse().ok()?;
        let stream_id = parts.next()?.to_owned();
        let reserved_at_ms = parts.next()?.parse().ok()?;
        Some(Self {
            released: state == "released",
            user_id,
            quantity,
            stream_id,
            reserved_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_documents_its_keys_and_returns() {
        for (name, source) in [
            ("reserve", include_str!("scripts/reserve.lua")),
            ("release", include_str!("scripts/release.lua")),
            ("create_sale", include_str!("scripts/create_sale.lua")),
            ("sale_snapshot", include_str!("scripts/sale_snapshot.lua")),
        ] {
            for needle in ["KEYS[1]", "Returns", "Example"] {
                assert!(source.contains(needle), "{name}.lua lacks `{needle}`");
            }
        }
    }

    #[test]
    fn parses_reservation_records() {
        let r = ReservationRecord::parse("reserved|u1|2|1-0|1700").expect("valid record");
        assert!(!r.released);
        assert_eq!((r.user_id.as_str(), r.quantity), ("u1", 2));
        assert!(ReservationRecord::parse("garbage").is_none());
    }
}
