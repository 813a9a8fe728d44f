//! `GET /reservations/{id}`: where a reservation stands.
//!
//! PostgreSQL decides a reservation's fate (`confirmed` or `released`), so it is asked
//! first; a reservation it has not decided yet is looked up in Redis, where the reserve
//! script recorded it (`reserved`). The route needs no authentication, so what it costs
//! Redis must never grow with the number of sales: only the sales the id's tag names
//! (`sale_index`, usually one) are asked, one `HGET` each; an id without a tag (v7,
//! made before tags) is PostgreSQL's alone. This costs the hot `/buy` path nothing.

use futures::future::join_all;
use hyper::StatusCode;
use redis::AsyncCommands;
use serde::Serialize;
use uuid::Uuid;
use yoink_core::ReservationId;
use yoink_core::scripts::ReservationRecord;

use crate::error::ApiError;
use crate::response::{Response, json_response};
use crate::state::AppState;

#[derive(Debug, Serialize)]
struct ReservationView {
    reservation_id: ReservationId,
    sale_id: String,
    user_id: String,
    quantity: i64,
    /// `reserved`, `confirmed` or `released`.
    status: &'static str,
    reserved_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
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

/// The reservation's fate, once PostgreSQL has decided it.
async fn decided(state: &AppState, id: ReservationId) -> Result<Option<ReservationView>, ApiError> {
    let db = state.pool.get().await?;
    let row = db
        .query_opt(
            "SELECT f.sale_id, f.user_id, f.quantity, f.fate, f.reason, o.order_id,
                    (extract(epoch FROM f.reserved_at) * 1000)::bigint
             FROM reservation_fates f
             LEFT JOIN orders o ON o.reservation_id = f.reservation_id
             WHERE f.reservation_id = $1",
            &[&id.as_uuid()],
        )
        .await?;
    Ok(row.map(|r| {
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
        return Ok(Some(ReservationView {
            reservation_id: id,
            sale_id: sale.to_string(),
            user_id: record.user_id,
            quantity: record.quantity,
            status: if record.released {
                "released"
            } else {
                "reserved"
            },
            reserved_at_ms: record.reserved_at_ms,
            order_id: None,
            reason: None,
        }));
    }
    Ok(None)
}
