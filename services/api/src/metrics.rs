//! The API's metric names and the helpers that record them.
//!
//! Labels are closed sets: the route *template* (never the raw path), the method from a
//! fixed list, the status code, the reservation outcome. Recorded by the dispatcher
//! after the response exists, so error paths keep their route label.

use std::time::Duration;

use hyper::Method;

pub const HTTP_REQUESTS: &str = "yoink_http_requests_total";
pub const HTTP_DURATION: &str = "yoink_http_request_duration_seconds";
pub const RESERVATIONS: &str = "yoink_reservations_total";
pub const RESERVE_IN_FLIGHT: &str = "yoink_reserve_in_flight";
/// Buys answered 409 `sold_out` from this instance's memory of a recent refusal,
/// without a script call (also counted in `yoink_reservations_total`).
pub const SOLD_OUT_LOCAL: &str = "yoink_sold_out_answered_locally_total";

/// Methods outside the usual set share one label value, keeping the label closed.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn record_request(route: &'static str, method: &Method, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method_label(method).to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

pub fn record_reservation(outcome: &'static str) {
    metrics::counter!(RESERVATIONS, "outcome" => outcome).increment(1);
}

pub fn set_in_flight(in_flight: usize) {
    metrics::gauge!(RESERVE_IN_FLIGHT).set(in_flight as f64);
}
