//! Maps a request to its route template and handler, and records request metrics
//! after the response exists, whatever the handler returned.
//!
//! The route label is decided here, before any handler runs, so an error can never
//! erase it (the seed system lost it in a global error handler). No handler logic here.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::error::ApiError;
use crate::metrics;
use crate::response::Response;
use crate::routes;
use crate::state::AppState;

/// A matched route; `template()` is its metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Buy,
    Sales,
    Sale(String),
    Reservation(String),
    /// The checkout side's decisions about a hold.
    ConfirmHold(String),
    CancelHold(String),
    ExtendHold(String),
    Healthz,
    Readyz,
    Metrics,
    Unmatched,
}

/// A path segment with its percent-escapes decoded (`s%3A1` is `s:1`); bytes that are
/// not UTF-8 are replaced, and the id parser then refuses them with a 400.
fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

impl Route {
    pub fn parse(path: &str) -> Route {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["buy"] => Route::Buy,
            ["sales"] => Route::Sales,
            ["sales", id] => Route::Sale(decoded(id)),
            ["reservations", id] => Route::Reservation(decoded(id)),
            ["reservations", id, "confirm"] => Route::ConfirmHold(decoded(id)),
            ["reservations", id, "cancel"] => Route::CancelHold(decoded(id)),
            ["reservations", id, "extend"] => Route::ExtendHold(decoded(id)),
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["metrics"] => Route::Metrics,
            _ => Route::Unmatched,
        }
    }

    pub fn template(&self) -> &'static str {
        match self {
            Route::Buy => "/buy",
            Route::Sales => "/sales",
            Route::Sale(_) => "/sales/{id}",
            Route::Reservation(_) => "/reservations/{id}",
            Route::ConfirmHold(_) => "/reservations/{id}/confirm",
            Route::CancelHold(_) => "/reservations/{id}/cancel",
            Route::ExtendHold(_) => "/reservations/{id}/extend",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Unmatched => "unmatched",
        }
    }
}

pub async fn dispatch(state: AppState, req: Request<Incoming>) -> Response {
    let started = Instant::now();
    let route = Route::parse(req.uri().path());
    let method = req.method().clone();
    let result = match (&route, &method) {
        (Route::Buy, &Method::POST) => routes::buy::buy(&state, req).await,
        (Route::Buy, _) => Err(ApiError::MethodNotAllowed("POST")),
        (Route::Sales, &Method::POST) => routes::sales::create(&state, req).await,
        (Route::Sales, _) => Err(ApiError::MethodNotAllowed("POST")),
        (Route::ConfirmHold(id), &Method::POST) => routes::holds::confirm(&state, req, id).await,
        (Route::CancelHold(id), &Method::POST) => routes::holds::cancel(&state, req, id).await,
        (Route::ExtendHold(id), &Method::POST) => routes::holds::extend(&state, req, id).await,
        (Route::ConfirmHold(_) | Route::CancelHold(_) | Route::ExtendHold(_), _) => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        (Route::Sale(id), &Method::GET) => routes::sales::show(&state, id).await,
        (Route::Reservation(id), &Method::GET) => routes::reservations::show(&state, id).await,
        (Route::Healthz, &Method::GET) => Ok(routes::health::healthz()),
        (Route::Readyz, &Method::GET) => routes::health::readyz(&state).await,
        (Route::Metrics, &Method::GET) => Ok(routes::health::metrics(&state)),
        (
            Route::Sale(_)
            | Route::Reservation(_)
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics,
            _,
        ) => Err(ApiError::MethodNotAllowed("GET")),
        (Route::Unmatched, _) => Err(ApiError::NotFound),
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    metrics::record_request(
        route.template(),
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let spec = include_str!("../openapi.yaml");
        for path in [
            "/buy",
            "/sales",
            "/sales/x",
            "/reservations/x",
            "/reservations/x/confirm",
            "/reservations/x/cancel",
            "/reservations/x/extend",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            let template = Route::parse(path).template();
            assert!(
                spec.contains(&format!("\n  {template}:\n")),
                "openapi.yaml has no path `{template}`"
            );
        }
    }

    #[test]
    fn routes_label_by_template_not_path() {
        assert_eq!(
            Route::parse("/reservations/abc").template(),
            "/reservations/{id}"
        );
        assert_eq!(Route::parse("/sales/s1").template(), "/sales/{id}");
        assert_eq!(
            Route::parse("/reservations/abc/confirm").template(),
            "/reservations/{id}/confirm"
        );
        assert_eq!(
            Route::parse("/reservations/abc/cancel"),
            Route::CancelHold("abc".into())
        );
        assert_eq!(
            Route::parse("/reservations/abc/extend").template(),
            "/reservations/{id}/extend"
        );
        assert_eq!(
            Route::parse("/reservations/abc/refund").template(),
            "unmatched"
        );
        assert_eq!(Route::parse("/buy").template(), "/buy");
        assert_eq!(Route::parse("/buy/extra").template(), "unmatched");
        assert_eq!(Route::parse("/").template(), "unmatched");
    }

    #[test]
    fn ids_in_paths_are_percent_decoded() {
        assert_eq!(Route::parse("/sales/s%3A1"), Route::Sale("s:1".into()));
        assert_eq!(Route::parse("/sales/a%20b"), Route::Sale("a b".into()));
        assert_eq!(Route::parse("/sales/%FF"), Route::Sale("\u{FFFD}".into()));
    }
}
