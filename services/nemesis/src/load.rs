//! The buyers: `POST /buy` at a constant rate for the run's length, each request from
//! one of a limited pool of buyers (drawn from the seed) with an Idempotency-Key of its
//! own, each outcome classified once (ok, fail, indefinite) and written to the history.
//!
//! It must never retry or guess: a request's outcome is what the buyer saw; resolving
//! the indefinite ones is the check's job, afterwards. Every request is bounded by the
//! request timeout, and the load stops by itself after `rate × seconds` requests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::history::{History, Outcome, Request};
use crate::schedule::SplitMix64;

/// What the load needs to know.
pub struct Load {
    pub base_url: String,
    pub sale_id: String,
    pub buyers: u64,
    pub rate: u64,
    pub seconds: u64,
    pub seed: u64,
    /// Unique per run: Idempotency-Keys and buyer ids carry it.
    pub tag: String,
    pub request_timeout: Duration,
}

/// Sends the load; returns every request with its outcome, in request order.
pub async fn run(load: Load, history: History, started: Instant) -> Vec<Request> {
    let client = match reqwest::Client::builder()
        .timeout(load.request_timeout)
        .connect_timeout(load.request_timeout.min(Duration::from_millis(500)))
        .pool_max_idle_per_host(256)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "HTTP client not built: no load sent.");
            return Vec::new();
        }
    };
    let url = format!("{}/buy", load.base_url);
    let total = load.rate * load.seconds;
    let every = Duration::from_secs_f64(1.0 / load.rate as f64);
    // Buyers come from their own stream of the seed: the same seed, the same buyers.
    let mut rng = SplitMix64::new(load.seed ^ 0xB0B5_B0B5_B0B5_B0B5);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let buyer = format!("{}-b{}", load.tag, rng.between(0, load.buyers - 1));
        let key = format!("{}-k{n}", load.tag);
        let (client, url, sale, history) = (
            client.clone(),
            url.clone(),
            load.sale_id.clone(),
            history.clone(),
        );
        history.invoke(elapsed_ms(started), n, &buyer, &key);
        requests.spawn(async move {
            let outcome = buy(&client, &url, &sale, &buyer, &key).await;
            let request = Request {
                n,
                buyer,
                key,
                outcome,
            };
            history.complete(elapsed_ms(started), &request);
            request
        });
    }
    let mut done = Vec::with_capacity(total as usize);
    while let Some(joined) = requests.join_next().await {
        match joined {
            Ok(request) => done.push(request),
            Err(err) => tracing::error!(error = %err, "A buyer task failed."),
        }
    }
    done.sort_by_key(|r| r.n);
    done
}

pub fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// One `POST /buy`, classified.
async fn buy(client: &reqwest::Client, url: &str, sale: &str, buyer: &str, key: &str) -> Outcome {
    let body = serde_json::json!({ "sale_id": sale, "user_id": buyer, "quantity": 1 });
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        // The connection never opened: the request never left.
        Err(err) if err.is_connect() => {
            return Outcome::Fail {
                status: None,
                code: "connect".into(),
            };
        }
        Err(err) => {
            return Outcome::Indefinite {
                reservation_id: None,
                why: describe(&err),
            };
        }
    };
    let status = response.status();
    let body: serde_json::Value = match response.text().await {
        Ok(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        // The status came, the body did not: a 202 whose id we never read.
        Err(err) if status == StatusCode::ACCEPTED => {
            return Outcome::Indefinite {
                reservation_id: None,
                why: format!("202 with an unreadable body: {}", describe(&err)),
            };
        }
        Err(_) => serde_json::Value::Null,
    };
    classify(status, &body)
}

/// The one place that decides what an answer counts as.
fn classify(status: StatusCode, body: &serde_json::Value) -> Outcome {
    let reservation_id = body
        .get("reservation_id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Uuid>().ok());
    let code = body
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    match (status, reservation_id) {
        (StatusCode::ACCEPTED, Some(reservation_id)) => Outcome::Ok { reservation_id },
        (StatusCode::ACCEPTED, None) => Outcome::Indefinite {
            reservation_id: None,
            why: "202 without a reservation id".into(),
        },
        // A 5xx naming a reservation: it may stand (its reply from Redis was lost, or
        // it is not as durable as asked).
        (s, Some(reservation_id)) if s.is_server_error() => Outcome::Indefinite {
            reservation_id: Some(reservation_id),
            why: format!("{} {code}", s.as_u16()),
        },
        (s, _) => Outcome::Fail {
            status: Some(s.as_u16()),
            code: if code.is_empty() {
                s.as_u16().to_string()
            } else {
                code
            },
        },
    }
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timeout".into();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_503_naming_a_reservation_is_indefinite_and_a_bare_one_a_failure() {
        let id = Uuid::now_v7();
        let named = serde_json::json!({"error": "unavailable", "reservation_id": id.to_string()});
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &named),
            Outcome::Indefinite {
                reservation_id: Some(id),
                why: "503 unavailable".into()
            }
        );
        let bare = serde_json::json!({"error": "sale_recovering"});
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &bare),
            Outcome::Fail {
                status: Some(503),
                code: "sale_recovering".into()
            }
        );
    }

    #[test]
    fn a_202_is_ok_only_with_its_reservation_id() {
        let id = Uuid::now_v7();
        let body = serde_json::json!({"reservation_id": id.to_string()});
        assert_eq!(
            classify(StatusCode::ACCEPTED, &body),
            Outcome::Ok { reservation_id: id }
        );
        assert!(matches!(
            classify(StatusCode::ACCEPTED, &serde_json::Value::Null),
            Outcome::Indefinite { .. }
        ));
        assert!(matches!(
            classify(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": "sold_out"})
            ),
            Outcome::Fail {
                status: Some(409),
                ..
            }
        ));
    }
}
