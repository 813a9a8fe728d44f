//! Response and request-body plumbing shared by every route: JSON bodies, the size cap.
//!
//! Bodies are read through `http_body_util::Limited`, so no request can make the server
//! buffer more than the cap, whatever its Content-Length says.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use crate::error::ApiError;

pub type Response = hyper::Response<Full<Bytes>>;

/// Largest accepted request body.
pub const MAX_BODY: usize = 4 * 1024;

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

/// Reads a request body of at most `MAX_BODY` bytes. The Content-Type is not checked:
/// `curl -d` sends a form type, and the JSON parser is the real judge.
pub async fn read_json_body(req: hyper::Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(ApiError::PayloadTooLarge(MAX_BODY));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(MAX_BODY))
        }
        Err(err) => Err(ApiError::InvalidRequest(format!(
            "could not read body: {err}"
        ))),
    }
}

/// Parses JSON, turning serde's message into the 400's detail.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidRequest(
            "body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|err| ApiError::InvalidRequest(format!("bad JSON: {err}")))
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
