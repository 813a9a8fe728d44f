//! `GET /reservations/{id}`: where a reservation stands.
//!
//! PostgreSQL decides a reservation's fate (`confirmed` or `released`), so it is asked
//! first: its fate, else its hold waiting for a decision (`held`, with its deadline). A
//! reservation it has not recorded yet is looked up in Redis, where the reserve script
//! recorded it (`reserved`, or `held` while it waits in the sale's holds). The route
//! needs no authentication, so what it costs Redis must never grow with the number of
//! sales: only the sales the id's tag names (`sale_index`, usually one) are asked, one
//! `HGET` each (and one `ZSCORE` for the deadline of a reservation found there); an id
//! without a tag (v7, made before tags) is PostgreSQL's alone. This costs the hot `/buy`
//! path nothing. A reservation of an archived sale (`yoink sale archive`: decided, and
//! Redis holds nothing of it) is answered by PostgreSQL like any other, marked
//! `archived`.

use futures::future::join_all;
use hyper::StatusCode;
use redis::AsyncCommands;
use serde::Serialize;
use uuid::Uuid;
use yoink_core::ReservationId;
use yoink_core::holds::{self, Hold, HoldState};
use yoink_core::scripts::ReservationRecord;

use crate::error::ApiError;
use crate::response::{ExpiresAt, Response, json_response};
use crate::state::AppState;

/// A reservation as the API shows it (also the answer of the hold decisions).
#[derive(Debug, Serialize)]
pub struct ReservationView {
    reservation_id: ReservationId,
    sale_id: String,
    user_id: String,
    quantity: i64,
    /// `reserved`, `held`, `confirmed` or `released`.
    status: &'static str,
    reserved_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// A hold's deadline, while it waits for a decision.
    #[serde(flatten)]
    expires: Option<ExpiresAt>,
    /// Its sale was archived: PostgreSQL alone holds it.
    archived: bool,
}

impl ReservationView {
    /// A hold as PostgreSQL records it: `held` (with its deadline), `confirmed` (with
    /// its order) or `released` (reason `cancelled` or `expired`).
    pub fn of_hold(hold: &Hold) -> Self {
        let r = &hold.reserved;
        let (status, reason, expires) = match hold.state {
            HoldState::Held => ("held", None, ExpiresAt::at(hold.expires_at_ms)),
            HoldState::Confirmed => ("confirmed", None, None),
            HoldState::Cancelled | HoldState::Expired => {
                ("released", Some(hold.state.as_str().to_owned()), None)
            }
        };
        Self {
            reservation_id: r.reservation_id,
            sale_id: r.sale_id.to_string(),
            user_id: r.user_id.to_string(),
            quantity: r.quantity,
            status,
            reserved_at_ms: r.reserved_at_ms,
            order_id: hold.order_id.filter(|_| hold.state == HoldState::Confirmed),
            reason,
            expires,
            archived: false,
        }
    }
}

pub async fn show(state: &AppState, raw_id: &str) -> Result<Response, ApiError> {
    let id = ReservationId::parse(raw_id)
        .map_err(|err| ApiError::InvalidRequest(format!("reservation id {err}")))?;
    if let Some(view) = decided(state, id).await? {
        return Ok(json_response(StatusCode::OK, &view));
    }
    let view = undecided(state, id)
        .await?
        .ok_or(ApiError::UnknownReservation)?;
    Ok(json_response(StatusCode::OK, &view))
}

/// The reservation as PostgreSQL records it: its fate once decided, else its hold
/// waiting for a decision.
async fn decided(state: &AppState, id: ReservationId) -> Result<Option<ReservationView>, ApiError> {
    let db = state.pool.get().await?;
    let row = db
        .query_opt(
            "SELECT f.sale_id, f.user_id, f.quantity, f.fate, f.reason, o.order_id,
                    (extract(epoch FROM f.reserved_at) * 1000)::bigint,
                    s.archived_at IS NOT NULL
             FROM reservation_fates f
             LEFT JOIN orders o ON o.reservation_id = f.reservation_id
             LEFT JOIN sales s ON s.sale_id = f.sale_id
             WHERE f.reservation_id = $1",
            &[&id.as_uuid()],
        )
        .await?;
    let Some(r) = row else {
        return Ok(holds::find(&db, id)
            .await?
            .map(|hold| ReservationView::of_hold(&hold)));
    };
    Ok(Some({
        let fate: String = r.get(3);
        ReservationView {
            reservation_id: id,
            sale_id: r.get(0),
            user_id: r.get(1),
            quantity: r.get(2),
            status: if fate == "released" {
                "released"
            } else {
                "confirmed"
            },
            reserved_at_ms: r.get(6),
            order_id: r.get(5),
            reason: r.get(4),
            expires: None,
            archived: r.get::<_, Option<bool>>(7).unwrap_or(false),
        }
    }))
}

/// The reservation as the reserve script recorded it, before PostgreSQL decided it.
async fn undecided(
    state: &AppState,
    id: ReservationId,
) -> Result<Option<ReservationView>, ApiError> {
    let Some(tag) = id.sale_tag() else {
        return Ok(None);
    };
    let sales = state.sale_index.candidates(tag);
    let field = id.to_string();
    let lookups = sales.iter().map(|sale| {
        let mut conn = state.redis.clone();
        let key = state.keys.reservations(sale);
        let field = field.clone();
        async move { conn.hget::<_, _, Option<String>>(key, field).await }
    });
    for (sale, found) in sales.iter().zip(join_all(lookups).await) {
        let Some(record) = found.map_err(ApiError::redis)? else {
            continue;
        };
        let Some(record) = ReservationRecord::parse(&record) else {
            return Err(ApiError::Internal(format!(
                "unreadable reservation record in sale {sale}"
            )));
        };
        // A hold waits in the sale's holds until it is settled: one more command, for
        // reservations found only.
        let deadline = if record.released {
            None
        } else {
            let mut conn = state.redis.clone();
            conn.zscore::<_, _, Option<f64>>(state.keys.holds(sale), &field)
                .await
                .map_err(ApiError::redis)?
        };
        let expires = deadline.and_then(|ms| ExpiresAt::at(ms as i64));
        return Ok(Some(ReservationView {
            reservation_id: id,
            sale_id: sale.to_string(),
            user_id: record.user_id,
            quantity: record.quantity,
            status: match (record.released, &expires) {
                (true, _) => "released",
                (false, Some(_)) => "held",
                (false, None) => "reserved",
            },
            reserved_at_ms: record.reserved_at_ms,
            order_id: None,
            reason: None,
            expires,
            archived: false,
        }));
    }
    Ok(None)
}
