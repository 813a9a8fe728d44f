//! `POST /buy`: take units with one reserve script call and answer 202.
//!
//! The reservation id is made here, before the call, so a call whose reply was lost
//! (timeout) is retried with the same id and cannot take stock twice; when the retry's
//! reply is lost too, the 503 carries the id (the reservation may stand) and a retry
//! with the same Idempotency-Key resolves it. The id carries the sale's tag, so
//! `GET /reservations/{id}` knows which sale to ask Redis about. Reserve calls in
//! flight are bounded: at the bound the answer is 503 at once, never a queue that ends
//! in timeouts after Redis already took the stock. Every call carries the sale's
//! position floor, so a Redis that went back in time suspends the sale (503
//! `sale_recovering`) instead of selling; and no 202 leaves before the reservation is
//! as durable as `--durability` asks (else 503 `not_durable`, the reservation standing).
//! After a sell-out, a recent `sold_out` from Redis answers the crowd without a script
//! call (`sold_out.rs`: believed for at most 100 ms). In a sale with holds the 202 is a hold: its body carries the deadline
//! (`expires_at`) by which the checkout side must confirm it.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use yoink_core::scripts::{self, Reserve, ReserveError};
use yoink_core::{ReservationId, SaleId, UserId};

use crate::body::{parse_json, read_json_body};
use crate::error::ApiError;
use crate::log_limiter::{LogLimiter, REFUSAL_LOG_INTERVAL};
use crate::metrics::{record_reservation, set_in_flight, sold_out_answered_locally};
use crate::response::{ExpiresAt, Response, json_response};
use crate::state::AppState;

/// Most units one request may ask for.
pub const MAX_QUANTITY: i64 = 1_000;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyRequest {
    sale_id: SaleId,
    user_id: UserId,
    #[serde(default = "one", deserialize_with = "whole_number")]
    quantity: i64,
}

fn one() -> i64 {
    1
}

/// A JSON integer, also written with a zero fraction (`2.0`): JSON Schema's `integer`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "quantity must be a whole number, got {number}"
        ))),
    }
}

#[derive(Debug, Serialize)]
struct Accepted<'a> {
    reservation_id: ReservationId,
    sale_id: &'a SaleId,
    user_id: &'a UserId,
    quantity: i64,
    status: &'static str,
    /// How durable the reservation was when this answer left (`--durability`).
    durability: &'static str,
    /// A hold's deadline (sales with `hold_seconds`): confirm it before then.
    #[serde(flatten)]
    expires: Option<ExpiresAt>,
}

fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

pub async fn buy(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&req)?;
    let body = read_json_body(req).await?;
    let buy: BuyRequest = parse_json(&body)?;
    if !(1..=MAX_QUANTITY).contains(&buy.quantity) {
        return Err(ApiError::InvalidRequest(format!(
            "quantity must be between 1 and {MAX_QUANTITY}"
        )));
    }
    let outcome = reserve(state, &buy, idempotency_key.as_deref()).await;
    record_reservation(&buy.sale_id, &outcome, &state.sale_index);
    let reservation = outcome?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &Accepted {
            reservation_id: reservation.reservation_id,
            sale_id: &buy.sale_id,
            user_id: &buy.user_id,
            quantity: buy.quantity,
            status: "reserved",
            durability: state.durability.level.as_str(),
            expires: reservation.expires_at_ms.and_then(ExpiresAt::at),
        },
    ))
}

/// Takes the units (or replays them), as durably as `--durability` asks.
async fn reserve(
    state: &AppState,
    buy: &BuyRequest,
    idempotency_key: Option<&str>,
) -> Result<scripts::Reservation, ApiError> {
    // An archived sale: Redis holds nothing of it and must not get anything back (a
    // reserve call would find it below its floor and suspend it), so nothing is taken,
    // whatever the Idempotency-Key.
    let Some(floor) = state.fences.floor_unless_archived(&buy.sale_id) else {
        return Err(ApiError::SaleClosed);
    };
    // A buy with an Idempotency-Key may be the retry of a 202: only Redis knows.
    if idempotency_key.is_none() && state.sold_out.refuses(&buy.sale_id, buy.quantity) {
        sold_out_answered_locally();
        return Err(ApiError::SoldOut);
    }
    if !state.durability.satisfied() {
        return Err(ApiError::NotDurable(None));
    }
    let Ok(permit) = state.reserve_permits.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded);
    };
    set_in_flight(state.reserve_calls_in_flight());

    let request = Reserve {
        reservation_id: ReservationId::for_sale(&buy.sale_id),
        sale_id: &buy.sale_id,
        user_id: &buy.user_id,
        quantity: buy.quantity,
        idempotency_key,
        floor,
    };
    let (result, first_reply_lost) = reserve_retrying_lost_replies(state, &request).await;
    match &result {
        Ok(reservation) => {
            state.sold_out.took(&buy.sale_id);
            if state.fences.saw(&buy.sale_id, reservation.position) {
                state.sale_index.learn([&buy.sale_id]);
            }
        }
        Err(ReserveError::SaleRecovering {
            suspended_now: true,
        }) => {
            yoink_core::telemetry::rollback_detected(&buy.sale_id, "api");
            tracing::error!(sale_id = %buy.sale_id, floor = %request.floor, "Redis went back in time: sale suspended until it is rebuilt from PostgreSQL.");
        }
        Err(ReserveError::SoldOut) => state.sold_out.refused(&buy.sale_id, buy.quantity),
        Err(_) => {}
    }
    // The permit is held through the durability wait: it bounds buys in progress.
    let durable = match &result {
        Ok(_) => state.durability.covered().await,
        Err(_) => Ok(()),
    };
    drop(permit);
    set_in_flight(state.reserve_calls_in_flight());
    match (result, durable) {
        (Ok(reservation), Ok(())) => Ok(reservation),
        (Ok(reservation), Err(_)) => Err(ApiError::NotDurable(Some(reservation.reservation_id))),
        // The first call may have run (its reply, not its request, was lost): the
        // buyer needs the id to find out, not a bare 503.
        (Err(ReserveError::Unavailable(err)), _) if first_reply_lost => Err(ApiError::ReplyLost {
            reservation_id: request.reservation_id,
            cause: format!("Redis: {err}"),
        }),
        (Err(err), _) => Err(err.into()),
    }
}

/// One reserve call, retried once with the same reservation id when the reply timed
/// out: Redis may have run it, and the script answers a repeat with the original.
/// Also says whether the first reply was lost (then a failed retry leaves the outcome
/// unknown).
async fn reserve_retrying_lost_replies(
    state: &AppState,
    request: &Reserve<'_>,
) -> (Result<scripts::Reservation, ReserveError>, bool) {
    // A stalled Redis loses the replies of every buy in flight at once: one line per
    // interval, not one per buyer.
    static REPLY_LOST: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
    match reserve_once(state, request).await {
        Err(ReserveError::Unavailable(err)) if err.is_timeout() => {
            if let Some(skipped) = REPLY_LOST.admit() {
                tracing::warn!(
                    reservation_id = %request.reservation_id,
                    error = %err,
                    more = skipped.count,
                    over_secs = skipped.over.as_secs(),
                    "Reserve reply lost; retrying with the same id (this line stands for `more` others in the last `over_secs` s)."
                );
            }
            (reserve_once(state, request).await, true)
        }
        other => (other, false),
    }
}

/// One reserve call, bounded in time even while the connection is being re-established.
async fn reserve_once(
    state: &AppState,
    request: &Reserve<'_>,
) -> Result<scripts::Reservation, ReserveError> {
    let mut conn = state.redis.clone();
    tokio::time::timeout(
        state.redis_timeout,
        scripts::reserve(&mut conn, &state.keys, request),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ReserveError::Unavailable(redis::RedisError::from(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "reserve call timed out"),
        )))
    })
}
