//! Bearer tokens: the one check of `Authorization: Bearer <token>`, shared by the admin
//! endpoints (`POST /sales`) and the checkout side's hold decisions.
//!
//! The token is compared in constant time (`constant_time_eq`), and handlers run this
//! check before they read or change anything else. Never log or echo a token, and never
//! let an empty one through: an empty setting means the endpoints are off.

use std::sync::Arc;

use constant_time_eq::constant_time_eq;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use crate::error::ApiError;

/// A token setting as the server uses it: unset and empty both mean "off".
pub fn configured(token: Option<&str>) -> Option<Arc<str>> {
    token.filter(|t| !t.is_empty()).map(Arc::from)
}

/// Admits a request whose `Authorization` header is `Bearer <expected>`. With no token
/// configured, refuses with `disabled` before the header is looked at; a missing,
/// malformed or wrong token is 401 `unauthorized`.
pub fn bearer(
    headers: &HeaderMap,
    expected: Option<&str>,
    disabled: ApiError,
) -> Result<(), ApiError> {
    let Some(expected) = expected.filter(|t| !t.is_empty()) else {
        return Err(disabled);
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(presented.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(auth).expect("valid header"),
        );
        headers
    }

    fn code(result: Result<(), ApiError>) -> &'static str {
        result.err().map_or("ok", |e| e.code())
    }

    #[test]
    fn only_the_configured_token_passes() {
        let off = || ApiError::CheckoutDisabled;
        assert_eq!(code(bearer(&with("Bearer tok"), Some("tok"), off())), "ok");
        assert_eq!(code(bearer(&with("Bearer tok "), Some("tok"), off())), "ok");
        assert_eq!(
            code(bearer(&with("Bearer nope"), Some("tok"), off())),
            "unauthorized"
        );
        assert_eq!(
            code(bearer(&with("bearer tok"), Some("tok"), off())),
            "unauthorized"
        );
        assert_eq!(
            code(bearer(&with("Basic dG9r"), Some("tok"), off())),
            "unauthorized"
        );
        assert_eq!(
            code(bearer(&HeaderMap::new(), Some("tok"), off())),
            "unauthorized"
        );
    }

    #[test]
    fn no_token_or_an_empty_one_turns_the_endpoints_off() {
        let off = || ApiError::CheckoutDisabled;
        assert_eq!(
            code(bearer(&with("Bearer tok"), None, off())),
            "checkout_disabled"
        );
        assert_eq!(
            code(bearer(&with("Bearer "), Some(""), off())),
            "checkout_disabled"
        );
        assert!(configured(Some("")).is_none());
        assert!(configured(None).is_none());
        assert_eq!(configured(Some("t")).as_deref(), Some("t"));
    }
}
