//! Response plumbing shared by every route: JSON and text bodies with their
//! Content-Type, and the one way a time appears in a body. Knows nothing of errors (`error.rs` builds error responses with it;
//! request bodies are `body.rs`'s job), so the dependency goes one way.

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

pub type Response = hyper::Response<Full<Bytes>>;

pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    let mut response = hyper::Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A hold's deadline in a body, in both forms: `expires_at` (RFC 3339, UTC, with
/// milliseconds: `2026-11-27T08:05:00.123Z`) and `expires_at_ms` (epoch ms). Flattened
/// into the body; absent when there is no deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiresAt {
    pub expires_at: String,
    pub expires_at_ms: i64,
}

impl ExpiresAt {
    /// `None` for a time no calendar date can show (never a deadline Yoink sets).
    pub fn at(ms: i64) -> Option<Self> {
        Some(Self {
            expires_at: rfc3339_ms(ms)?,
            expires_at_ms: ms,
        })
    }
}

/// Epoch milliseconds as RFC 3339 in UTC with exactly three fraction digits.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    let at = jiff::Timestamp::from_millisecond(ms).ok()?;
    Some(format!("{at:.3}"))
}

/// A response body as text (unit tests only look at small bodies).
#[cfg(test)]
pub fn body_text(response: &Response) -> String {
    use http_body_util::BodyExt as _;
    let body = response.body().clone();
    let bytes = futures_lite_block_on(body.collect())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_ms(1_795_766_400_123).as_deref(),
            Some("2026-11-27T08:00:00.123Z")
        );
        assert_eq!(
            rfc3339_ms(1_795_766_400_000).as_deref(),
            Some("2026-11-27T08:00:00.000Z")
        );
        assert_eq!(ExpiresAt::at(i64::MAX), None);
        let body = serde_json::to_value(ExpiresAt::at(0)).expect("serializes");
        assert_eq!(
            body,
            serde_json::json!({"expires_at": "1970-01-01T00:00:00.000Z", "expires_at_ms": 0})
        );
    }
}
