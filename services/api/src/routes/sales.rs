//! `POST /sales` (admin) creates a sale; `GET /sales/{id}` shows its figures.
//!
//! Creating a sale that exists answers 409 and never touches its stock.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use yoink_core::SaleId;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;

use crate::auth;
use crate::body::{parse_json, read_json_body};
use crate::error::ApiError;
use crate::response::{Response, json_response};
use crate::state::AppState;

/// A sale time: RFC 3339 text or epoch milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeInput {
    Millis(i64),
    Text(String),
}

impl TimeInput {
    fn millis(&self) -> Result<i64, ApiError> {
        match self {
            TimeInput::Millis(ms) => sales::parse_time(&ms.to_string()),
            TimeInput::Text(text) => sales::parse_time(text),
        }
        .map_err(ApiError::from)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSaleRequest {
    sale_id: SaleId,
    stock: i64,
    #[serde(default)]
    limit_per_user: i64,
    starts_at: Option<TimeInput>,
    ends_at: Option<TimeInput>,
    /// Seconds a reservation waits for payment (0 or absent: no holds).
    #[serde(default)]
    hold_seconds: i64,
    /// The latest a hold may be extended to, in seconds from its reservation
    /// (absent: `hold_seconds`, no extensions).
    #[serde(default)]
    max_hold_seconds: i64,
}

/// Admin endpoints need `Authorization: Bearer $YOINK_ADMIN_TOKEN`; with no token
/// configured they are off.
fn authorize(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    auth::bearer(
        req.headers(),
        state.admin_token.as_deref(),
        ApiError::AdminDisabled,
    )
}

pub async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    authorize(state, &req)?;
    let body = read_json_body(req).await?;
    let input: CreateSaleRequest = parse_json(&body)?;
    let sale = CreateSale {
        sale_id: input.sale_id,
        terms: SaleTerms {
            initial_stock: input.stock,
            limit_per_user: input.limit_per_user,
            starts_at_ms: input
                .starts_at
                .as_ref()
                .map(TimeInput::millis)
                .transpose()?
                .unwrap_or(0),
            ends_at_ms: input
                .ends_at
                .as_ref()
                .map(TimeInput::millis)
                .transpose()?
                .unwrap_or(0),
            hold_seconds: input.hold_seconds,
            max_hold_seconds: input.max_hold_seconds,
        },
    };
    let mut redis = state.redis.clone();
    sales::create_sale(&mut redis, &state.keys, &state.pool, &sale).await?;
    let view = sales::view_sale(&mut redis, &state.keys, &state.pool, &sale.sale_id).await?;
    Ok(json_response(StatusCode::CREATED, &view))
}

pub async fn show(state: &AppState, raw_id: &str) -> Result<Response, ApiError> {
    let sale =
        SaleId::parse(raw_id).map_err(|err| ApiError::InvalidRequest(format!("sale id {err}")))?;
    let mut redis = state.redis.clone();
    let view = sales::view_sale(&mut redis, &state.keys, &state.pool, &sale).await?;
    Ok(json_response(StatusCode::OK, &view))
}
