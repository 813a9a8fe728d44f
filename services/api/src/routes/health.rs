//! `GET /healthz` (the process is alive), `GET /readyz` (both stores answer, and the
//! durability level holds; it also shows what Redis's persistence can lose) and
//! `GET /metrics` (Prometheus text). None of them may hang: every check is bounded.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;

use crate::error::ApiError;
use crate::response::{Response, json_response, text_response};
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

pub async fn readyz(state: &AppState) -> Result<Response, ApiError> {
    let redis = async {
        let mut conn = state.redis.clone();
        let ping: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        ping.is_ok()
    };
    let postgres = async {
        match state.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    };
    let (redis_ok, postgres_ok) = tokio::join!(
        async {
            tokio::time::timeout(CHECK_TIMEOUT, redis)
                .await
                .unwrap_or(false)
        },
        async {
            tokio::time::timeout(CHECK_TIMEOUT, postgres)
                .await
                .unwrap_or(false)
        },
    );
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let durable = state.durability.satisfied();
    let durability = state.durability.report();
    if redis_ok && postgres_ok && durable {
        Ok(json_response(
            StatusCode::OK,
            &json!({ "status": "ready", "redis": "ok", "postgres": "ok", "durability": durability }),
        ))
    } else {
        // Which store is down (or which durability setting is missing) is the whole
        // point of this endpoint, so unlike other 5xx answers it names them.
        let mut response = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "error": if durable { "unavailable" } else { "not_durable" },
                "redis": word(redis_ok),
                "postgres": word(postgres_ok),
                "durability": durability,
            }),
        );
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        Ok(response)
    }
}

pub fn metrics(state: &AppState) -> Response {
    text_response(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        state.metrics.render(),
    )
}
