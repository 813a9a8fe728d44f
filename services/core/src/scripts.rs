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
use crate::position::Position;
use crate::redis_store::{RedisConn, is_unavailable};

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reserve.lua")));
static CREATE_SALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/create_sale.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static SALE_SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/sale_snapshot.lua")));
static FENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/fence.lua")));
static REBUILD_SALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rebuild_sale.lua")));
static HOLD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/hold.lua")));

/// The request to take units (`reserve.lua`'s arguments).
#[derive(Debug, Clone)]
pub struct Reserve<'a> {
    pub reservation_id: ReservationId,
    pub sale_id: &'a SaleId,
    pub user_id: &'a UserId,
    pub quantity: i64,
    pub idempotency_key: Option<&'a str>,
    /// The highest position the caller knows Redis reached for this sale: Redis below
    /// it went back in time, and the script suspends the sale instead of selling.
    pub floor: Position,
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
    /// This reservation's position (fresh), or the sale's current one (replayed).
    pub position: Position,
    /// When the hold expires (epoch ms): `None` when the sale has no holds, or a
    /// replayed hold is already settled.
    pub expires_at_ms: Option<i64>,
}

/// Why no units were taken.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// 503 sale_recovering: suspended until Redis is rebuilt from PostgreSQL
    #[error("the sale is suspended until Redis is rebuilt from PostgreSQL")]
    SaleRecovering {
        /// This very call found Redis below its floor and suspended the sale.
        suspended_now: bool,
    },
    /// 404 unknown_sale
    #[error("no such sale")]
    UnknownSale,
    /// 409 sale_closed
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
            Some("SALE_RECOVERING") => Self::SaleRecovering {
                suspended_now: err
                    .detail()
                    .is_some_and(|d| d.starts_with("Redis went back")),
            },
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
    // The script hands back some numbers as the digits it already had (reserved_at_ms,
    // epoch) to spare Lua a conversion; an i64 reads an integer or a string of digits.
    let reply: (String, String, String, i64, i64, i64, i64, i64) = RESERVE
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.buyers(sale))
        .key(keys.idempotency(sale))
        .key(keys.reservations(sale))
        .key(keys.events(sale))
        .key(keys.holds(sale))
        .arg(req.reservation_id.to_string())
        .arg(sale.as_str())
        .arg(req.user_id.as_str())
        .arg(req.quantity)
        .arg(req.idempotency_key.unwrap_or(""))
        .arg(req.floor.epoch)
        .arg(req.floor.seq)
        .invoke_async(conn)
        .await
        .map_err(ReserveError::from_redis)?;
    let (outcome, rid, stream_id, remaining, reserved_at_ms, epoch, seq, expires_at_ms) = reply;
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
        position: Position::new(epoch, seq),
        expires_at_ms: (expires_at_ms > 0).then_some(expires_at_ms),
    })
}

/// A sale's definition as Redis holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleTerms {
    pub initial_stock: i64,
    /// 0 = no limit.
    pub limit_per_user: i64,
    /// 0 = open from creation.
    pub starts_at_ms: i64,
    /// 0 = never closes.
    pub ends_at_ms: i64,
    /// How long a reservation waits for payment before it expires; 0 = no holds (every
    /// reservation becomes an order at once).
    pub hold_seconds: i64,
    /// The latest an extended hold may expire, counted from the reservation.
    pub max_hold_seconds: i64,
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
        .arg(terms.hold_seconds * 1000)
        .arg(terms.max_hold_seconds * 1000)
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
    /// Redis's record of the reservation cannot be read: nothing was given back, and
    /// retrying cannot change that (the units stay taken until a repair).
    Malformed,
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
        .key(keys.holds(sale))
        .arg(reservation.to_string())
        .arg(reason)
        .invoke_async(conn)
        .await?;
    Ok(match outcome.as_str() {
        "released" => ReleaseOutcome::Released(quantity),
        "already" => ReleaseOutcome::AlreadyReleased(quantity),
        "malformed" => ReleaseOutcome::Malformed,
        _ => ReleaseOutcome::Unknown,
    })
}

/// A sale's Redis-side figures, read in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleSnapshot {
    /// Buys answer 503 until Redis is rebuilt from PostgreSQL.
    pub suspended: bool,
    pub terms: SaleTerms,
    pub remaining: i64,
    /// Units ever taken by `reserve.lua`.
    pub reserved: i64,
    /// Units ever given back by `release.lua`.
    pub released: i64,
    pub stream_length: i64,
    /// Holds not settled in Redis yet (waiting for a confirm, a cancel or expiry).
    pub holds_waiting: i64,
}

/// What Redis holds of a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleInRedis {
    Missing,
    /// Nothing but a suspension: Redis lost the sale and a rebuild is due.
    SuspendedEmpty,
    Present(SaleSnapshot),
}

/// Runs `sale_snapshot.lua`.
pub async fn sale_snapshot(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> redis::RedisResult<SaleInRedis> {
    let values: Vec<redis::Value> = SALE_SNAPSHOT
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.events(sale))
        .key(keys.holds(sale))
        .invoke_async(conn)
        .await?;
    match values.len() {
        0 => return Ok(SaleInRedis::Missing),
        1 => return Ok(SaleInRedis::SuspendedEmpty),
        _ => {}
    }
    let numbers: Vec<i64> = values
        .iter()
        .map(redis::from_redis_value_ref::<i64>)
        .collect::<Result<_, _>>()?;
    let [
        initial,
        remaining,
        reserved,
        released,
        limit,
        starts,
        ends,
        length,
        suspended,
        hold_ms,
        max_hold_ms,
        holds_waiting,
    ] = numbers[..]
    else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "sale_snapshot.lua returned an unexpected number of values",
        )));
    };
    Ok(SaleInRedis::Present(SaleSnapshot {
        suspended: suspended == 1,
        terms: SaleTerms {
            initial_stock: initial,
            limit_per_user: limit,
            starts_at_ms: starts,
            ends_at_ms: ends,
            hold_seconds: hold_ms / 1000,
            max_hold_seconds: max_hold_ms / 1000,
        },
        remaining,
        reserved,
        released,
        stream_length: length,
        holds_waiting,
    }))
}

/// Where `fence.lua` found the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// At or above the floor: the sale sells.
    Live(Position),
    /// Suspended until a rebuild; `now` when this very call suspended it.
    Suspended {
        position: Position,
        token: String,
        reason: String,
        now: bool,
    },
}

/// Runs `fence.lua`: suspends the sale when Redis is below `floor` (or always, with
/// `force`), atomically with the comparison. `who` goes into the recorded reason.
pub async fn fence(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    floor: Position,
    who: &str,
    force: bool,
) -> redis::RedisResult<Fence> {
    let (state, epoch, seq, token, reason): (String, i64, i64, String, String) = FENCE
        .key(keys.meta(sale))
        .arg(floor.epoch)
        .arg(floor.seq)
        .arg(who)
        .arg(if force { "force" } else { "" })
        .invoke_async(conn)
        .await?;
    let position = Position::new(epoch, seq);
    Ok(match state.as_str() {
        "live" => Fence::Live(position),
        other => Fence::Suspended {
            position,
            token,
            reason,
            now: other == "suspended_now",
        },
    })
}

/// What a rebuild swaps in (`rebuild_sale.lua`'s arguments besides the staged hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// The suspension the rebuild started from.
    pub token: String,
    pub terms: SaleTerms,
    pub reserved: i64,
    pub released: i64,
    pub stock: i64,
    pub epoch: i64,
}

/// Why `rebuild_sale` swapped nothing in.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("the sale is no longer suspended by the rebuild's token")]
    Stale,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Runs `rebuild_sale.lua`: staged hashes, counters, stock and a new epoch in, the
/// suspension lifted, atomically, if the sale is still suspended by `rebuild.token`.
pub async fn rebuild_sale(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    rebuild: &Rebuild,
) -> Result<(), RebuildError> {
    let (buyers, idem, reservations, holds) = (
        keys.buyers(sale),
        keys.idempotency(sale),
        keys.reservations(sale),
        keys.holds(sale),
    );
    let done: redis::RedisResult<i64> = REBUILD_SALE
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(&buyers)
        .key(&idem)
        .key(&reservations)
        .key(keys.staged(&buyers))
        .key(keys.staged(&idem))
        .key(keys.staged(&reservations))
        .key(&holds)
        .key(keys.staged(&holds))
        .arg(&rebuild.token)
        .arg(rebuild.terms.initial_stock)
        .arg(rebuild.terms.limit_per_user)
        .arg(rebuild.terms.starts_at_ms)
        .arg(rebuild.terms.ends_at_ms)
        .arg(rebuild.reserved)
        .arg(rebuild.released)
        .arg(rebuild.stock)
        .arg(rebuild.epoch)
        .arg(rebuild.terms.hold_seconds * 1000)
        .arg(rebuild.terms.max_hold_seconds * 1000)
        .invoke_async(conn)
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some("STALE") => Err(RebuildError::Stale),
        Err(err) => Err(err.into()),
    }
}

/// A decision about a hold, as `hold.lua` applies it in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    /// The hold became this order.
    Confirmed { order_id: uuid::Uuid },
    /// The hold's deadline moved to this (epoch ms).
    Extended { expires_at_ms: i64 },
}

/// Runs `hold.lua`: applies a confirm or an extension PostgreSQL decided, once.
/// True when applied now (and its event appended); false when already applied.
/// A suspended sale answers `SALE_RECOVERING` (the rebuild restores holds from
/// PostgreSQL).
pub async fn apply_hold(
    conn: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    reservation: ReservationId,
    change: HoldChange,
) -> redis::RedisResult<bool> {
    let (op, value) = match change {
        HoldChange::Confirmed { order_id } => ("confirm", order_id.to_string()),
        HoldChange::Extended { expires_at_ms } => ("extend", expires_at_ms.to_string()),
    };
    let applied: i64 = HOLD
        .key(keys.meta(sale))
        .key(keys.holds(sale))
        .key(keys.events(sale))
        .arg(op)
        .arg(reservation.to_string())
        .arg(value)
        .invoke_async(conn)
        .await?;
    Ok(applied == 1)
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
    /// `state|user_id|quantity|stream_id|reserved_at_ms`, as `reserve.lua` writes it.
    pub fn encode(&self) -> String {
        let state = if self.released {
            "released"
        } else {
            "reserved"
        };
        format!(
            "{state}|{}|{}|{}|{}",
            self.user_id, self.quantity, self.stream_id, self.reserved_at_ms
        )
    }

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
            ("fence", include_str!("scripts/fence.lua")),
            ("rebuild_sale", include_str!("scripts/rebuild_sale.lua")),
            ("hold", include_str!("scripts/hold.lua")),
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
        assert_eq!(r.encode(), "reserved|u1|2|1-0|1700");
        let released = ReservationRecord {
            released: true,
            ..r
        };
        assert_eq!(ReservationRecord::parse(&released.encode()), Some(released));
    }
}
