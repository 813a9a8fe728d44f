//! Prometheus metrics for the whole process: one recorder, installed once, and a small
//! `/metrics` listener for the processes that have no HTTP API of their own.
//!
//! Metric names start with `yoink_`; counters end in `_total`, durations in `_seconds`;
//! labels come from closed sets (route templates, outcomes, sale ids). Nothing here may
//! block or fail a request: recording a metric is never an error.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Sales found with Redis below a position it had reached (Redis went back in time) and
/// suspended, by which process noticed first (`api`, `projector`, `reconciler`).
pub const ROLLBACKS_DETECTED: &str = "yoink_redis_rollbacks_detected_total";

/// Counts a suspension this process made because Redis was behind.
pub fn rollback_detected(sale: &crate::SaleId, by: &'static str) {
    metrics::counter!(ROLLBACKS_DETECTED, "sale" => sale.to_string(), "by" => by).increment(1);
}

/// Latency buckets: fine below 10 ms where `/buy` lives, coarse up to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// The process-wide recorder's handle; installs the recorder on first use (tests run
/// many apps in one process, so this must be callable many times).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("yoink_projector_batch_size".into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder was installed first; metrics then go
            // there and this handle renders an empty page, which tests would show.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed.");
            }
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning a thread at startup only fails when the OS is out of threads");
            handle
        })
        .clone()
}

/// Serves `GET /metrics`, `GET /healthz` and `GET /readyz` (the stores' state, from
/// `readiness`) on `listener` until `shutdown` resolves. For the processes with no HTTP
/// API.
pub async fn serve_metrics(listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let handle = prometheus();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "Metrics accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, handle.render()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                        "/readyz" => {
                            let (ready, report) = crate::readiness::report();
                            let status = if ready {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            };
                            (status, format!("{report}\n"))
                        }
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
