//! The API's metric names, their HELP text, and the helpers that record them.
//!
//! Labels are closed sets: the route *template* (never the raw path), the method from a
//! fixed list, the status code, the reservation outcome, and the sale, bounded
//! (`SaleLabels`): a sale id becomes a label only once the sale is known to exist, at
//! most `MAX_SALE_LABELS` of them per process; the rest share `other`, and ids of no
//! known sale share `unknown`. A raw string from a request is never a label value.
//! Recorded by the dispatcher after the response exists, so error paths keep their
//! route label. Every counter and histogram of a known label set exists, at zero, from
//! `install` on, so the first event already shows as an increase.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hyper::Method;
use metrics::{
    Counter, Gauge, Histogram, Unit, describe_counter, describe_gauge, describe_histogram,
};
use metrics_exporter_prometheus::PrometheusHandle;
use yoink_core::ids::SaleTag;
use yoink_core::{SaleId, scripts, telemetry};

use crate::config::MetricsSwitch;
use crate::durability;
use crate::error::ApiError;
use crate::sale_index::SaleIndex;

pub const HTTP_REQUESTS: &str = "yoink_http_requests_total";
pub const HTTP_DURATION: &str = "yoink_http_request_duration_seconds";
/// Buys by outcome (`reserved`, `replayed`, or the error code the buyer saw) and sale.
pub const RESERVATIONS: &str = "yoink_reservations_total";
pub const RESERVE_IN_FLIGHT: &str = "yoink_reserve_in_flight";
/// Buys answered 409 `sold_out` from this instance's memory of a recent refusal,
/// without a script call (also counted in `yoink_reservations_total`).
pub const SOLD_OUT_LOCAL: &str = "yoink_sold_out_answered_locally_total";

/// Most sales with a `sale` label of their own in one API process. A sale labelled stays
/// labelled for the life of the process (its series would otherwise vanish mid-sale);
/// past this many, further sales are counted under `sale="other"`. 13 outcomes a sale:
/// at most 2,600 series from this counter.
pub const MAX_SALE_LABELS: usize = 200;
/// The `sale` label of a buy naming no sale this instance knows to exist.
pub const UNKNOWN_SALE_LABEL: &str = "unknown";
/// The `sale` label of the sales past `MAX_SALE_LABELS`.
pub const OTHER_SALES_LABEL: &str = "other";

/// Every `outcome` of `yoink_reservations_total`: `reserved`, `replayed`, and each
/// error code a buy can answer (`ApiError::code`).
pub const OUTCOMES: [&str; 13] = [
    "reserved",
    "replayed",
    "sold_out",
    "limit_exceeded",
    "sale_closed",
    "sale_recovering",
    "idempotency_key_reused",
    "invalid_request",
    "unknown_sale",
    "overloaded",
    "unavailable",
    "not_durable",
    "internal",
];

/// The outcomes that only a script that found the sale can give: proof that it exists.
const FOUND_THE_SALE: [&str; 7] = [
    "reserved",
    "replayed",
    "sold_out",
    "limit_exceeded",
    "sale_closed",
    "sale_recovering",
    "idempotency_key_reused",
];

/// Each route's method and the statuses it answers in normal operation, whose request
/// counters exist from the start (a status met later is born at its first request).
const ROUTES: &[(&str, &str, &[u16])] = &[
    (
        "/buy",
        "POST",
        &[202, 400, 403, 404, 409, 413, 422, 429, 500, 503],
    ),
    ("/sales", "POST", &[201, 400, 401, 403, 409, 500, 503]),
    ("/sales/{id}", "GET", &[200, 400, 404, 500, 503]),
    ("/reservations/{id}", "GET", &[200, 400, 404, 500, 503]),
    (
        "/reservations/{id}/confirm",
        "POST",
        &[200, 400, 401, 403, 404, 409, 500, 503],
    ),
    (
        "/reservations/{id}/cancel",
        "POST",
        &[200, 400, 401, 403, 404, 409, 500, 503],
    ),
    (
        "/reservations/{id}/extend",
        "POST",
        &[200, 400, 401, 403, 404, 409, 500, 503],
    ),
    ("/healthz", "GET", &[200]),
    ("/readyz", "GET", &[200, 503]),
    ("/metrics", "GET", &[200]),
    ("unmatched", "GET", &[404]),
];

/// Installs the process's recorder (or, with `--metrics off`, none: every metric call
/// is then a no-op and `/metrics` an empty page), describes the API's metrics and
/// creates their known series at zero. The handle renders `/metrics`.
pub fn install(switch: MetricsSwitch) -> PrometheusHandle {
    if switch == MetricsSwitch::Off {
        if !telemetry::disable() {
            tracing::warn!(
                "--metrics off came too late: the metrics listener installed the recorder first (add --metrics-listen off)."
            );
        }
        return telemetry::prometheus();
    }
    let handle = telemetry::prometheus();
    describe();
    // The first install wins: a second one in the same process (tests) shares the
    // process's one recorder.
    let _ = HOT.set(register());
    sale_labels();
    telemetry::watch_runtime();
    handle
}

/// HELP text for every metric the API records.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template, method and status."
    );
    describe_counter!(
        RESERVATIONS,
        "POST /buy outcomes (reserved, replayed, or the error code the buyer saw), by sale: a sale's id once it is known to exist (at most 200 per process, then \"other\"), else \"unknown\"."
    );
    describe_gauge!(
        RESERVE_IN_FLIGHT,
        "Reserve script calls in flight (bounded by --max-in-flight; at the bound /buy answers 503)."
    );
    describe_counter!(
        SOLD_OUT_LOCAL,
        "Buys answered 409 sold_out from this instance's memory of a recent sell-out, without a Redis call."
    );
    describe_counter!(
        durability::WAITS,
        "Group-committed Redis WAITs of --durability replica, by outcome (acked, timeout)."
    );
    describe_histogram!(
        durability::WAIT_SECONDS,
        Unit::Seconds,
        "Time one group-committed WAIT took (--durability replica)."
    );
    describe_gauge!(
        durability::SATISFIED,
        "1 while Redis's persistence settings give the --durability level asked for, else 0."
    );
}

/// The series every request touches, made once by `register`: recording a request of a
/// known route and status is a map lookup, with no label strings built and no lookup in
/// the recorder's registry (the sold-out fast path answers tens of thousands a second).
struct HotSeries {
    requests: HashMap<(&'static str, &'static str, u16), RequestSeries>,
    in_flight: Gauge,
    sold_out_local: Counter,
}

struct RequestSeries {
    count: Counter,
    duration: Histogram,
}

static HOT: OnceLock<HotSeries> = OnceLock::new();

fn request_series(route: &'static str, method: &'static str, status: u16) -> RequestSeries {
    let labels: [(&str, metrics::SharedString); 3] = [
        ("route", route.into()),
        ("method", method.into()),
        ("status", status_label(status)),
    ];
    RequestSeries {
        count: metrics::counter!(HTTP_REQUESTS, &labels),
        duration: metrics::histogram!(HTTP_DURATION, &labels),
    }
}

/// A status code as a label value without allocating for the usual ones.
fn status_label(status: u16) -> metrics::SharedString {
    match status {
        200 => "200".into(),
        201 => "201".into(),
        202 => "202".into(),
        404 => "404".into(),
        409 => "409".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

/// Creates the known series at zero: requests by route and status, the durability
/// waits, hold confirm times (the reservation outcomes: `SaleLabels::new`). Returns the
/// hot ones' handles, which only `install` keeps (they belong to the recorder current
/// here, and only `install`'s is the process's).
fn register() -> HotSeries {
    let mut requests = HashMap::new();
    for (route, method, statuses) in ROUTES {
        for status in *statuses {
            let series = request_series(route, method, *status);
            series.count.increment(0);
            requests.insert((*route, *method, *status), series);
        }
    }
    let hot = HotSeries {
        requests,
        in_flight: metrics::gauge!(RESERVE_IN_FLIGHT),
        sold_out_local: metrics::counter!(SOLD_OUT_LOCAL),
    };
    hot.in_flight.set(0.0);
    hot.sold_out_local.increment(0);
    for outcome in ["acked", "timeout"] {
        metrics::counter!(durability::WAITS, "outcome" => outcome).increment(0);
    }
    let _ = metrics::histogram!(durability::WAIT_SECONDS);
    // Recorded by this process's hold confirms (POST /reservations/{id}/confirm): born at
    // zero, so the first confirm is a rise a rate() can see.
    let _ = metrics::histogram!(yoink_core::holds::CONFIRM_SECONDS);
    hot
}

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
    let method = method_label(method);
    let record = |series: &RequestSeries| {
        series.count.increment(1);
        series.duration.record(elapsed.as_secs_f64());
    };
    match HOT
        .get()
        .and_then(|hot| hot.requests.get(&(route, method, status)))
    {
        Some(series) => record(series),
        // A status no route lists (or the recorder off): born at its first request.
        None => record(&request_series(route, method, status)),
    }
}

/// Counts a buy answered `sold_out` from this instance's memory.
pub fn sold_out_answered_locally() {
    match HOT.get() {
        Some(hot) => hot.sold_out_local.increment(1),
        None => metrics::counter!(SOLD_OUT_LOCAL).increment(1),
    }
}

/// The `yoink_reservations_total` outcome of a buy: `reserved` or `replayed` for a
/// success, else the error code the buyer sees (one vocabulary for both).
pub fn outcome_label(outcome: &Result<scripts::Reservation, ApiError>) -> &'static str {
    match outcome {
        Ok(r) if r.fresh => "reserved",
        Ok(_) => "replayed",
        Err(err) => err.code(),
    }
}

/// Counts one buy of `sale` under its outcome and the sale's bounded label.
pub fn record_reservation(
    sale: &SaleId,
    outcome: &Result<scripts::Reservation, ApiError>,
    index: &SaleIndex,
) {
    sale_labels().count(sale, outcome_label(outcome), index);
}

pub fn set_in_flight(in_flight: usize) {
    match HOT.get() {
        Some(hot) => hot.in_flight.set(in_flight as f64),
        None => metrics::gauge!(RESERVE_IN_FLIGHT).set(in_flight as f64),
    }
}

/// The process's sale labels, made on first use (after the recorder, by `install`).
fn sale_labels() -> &'static SaleLabels {
    static LABELS: OnceLock<SaleLabels> = OnceLock::new();
    LABELS.get_or_init(|| SaleLabels::new(MAX_SALE_LABELS))
}

/// The reservation counters of one `sale` label value, one per outcome.
type OutcomeCounters = Arc<[Counter; OUTCOMES.len()]>;

fn outcome_counters(sale: &str) -> OutcomeCounters {
    Arc::new(OUTCOMES.map(|outcome| {
        let counter =
            metrics::counter!(RESERVATIONS, "outcome" => outcome, "sale" => sale.to_owned());
        counter.increment(0);
        counter
    }))
}

/// Which sales have a `sale` label of their own, with their counters (a buy costs a
/// read lock and a map lookup, no label allocation). A sale gets one when a buy's
/// outcome shows the sale exists (the script found it) or the sale index knows it, and
/// fewer than `cap` sales have one; its counters and the API's rollback counter exist
/// at zero from then on.
pub struct SaleLabels {
    cap: usize,
    labelled: RwLock<HashMap<SaleId, OutcomeCounters>>,
    unknown: OutcomeCounters,
    other: OutcomeCounters,
}

impl SaleLabels {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            labelled: RwLock::new(HashMap::new()),
            unknown: outcome_counters(UNKNOWN_SALE_LABEL),
            other: outcome_counters(OTHER_SALES_LABEL),
        }
    }

    /// Counts one buy.
    pub fn count(&self, sale: &SaleId, outcome: &str, index: &SaleIndex) {
        let slot = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            // Every code a buy can answer is listed (a test holds it); an unlisted one
            // would be a new fault, counted as one.
            .unwrap_or(OUTCOMES.len() - 1);
        // The common case, a labelled sale: counted under the read lock, nothing cloned.
        if outcome != "unknown_sale"
            && let Some(known) = self.read().get(sale)
        {
            known[slot].increment(1);
            return;
        }
        self.counters(sale, outcome, index)[slot].increment(1);
    }

    /// The counters of `sale`'s label, labelling it when it qualifies.
    fn counters(&self, sale: &SaleId, outcome: &str, index: &SaleIndex) -> OutcomeCounters {
        if outcome == "unknown_sale" {
            return self.unknown.clone();
        }
        let exists =
            FOUND_THE_SALE.contains(&outcome) || index.candidates(SaleTag::of(sale)).contains(sale);
        if !exists {
            return self.unknown.clone();
        }
        let mut labelled = self
            .labelled
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = labelled.get(sale) {
            return known.clone();
        }
        if labelled.len() >= self.cap {
            return self.other.clone();
        }
        let counters = outcome_counters(sale.as_str());
        metrics::counter!(telemetry::ROLLBACKS_DETECTED, "sale" => sale.to_string(), "by" => "api")
            .increment(0);
        labelled.insert(sale.clone(), counters.clone());
        counters
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SaleId, OutcomeCounters>> {
        // Each update is one insert: a panic cannot leave the map half written.
        self.labelled
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yoink_core::scripts::ReserveError;
    use yoink_testkit::metric_value;

    fn sale(id: &str) -> SaleId {
        SaleId::parse(id).expect("a valid sale id")
    }

    #[test]
    fn every_outcome_a_buy_can_answer_is_a_listed_label() {
        let errors = [
            ReserveError::SaleRecovering {
                suspended_now: false,
            },
            ReserveError::UnknownSale,
            ReserveError::SaleClosed,
            ReserveError::LimitExceeded,
            ReserveError::SoldOut,
            ReserveError::IdempotencyMismatch,
            ReserveError::BadQuantity,
        ];
        let mut codes: Vec<&str> = errors
            .into_iter()
            .map(|e| ApiError::from(e).code())
            .collect();
        codes.extend(
            [
                ApiError::Overloaded,
                ApiError::NotDurable(None),
                ApiError::Unavailable("x".into()),
                ApiError::Internal("x".into()),
                ApiError::SoldOut,
            ]
            .iter()
            .map(ApiError::code),
        );
        for code in codes {
            assert!(OUTCOMES.contains(&code), "{code} is not in OUTCOMES");
        }
        for found in FOUND_THE_SALE {
            assert!(OUTCOMES.contains(&found), "{found}");
        }
    }

    #[test]
    fn describe_and_register_give_help_text_and_zeroed_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let _ = register();
            SaleLabels::new(2);
        });
        let page = handle.render();
        for help in [
            "# HELP yoink_http_requests_total ",
            "# HELP yoink_http_request_duration_seconds ",
            "# HELP yoink_reservations_total ",
            "# HELP yoink_sold_out_answered_locally_total ",
        ] {
            assert!(page.contains(help), "{help:?} missing from:\n{page}");
        }
        for series in [
            r#"yoink_http_requests_total{route="/buy",method="POST",status="500"}"#,
            r#"yoink_http_requests_total{route="/buy",method="POST",status="202"}"#,
            r#"yoink_http_request_duration_seconds_count{route="/buy",method="POST",status="503"}"#,
            r#"yoink_reservations_total{outcome="unknown_sale",sale="unknown"}"#,
            r#"yoink_reservations_total{outcome="reserved",sale="other"}"#,
            "yoink_sold_out_answered_locally_total",
        ] {
            assert_eq!(
                metric_value(&page, series),
                Some(0.0),
                "{series} in:\n{page}"
            );
        }
    }

    #[test]
    fn a_sale_is_labelled_once_it_exists_and_up_to_the_cap() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let index = SaleIndex::default();
        index.learn([&sale("indexed")]);
        metrics::with_local_recorder(&recorder, || {
            let labels = SaleLabels::new(2);
            // Never seen, and no proof it exists: unknown, even for a 503.
            labels.count(&sale("made-up"), "overloaded", &index);
            labels.count(&sale("made-up"), "unknown_sale", &index);
            // The script found it: labelled, all its outcomes at zero from then on.
            labels.count(&sale("s1"), "sold_out", &index);
            labels.count(&sale("s1"), "overloaded", &index);
            // Known to the sale index: labelled on a 503 too.
            labels.count(&sale("indexed"), "unavailable", &index);
            // Past the cap of 2: other.
            labels.count(&sale("s3"), "reserved", &index);
        });
        let page = handle.render();
        for (series, value) in [
            (
                r#"yoink_reservations_total{outcome="overloaded",sale="unknown"}"#,
                1.0,
            ),
            (
                r#"yoink_reservations_total{outcome="unknown_sale",sale="unknown"}"#,
                1.0,
            ),
            (
                r#"yoink_reservations_total{outcome="sold_out",sale="s1"}"#,
                1.0,
            ),
            (
                r#"yoink_reservations_total{outcome="overloaded",sale="s1"}"#,
                1.0,
            ),
            (
                r#"yoink_reservations_total{outcome="reserved",sale="s1"}"#,
                0.0,
            ),
            (
                r#"yoink_reservations_total{outcome="unavailable",sale="indexed"}"#,
                1.0,
            ),
            (
                r#"yoink_reservations_total{outcome="reserved",sale="other"}"#,
                1.0,
            ),
            (
                r#"yoink_redis_rollbacks_detected_total{sale="s1",by="api"}"#,
                0.0,
            ),
        ] {
            assert_eq!(
                metric_value(&page, series),
                Some(value),
                "{series} in:\n{page}"
            );
        }
        assert!(!page.contains("made-up"), "an unproven id is never a label");
        assert!(!page.contains(r#"sale="s3""#), "past the cap: other");
    }
}
