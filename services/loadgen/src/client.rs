//! The HTTP side of the load: one keep-alive hyper client shared by all buyers, and one
//! `POST /buy` turned into an [`Answer`].
//!
//! It must never panic or hang on what the network or the server does: a refused connection,
//! a timeout, an unreadable body and an unexpected status all become [`Answer::Other`] with a
//! short description, and every request is bounded by the request timeout.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::LoadError;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Bodies are short JSON; a larger one is a misbehaving server, not something to buffer.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a body an example keeps: enough to read the error code and detail.
const EXAMPLE_BODY_CHARS: usize = 200;

/// How long to wait, so that a dead or stuck server ends the load instead of hanging it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// For the TCP connect alone.
    pub connect: Duration,
    /// For one request, from sending it to the last byte of its answer (connect included).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// What one request came to, in the classes of [`crate::Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 202
    Accepted,
    /// 409 with `"error":"sold_out"`
    SoldOut,
    /// 503
    Unavailable,
    /// Anything else, described for the report's examples.
    Other(String),
}

/// One request's answer, and its latency if the server answered at all.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub answer: Answer,
    /// `None` for transport errors and timeouts, which have no answer to time.
    pub latency: Option<Duration>,
}

/// `{base_url}/buy`, checked to be plain HTTP with a host.
pub(crate) fn buy_uri(base_url: &str) -> Result<Uri, LoadError> {
    let joined = format!("{}/buy", base_url.trim_end_matches('/'));
    let uri: Uri = joined.parse().map_err(|source| LoadError::InvalidBaseUrl {
        base_url: base_url.to_owned(),
        source,
    })?;
    let plain_http = uri.scheme_str() == Some("http");
    if !plain_http || uri.authority().is_none() || uri.query().is_some() {
        return Err(LoadError::UnsupportedBaseUrl {
            base_url: base_url.to_owned(),
        });
    }
    Ok(uri)
}

/// A client whose pool keeps one idle keep-alive connection per buyer, so buyers reuse their
/// connections instead of reconnecting for each request.
pub(crate) fn build(buyers: usize, timeouts: &Timeouts) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    // Requests are small and latency is what we measure: do not let Nagle hold them back.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(buyers.max(1))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Sends one `POST /buy` for `user_id` and classifies the answer.
pub(crate) async fn buy(
    client: &HttpClient,
    uri: &Uri,
    sale_id: &str,
    user_id: &str,
    timeout: Duration,
) -> Outcome {
    let body = serde_json::json!({ "sale_id": sale_id, "user_id": user_id, "quantity": 1 });
    let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

    let sent_at = Instant::now();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("transport error: {}", chain(&err)))?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|err| format!("{} with an unreadable body: {}", parts.status, chain(&*err)))?
            .to_bytes();
        Ok::<_, String>((parts.status, bytes))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, body))) => Outcome {
            answer: classify(status, &body),
            latency: Some(sent_at.elapsed()),
        },
        Ok(Err(description)) => Outcome {
            answer: Answer::Other(description),
            latency: None,
        },
        Err(_) => Outcome {
            answer: Answer::Other(format!(
                "transport error: timed out after {}",
                DisplayDuration(timeout)
            )),
            latency: None,
        },
    }
}

/// The one place that decides what an answer counts as.
pub(crate) fn classify(status: StatusCode, body: &[u8]) -> Answer {
    match status {
        StatusCode::ACCEPTED => Answer::Accepted,
        StatusCode::SERVICE_UNAVAILABLE => Answer::Unavailable,
        StatusCode::CONFLICT if error_code(body).as_deref() == Some("sold_out") => Answer::SoldOut,
        _ => Answer::Other(describe(status, body)),
    }
}

/// The `error` field of a JSON error body, if there is one.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.as_str().map(str::to_owned)
}

/// `409 Conflict: {"error":"…"}`, the body cut short and made printable.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status.to_string();
    }
    let mut cut: String = text.chars().take(EXAMPLE_BODY_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{status}: {cut}")
}

/// An error and its sources, joined: hyper's own message ("client error (Connect)") alone
/// does not say what went wrong.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct DisplayDuration(Duration);

impl std::fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{} s", d.as_secs())
        } else {
            write!(f, "{} ms", d.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_409_counts_as_sold_out_only_with_the_sold_out_code() {
        let sold_out = classify(StatusCode::CONFLICT, br#"{"error":"sold_out"}"#);
        assert_eq!(sold_out, Answer::SoldOut);
        let spaced = classify(
            StatusCode::CONFLICT,
            br#"{ "error" : "sold_out", "detail": "x" }"#,
        );
        assert_eq!(spaced, Answer::SoldOut);
        let other = classify(StatusCode::CONFLICT, br#"{"error":"already_reserved"}"#);
        assert_eq!(
            other,
            Answer::Other(r#"409 Conflict: {"error":"already_reserved"}"#.into())
        );
        let not_json = classify(StatusCode::CONFLICT, b"sold_out");
        assert!(matches!(not_json, Answer::Other(_)));
    }

    #[test]
    fn statuses_map_to_their_classes() {
        assert_eq!(classify(StatusCode::ACCEPTED, b"{}"), Answer::Accepted);
        assert_eq!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"error":"unavailable"}"#
            ),
            Answer::Unavailable
        );
        assert_eq!(
            classify(StatusCode::OK, b""),
            Answer::Other("200 OK".into())
        );
    }

    #[test]
    fn long_bodies_are_cut_in_examples() {
        let body = "é".repeat(1000);
        let Answer::Other(text) = classify(StatusCode::BAD_REQUEST, body.as_bytes()) else {
            panic!("a 400 is other");
        };
        assert!(text.starts_with("400 Bad Request: é"));
        assert!(text.ends_with('…'));
        assert!(text.chars().count() < EXAMPLE_BODY_CHARS + 30);
    }

    #[test]
    fn base_urls_must_be_plain_http_with_a_host() {
        let uri = buy_uri("http://127.0.0.1:8080/").expect("a plain base URL");
        assert_eq!(uri.to_string(), "http://127.0.0.1:8080/buy");
        let prefixed = buy_uri("http://example.test/api").expect("a base URL with a path");
        assert_eq!(prefixed.to_string(), "http://example.test/api/buy");

        assert!(matches!(
            buy_uri("https://127.0.0.1:8080"),
            Err(LoadError::UnsupportedBaseUrl { .. })
        ));
        assert!(matches!(
            buy_uri("127.0.0.1:8080"),
            Err(LoadError::UnsupportedBaseUrl { .. } | LoadError::InvalidBaseUrl { .. })
        ));
        assert!(matches!(
            buy_uri("http://exa mple"),
            Err(LoadError::InvalidBaseUrl { .. })
        ));
        assert!(matches!(
            buy_uri("http://h:1?x=1"),
            Err(LoadError::UnsupportedBaseUrl { .. } | LoadError::InvalidBaseUrl { .. })
        ));
    }
}
