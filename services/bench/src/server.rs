//! The minimal HTTP layer the comparison strategies sit behind: `POST /buy` with the real
//! API's body (`{"sale_id","user_id","quantity"?}`) and the real API's answers (202,
//! 409 `{"error":"sold_out"}`, 503 `{"error":"unavailable"}`, 400/404 otherwise), so the
//! load generator drives every strategy the same way.
//!
//! It is private to `yoink bench` and must never be reachable from `serve`: it has no
//! limits, no auth and no metrics, and two of its strategies are wrong on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::strategies::{Backend, Bought};

/// Buy bodies are tiny; anything bigger is refused unread.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The body of `POST /buy`, as the real API reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct BuyBody {
    pub sale_id: String,
    pub user_id: String,
    #[serde(default = "one")]
    pub quantity: i64,
}

fn one() -> i64 {
    1
}

/// A running server; dropping it (or `stop`) stops accepting and aborts every connection.
pub(crate) struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves `backend` until stopped.
    pub async fn start(backend: Arc<Backend>) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, backend, stopped));
        Ok(Server {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    backend: Arc<Backend>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Dropped with the loop: every connection task is aborted with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let backend = backend.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let backend = backend.clone();
                        async move { Ok::<_, Infallible>(handle(&backend, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(backend: &Backend, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/buy" {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_request"),
    };
    let buy: BuyBody = match serde_json::from_slice::<BuyBody>(&body) {
        Ok(buy) if (1..=1_000).contains(&buy.quantity) => buy,
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request"),
    };
    match backend.buy(&buy).await {
        Bought::Accepted => json(
            StatusCode::ACCEPTED,
            serde_json::json!({
                "sale_id": buy.sale_id,
                "user_id": buy.user_id,
                "quantity": buy.quantity,
                "status": "reserved",
            }),
        ),
        Bought::SoldOut => error(StatusCode::CONFLICT, "sold_out"),
        Bought::UnknownSale => error(StatusCode::NOT_FOUND, "unknown_sale"),
        Bought::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": code }))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
