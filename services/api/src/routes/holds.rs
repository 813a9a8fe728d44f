//! `POST /reservations/{id}/confirm`, `/cancel` and `/extend`: the checkout side
//! decides a hold (a reservation of a sale with `hold_seconds`): it becomes an order,
//! its units go back on sale, or its deadline moves.
//!
//! PostgreSQL decides, under the hold's row lock (`holds::act`), then Redis follows
//! (`holds::apply`, idempotent). A hold the projector has not recorded yet is recorded
//! from Redis first, so a decision never waits for projection. A decision Redis cannot
//! follow now (down, the sale suspended) still stands and is answered: the projectors'
//! expiry sweep applies it later. Repeats answer what was decided the first time.
//!
//! Never read or change anything before the bearer token is checked; never touch Redis
//! before PostgreSQL committed the decision; never answer anything but PostgreSQL's
//! decision.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Deserializer};
use yoink_core::ReservationId;
use yoink_core::holds::{self, Action, Change, FromRedis, Hold, HoldState};
use yoink_core::sales::MAX_HOLD_SECONDS;

use crate::auth;
use crate::body::{BodyError, parse_json, read_json_body};
use crate::error::ApiError;
use crate::response::{Response, json_response, rfc3339_ms};
use crate::routes::reservations::ReservationView;
use crate::state::AppState;

/// `POST /reservations/{id}/extend`'s optional body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    /// Seconds to move the deadline by (absent: the sale's `hold_seconds`); `null` is
    /// refused like any other non-integer.
    #[serde(default, deserialize_with = "present")]
    seconds: Option<i64>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64::deserialize(d).map(Some)
}

/// `POST /reservations/{id}/confirm`: the hold becomes an order (200, the same order on
/// every repeat); 409 once it expired or was cancelled.
pub async fn confirm(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    authorize(state, &req)?;
    let id = parse_id(raw_id)?;
    let (hold, _) = decide(state, id, Action::Confirm).await?;
    match hold.state {
        HoldState::Confirmed => Ok(answer(&hold)),
        HoldState::Expired => Err(ApiError::HoldExpired),
        HoldState::Cancelled => Err(ApiError::HoldCancelled),
        HoldState::Held => Err(still_held(&hold, "confirm")),
    }
}

/// `POST /reservations/{id}/cancel`: the hold's units go back on sale (200, the same on
/// every repeat); 409 once it was confirmed or expired.
pub async fn cancel(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    authorize(state, &req)?;
    let id = parse_id(raw_id)?;
    let (hold, _) = decide(state, id, Action::Cancel).await?;
    match hold.state {
        HoldState::Cancelled => Ok(answer(&hold)),
        HoldState::Confirmed => Err(ApiError::HoldConfirmed),
        HoldState::Expired => Err(ApiError::HoldExpired),
        HoldState::Held => Err(still_held(&hold, "cancel")),
    }
}

/// `POST /reservations/{id}/extend`: the deadline moves `seconds` later (default: the
/// sale's `hold_seconds`), at most to the sale's `max_hold_seconds` after the
/// reservation; 409 at that limit, and once the hold was decided.
pub async fn extend(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    authorize(state, &req)?;
    let id = parse_id(raw_id)?;
    let seconds = match extension_asked(req).await? {
        Some(seconds) => seconds,
        None => sale_hold_seconds(state, id).await?,
    };
    let (hold, change) = decide(state, id, Action::Extend { seconds }).await?;
    match (hold.state, change) {
        (HoldState::Held, Change::AtLimit) => Err(ApiError::HoldExtensionLimit {
            expires_at: rfc3339_ms(hold.expires_at_ms).unwrap_or_default(),
            max_hold_seconds: (hold.max_expires_at_ms - hold.reserved.reserved_at_ms + 500)
                .div_euclid(1000),
        }),
        (HoldState::Held, _) => Ok(answer(&hold)),
        (HoldState::Expired, _) => Err(ApiError::HoldExpired),
        (HoldState::Confirmed, _) => Err(ApiError::HoldConfirmed),
        (HoldState::Cancelled, _) => Err(ApiError::HoldCancelled),
    }
}

fn authorize(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    auth::bearer(
        req.headers(),
        state.checkout_token.as_deref(),
        ApiError::CheckoutDisabled,
    )
}

fn parse_id(raw_id: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw_id)
        .map_err(|err| ApiError::InvalidRequest(format!("reservation id {err}")))
}

fn answer(hold: &Hold) -> Response {
    json_response(StatusCode::OK, &ReservationView::of_hold(hold))
}

/// `act` never leaves a hold `held` after a confirm or a cancel: a fault, not input.
fn still_held(hold: &Hold, action: &str) -> ApiError {
    ApiError::Internal(format!(
        "hold {} still held after a {action}",
        hold.reserved.reservation_id
    ))
}

/// The extension the body asks for: `None` without a body (or without `seconds`).
async fn extension_asked(req: Request<Incoming>) -> Result<Option<i64>, ApiError> {
    let body = read_json_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // An object first: serde would also read a struct from an array (`[10]`).
    let object: serde_json::Map<String, serde_json::Value> = parse_json(&body)?;
    let asked: ExtendRequest = serde_json::from_value(object.into())
        .map_err(|err| ApiError::from(BodyError::BadJson(err)))?;
    match asked.seconds {
        Some(seconds) if !(1..=MAX_HOLD_SECONDS).contains(&seconds) => Err(
            ApiError::InvalidRequest(format!("seconds must be between 1 and {MAX_HOLD_SECONDS}")),
        ),
        other => Ok(other),
    }
}

/// The `hold_seconds` of the hold's sale (the default extension), recording the hold
/// from Redis first when PostgreSQL has no row for it yet.
async fn sale_hold_seconds(state: &AppState, id: ReservationId) -> Result<i64, ApiError> {
    if let Some(seconds) = hold_seconds_of(state, id).await? {
        return Ok(seconds);
    }
    record(state, id).await?;
    hold_seconds_of(state, id).await?.ok_or(ApiError::NotAHold)
}

async fn hold_seconds_of(state: &AppState, id: ReservationId) -> Result<Option<i64>, ApiError> {
    let db = state.pool.get().await?;
    let row = db
        .query_opt(
            "SELECT s.hold_seconds FROM holds h JOIN sales s ON s.sale_id = h.sale_id
             WHERE h.reservation_id = $1",
            &[&id.as_uuid()],
        )
        .await?;
    // A hold's sale has holds; at least a second keeps the extension valid regardless.
    Ok(row.map(|r| r.get::<_, i64>(0).max(1)))
}

/// PostgreSQL's decision about the hold `id` (recorded from Redis first when the
/// projector has not recorded it yet), then Redis made to follow it.
async fn decide(
    state: &AppState,
    id: ReservationId,
    action: Action,
) -> Result<(Hold, Change), ApiError> {
    let decided = match holds::act(&state.pool, id, action).await? {
        Some(decided) => decided,
        None => {
            record(state, id).await?;
            // Recorded, yet no row: PostgreSQL decided the reservation without a hold
            // (it gave up on it) between the two calls.
            holds::act(&state.pool, id, action)
                .await?
                .ok_or(ApiError::NotAHold)?
        }
    };
    follow_in_redis(state, &decided.0).await;
    Ok(decided)
}

/// Records the hold `id` in PostgreSQL from Redis, for a decision that came before the
/// projector. Asks only the sales the id's tag names (usually one).
async fn record(state: &AppState, id: ReservationId) -> Result<(), ApiError> {
    match holds::in_postgres(&state.pool, id).await? {
        // The projector recorded it since `act` looked.
        Some(FromRedis::Recorded) => return Ok(()),
        // Decided with no hold row: a reservation of a sale without holds.
        Some(FromRedis::NotAHold) => return Err(ApiError::NotAHold),
        Some(FromRedis::Unknown) | None => {}
    }
    let Some(tag) = id.sale_tag() else {
        return Err(ApiError::UnknownReservation);
    };
    let mut redis = state.redis.clone();
    for sale in state.sale_index.candidates(tag) {
        match holds::record_from_redis(&mut redis, &state.keys, &state.pool, &sale, id).await? {
            FromRedis::Recorded => return Ok(()),
            FromRedis::NotAHold => return Err(ApiError::NotAHold),
            FromRedis::Unknown => {}
        }
    }
    Err(ApiError::UnknownReservation)
}

/// Applies PostgreSQL's decision in Redis (idempotent, so also a repeat's: it finishes
/// what an earlier call could not). A failure changes nothing about the answer.
async fn follow_in_redis(state: &AppState, hold: &Hold) {
    let mut redis = state.redis.clone();
    let applied = tokio::time::timeout(
        state.redis_timeout,
        holds::apply(&mut redis, &state.keys, hold),
    )
    .await;
    let error = match applied {
        Ok(Ok(_)) => return,
        Ok(Err(err)) => err.to_string(),
        Err(_) => "Redis did not answer in time".to_owned(),
    };
    tracing::warn!(
        reservation_id = %hold.reserved.reservation_id,
        sale_id = %hold.reserved.sale_id,
        state = hold.state.as_str(),
        error = %error,
        "Hold decided in PostgreSQL; Redis could not follow yet (the expiry sweep applies it later)."
    );
}
