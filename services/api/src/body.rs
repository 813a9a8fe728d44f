//! Request bodies: read at most `MAX_BODY` bytes, then parse JSON.
//!
//! Bodies are read through `http_body_util::Limited`, so no request can make the server
//! buffer more than the cap, whatever its Content-Length says. Errors here are
//! `BodyError`s, which `error.rs` maps to responses: this module never builds a
//! response and never depends on `ApiError` (the dependency goes one way).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;

/// Largest accepted request body.
pub const MAX_BODY: usize = 4 * 1024;

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// 413 payload_too_large
    #[error("body larger than {MAX_BODY} bytes")]
    TooLarge,
    /// 400 invalid_request: the connection failed mid-body
    #[error("could not read body: {0}")]
    Unreadable(String),
    /// 400 invalid_request
    #[error("body must be a JSON object")]
    Empty,
    /// 400 invalid_request
    #[error("bad JSON: {0}")]
    BadJson(#[from] serde_json::Error),
}

/// Reads a request body of at most `MAX_BODY` bytes. The Content-Type is not checked:
/// `curl -d` sends a form type, and the JSON parser is the real judge.
pub async fn read_json_body(req: hyper::Request<Incoming>) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(err) => Err(BodyError::Unreadable(err.to_string())),
    }
}

/// Parses JSON, keeping serde's message for the 400's detail.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if body.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn neither_body_nor_response_depends_on_the_error_mapping() {
        // error.rs builds responses and maps body errors; a dependency back from
        // either would be a cycle again.
        for (file, source) in [
            ("body.rs", include_str!("body.rs")),
            ("response.rs", include_str!("response.rs")),
        ] {
            let code = source.split("#[cfg(test)]").next().unwrap_or_default();
            let uses_error = code.contains(concat!("crate::", "error"));
            assert!(!uses_error, "{file} depends on error.rs");
        }
    }
}
