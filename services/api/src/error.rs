//! The one place that turns an error into an HTTP response.
//!
//! Every variant maps to one status and one JSON `error` code from a closed set; the
//! body is `{"error": code, "detail"?: text}`. 5xx bodies never show internals: their
//! cause is logged here, once. Handlers return `ApiError` and never build error
//! responses themselves.
//!
//! Only faults (500 `internal`) are logged at ERROR, every time. A 503 is a designed
//! refusal (overload, a store down, a sale recovering): at peak there is one per
//! rejected buyer, so it is counted in metrics and logged at WARN at most once per
//! `REFUSAL_LOG_INTERVAL` per code, never one line per request.

use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde_json::json;
use yoink_core::ReservationId;
use yoink_core::db::{self, DbError};
use yoink_core::holds::HoldError;
use yoink_core::ledger::LedgerError;
use yoink_core::redis_store;
use yoink_core::sales::SaleError;
use yoink_core::scripts::ReserveError;

use crate::body::{BodyError, MAX_BODY};
use crate::log_limiter::{LogLimiter, REFUSAL_LOG_INTERVAL};
use crate::response::{Response, json_response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 invalid_request
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 unauthorized
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 403 admin_disabled
    #[error("admin endpoints are disabled: set YOINK_ADMIN_TOKEN to enable them")]
    AdminDisabled,
    /// 403 checkout_disabled
    #[error(
        "checkout endpoints are disabled: set YOINK_CHECKOUT_TOKEN (or YOINK_ADMIN_TOKEN) to enable them"
    )]
    CheckoutDisabled,
    /// 403 sale_closed
    #[error("the sale is not open")]
    SaleClosed,
    /// 404 not_found
    #[error("no such route")]
    NotFound,
    /// 404 unknown_sale
    #[error("no such sale")]
    UnknownSale,
    /// 404 unknown_reservation
    #[error("no such reservation")]
    UnknownReservation,
    /// 405 method_not_allowed
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// 409 sold_out
    #[error("sold out")]
    SoldOut,
    /// 409 sale_exists
    #[error("a sale with this id exists; its stock was not changed")]
    SaleExists,
    /// 409 not_a_hold: its sale has no holds, or PostgreSQL decided it without one
    #[error(
        "this reservation is not a hold (its sale has no hold_seconds): it becomes an order by itself; GET /reservations/ID shows its fate"
    )]
    NotAHold,
    /// 409 hold_expired
    #[error("the hold expired before it was confirmed; its units went back on sale")]
    HoldExpired,
    /// 409 hold_cancelled
    #[error("the hold was cancelled; its units went back on sale")]
    HoldCancelled,
    /// 409 hold_confirmed
    #[error("the hold was confirmed: it is an order")]
    HoldConfirmed,
    /// 409 hold_extension_limit
    #[error(
        "the hold already expires at its limit, {expires_at}: max_hold_seconds ({max_hold_seconds}) after its reservation"
    )]
    HoldExtensionLimit {
        expires_at: String,
        max_hold_seconds: i64,
    },
    /// 413 payload_too_large
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422 idempotency_key_reused
    #[error("this Idempotency-Key was used for another user or quantity")]
    IdempotencyKeyReused,
    /// 429 limit_exceeded
    #[error("per-user limit reached for this sale")]
    LimitExceeded,
    /// 503 overloaded: too many reserve calls in flight; retry after a second
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    /// 503 sale_recovering: Redis went back in time and the sale is suspended until it
    /// is rebuilt from PostgreSQL; nothing was taken
    #[error("the sale is suspended until Redis is rebuilt from PostgreSQL")]
    SaleRecovering,
    /// 503 not_durable: the reservation (if any) stands, but Redis could not make it as
    /// durable as `--durability` asks; a retry with the same Idempotency-Key returns it
    #[error("the reservation is not durable yet")]
    NotDurable(Option<ReservationId>),
    /// 503 unavailable: a store is down
    #[error("{0}")]
    Unavailable(String),
    /// 503 unavailable, with the `reservation_id`: Redis did not answer the reserve
    /// call nor its retry in time, so the reservation may stand or not; a retry with
    /// the same Idempotency-Key (or `GET /reservations/{id}`) resolves it
    #[error("{cause} (reservation {reservation_id} may stand)")]
    ReplyLost {
        reservation_id: ReservationId,
        cause: String,
    },
    /// 500 internal
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            AdminDisabled | CheckoutDisabled => StatusCode::FORBIDDEN,
            NotFound | UnknownSale | UnknownReservation => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            SoldOut
            | SaleClosed
            | SaleExists
            | NotAHold
            | HoldExpired
            | HoldCancelled
            | HoldConfirmed
            | HoldExtensionLimit { .. } => StatusCode::CONFLICT,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Overloaded | SaleRecovering | NotDurable(_) | Unavailable(_) | ReplyLost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            Unauthorized => "unauthorized",
            AdminDisabled => "admin_disabled",
            CheckoutDisabled => "checkout_disabled",
            SaleClosed => "sale_closed",
            NotFound => "not_found",
            UnknownSale => "unknown_sale",
            UnknownReservation => "unknown_reservation",
            MethodNotAllowed(_) => "method_not_allowed",
            SoldOut => "sold_out",
            SaleExists => "sale_exists",
            NotAHold => "not_a_hold",
            HoldExpired => "hold_expired",
            HoldCancelled => "hold_cancelled",
            HoldConfirmed => "hold_confirmed",
            HoldExtensionLimit { .. } => "hold_extension_limit",
            PayloadTooLarge(_) => "payload_too_large",
            IdempotencyKeyReused => "idempotency_key_reused",
            LimitExceeded => "limit_exceeded",
            Overloaded => "overloaded",
            SaleRecovering => "sale_recovering",
            NotDurable(_) => "not_durable",
            Unavailable(_) | ReplyLost { .. } => "unavailable",
            Internal(_) => "internal",
        }
    }

    /// The reservation a 503 leaves standing (or possibly standing): the client needs
    /// its id to follow it, so it is not an internal to hide.
    fn reservation_id(&self) -> Option<ReservationId> {
        match self {
            ApiError::NotDurable(id) => *id,
            ApiError::ReplyLost { reservation_id, .. } => Some(*reservation_id),
            _ => None,
        }
    }

    /// Logs a fault every time and a refusal at most once per interval per code.
    fn log(&self) {
        static OVERLOADED: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
        static UNAVAILABLE: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
        static SALE_RECOVERING: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
        static NOT_DURABLE: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
        let limiter = match self {
            ApiError::Internal(_) => {
                tracing::error!(code = self.code(), error = %self, "Request failed.");
                return;
            }
            ApiError::Overloaded => &OVERLOADED,
            ApiError::Unavailable(_) | ApiError::ReplyLost { .. } => &UNAVAILABLE,
            ApiError::SaleRecovering => &SALE_RECOVERING,
            ApiError::NotDurable(_) => &NOT_DURABLE,
            // The client's own mistake, told in the answer's detail: not a log line.
            ApiError::InvalidRequest(_)
            | ApiError::Unauthorized
            | ApiError::AdminDisabled
            | ApiError::CheckoutDisabled
            | ApiError::SaleClosed
            | ApiError::NotFound
            | ApiError::UnknownSale
            | ApiError::UnknownReservation
            | ApiError::MethodNotAllowed(_)
            | ApiError::SoldOut
            | ApiError::SaleExists
            | ApiError::NotAHold
            | ApiError::HoldExpired
            | ApiError::HoldCancelled
            | ApiError::HoldConfirmed
            | ApiError::HoldExtensionLimit { .. }
            | ApiError::PayloadTooLarge(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::LimitExceeded => return,
        };
        if let Some(skipped) = limiter.admit() {
            tracing::warn!(
                code = self.code(),
                error = %self,
                more = skipped.count,
                over_secs = skipped.over.as_secs(),
                "Refused with 503 (this line stands for `more` others in the last `over_secs` s; yoink_http_requests_total counts them all)."
            );
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        self.log();
        let body = if let Some(id) = self.reservation_id() {
            json!({ "error": self.code(), "reservation_id": id })
        } else if status.is_server_error() {
            json!({ "error": self.code() })
        } else {
            json!({ "error": self.code(), "detail": self.to_string() })
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            ApiError::Overloaded
            | ApiError::Unavailable(_)
            | ApiError::ReplyLost { .. }
            | ApiError::SaleRecovering
            | ApiError::NotDurable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized => {
                headers.insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            _ => {}
        }
        response
    }

    pub fn redis(err: redis::RedisError) -> Self {
        if redis_store::is_unavailable(&err) {
            ApiError::Unavailable(format!("Redis: {err}"))
        } else {
            ApiError::Internal(format!("Redis: {err}"))
        }
    }

    pub fn db(err: DbError) -> Self {
        if db::is_unavailable(&err) {
            ApiError::Unavailable(format!("PostgreSQL: {err}"))
        } else {
            ApiError::Internal(format!("PostgreSQL: {err}"))
        }
    }
}

impl From<ReserveError> for ApiError {
    fn from(err: ReserveError) -> Self {
        match err {
            ReserveError::SaleRecovering { .. } => ApiError::SaleRecovering,
            ReserveError::UnknownSale => ApiError::UnknownSale,
            ReserveError::SaleClosed => ApiError::SaleClosed,
            ReserveError::LimitExceeded => ApiError::LimitExceeded,
            ReserveError::SoldOut => ApiError::SoldOut,
            ReserveError::IdempotencyMismatch => ApiError::IdempotencyKeyReused,
            ReserveError::BadQuantity => ApiError::InvalidRequest(err.to_string()),
            ReserveError::Unavailable(e) => ApiError::Unavailable(format!("Redis: {e}")),
            ReserveError::Unexpected(e) => ApiError::Internal(format!("Redis: {e}")),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::TooLarge => ApiError::PayloadTooLarge(MAX_BODY),
            BodyError::Unreadable(_) | BodyError::Empty | BodyError::BadJson(_) => {
                ApiError::InvalidRequest(err.to_string())
            }
        }
    }
}

impl From<SaleError> for ApiError {
    fn from(err: SaleError) -> Self {
        match err {
            SaleError::Exists => ApiError::SaleExists,
            SaleError::Invalid(why) => ApiError::InvalidRequest(why.to_owned()),
            SaleError::Unknown => ApiError::UnknownSale,
            SaleError::Recovering => ApiError::SaleRecovering,
            SaleError::Redis(e) => ApiError::redis(e),
            SaleError::Db(e) => ApiError::db(e),
        }
    }
}

impl From<HoldError> for ApiError {
    fn from(err: HoldError) -> Self {
        match err {
            HoldError::Ledger(LedgerError::Pool(e)) => ApiError::db(DbError::Pool(e)),
            HoldError::Ledger(LedgerError::Postgres(e)) => ApiError::db(DbError::Query(e)),
            HoldError::Ledger(e @ LedgerError::Refused(_)) => ApiError::Internal(e.to_string()),
            HoldError::Redis(e) if e.code() == Some("SALE_RECOVERING") => ApiError::SaleRecovering,
            HoldError::Redis(e) => ApiError::redis(e),
            e @ HoldError::Unreadable(..) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        ApiError::db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ApiError::db(DbError::Pool(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_error_is_4xx_and_every_outage_503() {
        let cases = [
            (ApiError::InvalidRequest("x".into()), 400, "invalid_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::AdminDisabled, 403, "admin_disabled"),
            (ApiError::CheckoutDisabled, 403, "checkout_disabled"),
            (ApiError::SaleClosed, 409, "sale_closed"),
            (ApiError::UnknownSale, 404, "unknown_sale"),
            (ApiError::UnknownReservation, 404, "unknown_reservation"),
            (ApiError::SoldOut, 409, "sold_out"),
            (ApiError::NotAHold, 409, "not_a_hold"),
            (ApiError::HoldExpired, 409, "hold_expired"),
            (ApiError::HoldCancelled, 409, "hold_cancelled"),
            (ApiError::HoldConfirmed, 409, "hold_confirmed"),
            (
                ApiError::HoldExtensionLimit {
                    expires_at: "2026-11-27T08:05:00.000Z".into(),
                    max_hold_seconds: 300,
                },
                409,
                "hold_extension_limit",
            ),
            (ApiError::PayloadTooLarge(4096), 413, "payload_too_large"),
            (ApiError::LimitExceeded, 429, "limit_exceeded"),
            (ApiError::Overloaded, 503, "overloaded"),
            (ApiError::SaleRecovering, 503, "sale_recovering"),
            (ApiError::NotDurable(None), 503, "not_durable"),
            (ApiError::Unavailable("x".into()), 503, "unavailable"),
            (
                ApiError::ReplyLost {
                    reservation_id: ReservationId::new(),
                    cause: "x".into(),
                },
                503,
                "unavailable",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn hold_errors_of_a_store_down_or_a_sale_recovering_are_503() {
        let redis_down = HoldError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        let pool = HoldError::Ledger(LedgerError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        )));
        let recovering = HoldError::Redis(redis::make_extension_error(
            "SALE_RECOVERING".into(),
            Some("the sale is suspended".into()),
        ));
        for (err, code) in [
            (redis_down, "unavailable"),
            (pool, "unavailable"),
            (recovering, "sale_recovering"),
        ] {
            let err = ApiError::from(err);
            assert_eq!((err.status().as_u16(), err.code()), (503, code), "{err:?}");
        }
        let unreadable = ApiError::from(HoldError::Unreadable(ReservationId::new(), "x".into()));
        assert_eq!(unreadable.code(), "internal");
    }

    #[test]
    fn server_errors_hide_their_cause() {
        let response = ApiError::Internal("password=hunter2".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = crate::response::body_text(&response);
        assert!(!body.contains("hunter2"), "{body}");
    }

    #[test]
    fn overload_tells_the_client_when_to_retry() {
        let response = ApiError::Overloaded.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn a_recovering_sale_and_a_reservation_not_durable_yet_tell_when_to_retry() {
        let response = ApiError::SaleRecovering.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let id = ReservationId::new();
        let response = ApiError::NotDurable(Some(id)).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body = crate::response::body_text(&response);
        assert!(body.contains(&id.to_string()), "{body}");
    }

    #[test]
    fn a_buy_whose_replies_were_lost_names_its_reservation_and_when_to_retry() {
        let id = ReservationId::new();
        let response = ApiError::ReplyLost {
            reservation_id: id,
            cause: "Redis: reserve call timed out".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body: serde_json::Value =
            serde_json::from_str(&crate::response::body_text(&response)).expect("JSON body");
        assert_eq!(
            body,
            json!({"error": "unavailable", "reservation_id": id.to_string()})
        );
    }

    #[test]
    fn body_errors_keep_their_status_and_detail() {
        let too_large = ApiError::from(BodyError::TooLarge);
        assert_eq!(too_large.code(), "payload_too_large");
        assert_eq!(too_large.to_string(), "body larger than 4096 bytes");
        let empty = ApiError::from(BodyError::Empty);
        assert_eq!(
            (empty.code(), empty.to_string().as_str()),
            ("invalid_request", "body must be a JSON object")
        );
    }

    /// Everything `f` logs, as text lines, whatever the level.
    fn logged_by<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let logs = yoink_testkit::logs::capture();
        let out = f();
        (out, logs.lines())
    }

    #[test]
    fn a_thousand_overloaded_answers_log_a_handful_of_lines_and_none_at_error() {
        let (statuses, lines) = logged_by(|| {
            (0..1_000)
                .map(|_| ApiError::Overloaded.into_response().status())
                .collect::<Vec<_>>()
        });
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
        );
        // Other tests may share the once-per-interval slot, so the first line may
        // have gone to them: at most a handful, never one per buyer.
        assert!(
            lines.len() <= 2,
            "{} lines: {:?}",
            lines.len(),
            &lines[..3.min(lines.len())]
        );
        assert!(lines.iter().all(|l| !l.contains("ERROR")), "{lines:?}");
    }

    #[test]
    fn redis_down_is_not_logged_once_per_buyer_either() {
        let (_, lines) = logged_by(|| {
            for _ in 0..1_000 {
                ApiError::Unavailable("Redis: connection refused".into()).into_response();
            }
        });
        assert!(lines.len() <= 2, "{} lines", lines.len());
        assert!(lines.iter().all(|l| !l.contains("ERROR")), "{lines:?}");
    }

    #[test]
    fn a_real_fault_is_logged_at_error_every_time() {
        let (_, lines) = logged_by(|| {
            for _ in 0..3 {
                ApiError::Internal("Redis: unexpected reply".into()).into_response();
            }
        });
        assert_eq!(
            lines.iter().filter(|l| l.contains("ERROR")).count(),
            3,
            "{lines:?}"
        );
    }
}
