//! A stand-in for Yoink's API in tests: a hyper server on 127.0.0.1:0 whose `POST /buy`
//! answers by the buyer's number (the user id's last digit), then by a stock counter.
//!
//! It must never answer by arrival order alone, so each test can compute its expected counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Answers `POST /buy` by the last digit of `user_id`:
/// - 7: 503 `{"error":"unavailable"}`;
/// - 3: 409 `{"error":"already_reserved"}` (a 409 that is not a sell-out);
/// - otherwise: 202 while `stock` lasts, then 409 `{"error":"sold_out"}`.
pub struct TestServer {
    pub base_url: String,
    state: Arc<State>,
}

struct State {
    stock: u64,
    taken: AtomicU64,
    connections: AtomicU64,
    users: Mutex<Vec<String>>,
}

impl TestServer {
    pub async fn spawn(stock: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0 on loopback");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            stock,
            taken: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            users: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::Relaxed);
                let state = Arc::clone(&accepting);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    // A client closing its connection mid-request is not this test's concern.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            state,
        }
    }

    /// Every user id that asked to buy, in arrival order.
    pub fn users(&self) -> Vec<String> {
        self.state
            .users
            .lock()
            .expect("no test thread panics while holding the lock")
            .clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// An address where nothing listens: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding port 0 on loopback");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/buy" {
        return Ok(json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#));
    }
    let Ok(body) = req.into_body().collect().await else {
        return Ok(json(StatusCode::BAD_REQUEST, r#"{"error":"bad_request"}"#));
    };
    let Ok(buy) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return Ok(json(StatusCode::BAD_REQUEST, r#"{"error":"bad_request"}"#));
    };
    let well_formed = buy["sale_id"].is_string() && buy["quantity"] == 1;
    let Some(user_id) = buy["user_id"].as_str().filter(|_| well_formed) else {
        return Ok(json(StatusCode::BAD_REQUEST, r#"{"error":"bad_request"}"#));
    };
    state
        .users
        .lock()
        .expect("no test thread panics while holding the lock")
        .push(user_id.to_owned());

    Ok(match user_id.chars().last() {
        Some('7') => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"unavailable"}"#,
        ),
        Some('3') => json(StatusCode::CONFLICT, r#"{"error":"already_reserved"}"#),
        _ if state.taken.fetch_add(1, Ordering::Relaxed) < state.stock => {
            json(StatusCode::ACCEPTED, r#"{"reservation_id":"r"}"#)
        }
        _ => json(StatusCode::CONFLICT, r#"{"error":"sold_out"}"#),
    })
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
