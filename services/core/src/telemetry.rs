//! Prometheus metrics for the whole process: one recorder, installed once, and a small
//! `/metrics` listener (bound so that several processes run on one host, and published
//! for Prometheus' file service discovery).
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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
/// Hold expiry lag (`expires_at` to units back on sale): a sweep runs every
/// `--expiry-interval-ms` (200 ms), so fine around 0.1-1 s (1 s is the
/// `YoinkHoldExpiryLag` threshold), then coarse up to minutes (no projector running).
const HOLD_EXPIRY_LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Reservation to confirm of a hold: a buyer paying takes seconds to minutes, and a
/// hold may be extended up to 7 days.
const HOLD_CONFIRM_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0, 259200.0, 604800.0,
];

/// The process-wide recorder's handle; installs the recorder on first use (tests run
/// many apps in one process, so this must be callable many times).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
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

/// The recorder's settings: histogram buckets per metric. A `Full` name wins over the
/// `_seconds` suffix (the exporter tries exact names first).
fn builder() -> PrometheusBuilder {
    let per_metric: [(Matcher, &[f64]); 4] = [
        (Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS),
        (
            Matcher::Full("yoink_projector_batch_size".into()),
            BATCH_SIZE_BUCKETS,
        ),
        (
            Matcher::Full(crate::holds::EXPIRY_LAG_SECONDS.into()),
            HOLD_EXPIRY_LAG_BUCKETS,
        ),
        (
            Matcher::Full(crate::holds::CONFIRM_SECONDS.into()),
            HOLD_CONFIRM_BUCKETS,
        ),
    ];
    per_metric
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |b, (matcher, buckets)| {
            b.set_buckets_for_metric(matcher, buckets)
        })
        .expect("bucket lists are non-empty constants")
}

/// Why no metrics listener could be opened.
#[derive(Debug, thiserror::Error)]
pub enum MetricsListenError {
    #[error("--metrics-listen {0:?} is neither \"off\" nor HOST:PORT")]
    BadAddress(String),
    #[error("binding metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a process's metrics listener: `None` for "off"; else `listen`, or, when another
/// process on this host already holds that port, the same host on a port the OS picks.
/// Several processes of one kind thus run side by side with default flags; the address
/// actually bound is logged (and, with `--metrics-sd-dir`, published for Prometheus).
pub async fn bind_metrics(
    listen: &str,
    role: &str,
) -> Result<Option<TcpListener>, MetricsListenError> {
    if listen == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| MetricsListenError::BadAddress(listen.to_owned()))?;
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            let any_port = SocketAddr::new(addr.ip(), 0);
            TcpListener::bind(any_port)
                .await
                .map_err(|source| MetricsListenError::Bind {
                    addr: any_port,
                    source,
                })?
        }
        Err(source) => return Err(MetricsListenError::Bind { addr, source }),
    };
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsListenError::Bind { addr, source })?;
    if bound == addr {
        tracing::info!(role, addr = %bound, "Serving metrics.");
    } else {
        tracing::warn!(role, addr = %bound, taken = %addr, "Serving metrics on another port: the default one is taken (another process of this host).");
    }
    Ok(Some(listener))
}

/// A Prometheus `file_sd` target file naming this process's metrics address:
/// `<dir>/yoink-<role>-<pid>.json`, removed when dropped. With several processes per
/// host on ports the OS picked, Prometheus finds each one through these files.
#[derive(Debug)]
pub struct ScrapeTarget {
    path: PathBuf,
}

impl ScrapeTarget {
    /// Writes the file (after removing those of processes that are gone).
    pub fn publish(dir: &Path, role: &str, addr: SocketAddr) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        remove_stale_targets(dir);
        let path = dir.join(format!("yoink-{role}-{}.json", std::process::id()));
        let body = serde_json::json!([{
            "targets": [addr.to_string()],
            "labels": { "job": format!("yoink-{role}"), "pid": std::process::id().to_string() },
        }]);
        // Written aside and renamed, so Prometheus never reads half a file.
        let partial = path.with_extension("json.tmp");
        std::fs::write(&partial, format!("{body}\n"))?;
        std::fs::rename(&partial, &path)?;
        tracing::info!(file = %path.display(), "Published the metrics address for Prometheus.");
        Ok(Self { path })
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes target files whose process no longer runs (killed before it could clean up).
fn remove_stale_targets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("yoink-"))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_histograms_get_their_own_buckets_and_other_durations_keep_the_latency_ones() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(crate::holds::EXPIRY_LAG_SECONDS).record(0.3);
            metrics::histogram!(crate::holds::CONFIRM_SECONDS).record(90.0);
            metrics::histogram!("yoink_test_seconds").record(0.003);
        });
        let page = handle.render();
        for line in [
            "yoink_hold_expiry_lag_seconds_bucket{le=\"0.3\"} 1",
            "yoink_hold_expiry_lag_seconds_bucket{le=\"300\"} 1",
            "yoink_hold_confirm_seconds_bucket{le=\"60\"} 0",
            "yoink_hold_confirm_seconds_bucket{le=\"120\"} 1",
            "yoink_hold_confirm_seconds_bucket{le=\"604800\"} 1",
            "yoink_test_seconds_bucket{le=\"0.005\"} 1",
        ] {
            assert!(page.contains(line), "{line:?} missing from:\n{page}");
        }
        assert!(
            !page.contains("yoink_hold_expiry_lag_seconds_bucket{le=\"0.0005\"}"),
            "the hold histograms must not get the latency buckets:\n{page}"
        );
    }

    #[tokio::test]
    async fn a_second_process_gets_its_own_metrics_port_and_says_which() {
        let first = bind_metrics("127.0.0.1:0", "test")
            .await
            .expect("bind")
            .expect("a listener");
        let taken = first.local_addr().expect("addr");
        let second = bind_metrics(&taken.to_string(), "test")
            .await
            .expect("falls back instead of failing")
            .expect("a listener");
        let got = second.local_addr().expect("addr");
        assert_ne!(got.port(), taken.port());
        assert_eq!(got.ip(), taken.ip());
        assert!(bind_metrics("off", "test").await.expect("off").is_none());
        assert!(bind_metrics("nonsense", "test").await.is_err());
    }

    #[test]
    fn a_scrape_target_is_published_and_removed_and_stale_ones_are_swept() {
        let dir = tempfile_dir();
        let stale = dir.join("yoink-projector-4000000000.json");
        std::fs::write(&stale, "[]").expect("write");
        let addr: SocketAddr = "127.0.0.1:9101".parse().expect("addr");
        let target = ScrapeTarget::publish(&dir, "projector", addr).expect("publish");
        let mine = dir.join(format!("yoink-projector-{}.json", std::process::id()));
        let body = std::fs::read_to_string(&mine).expect("published");
        assert!(
            body.contains("127.0.0.1:9101") && body.contains("yoink-projector"),
            "{body}"
        );
        assert!(!stale.exists(), "a dead process's file is removed");
        drop(target);
        assert!(!mine.exists(), "removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "yoink-sd-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
