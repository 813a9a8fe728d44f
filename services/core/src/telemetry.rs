//! Prometheus metrics for the whole process: one recorder, installed once, and a small
//! `/metrics` listener (bound so that several processes run on one host, and published
//! for Prometheus' file service discovery).
//!
//! Metric names start with `yoink_`; counters end in `_total`, durations in `_seconds`;
//! labels come from closed sets (route templates, outcomes, sale ids). Nothing here may
//! block or fail a request: recording a metric is never an error.
//!
//! Besides the recorder: every process's own health, from well-kept crates rather than
//! by hand. `process_*` (RSS, CPU seconds, open fds, start time: `metrics-process`,
//! the names every Prometheus client library uses; CPU seconds as a gauge, since a
//! metrics-rs counter holds whole numbers only) is collected each second by the
//! upkeep thread; `yoink_tokio_*` (busy ratio, tasks alive, scheduling delay:
//! `tokio-metrics`) by a task on the process's runtime (`watch_runtime`); and
//! `yoink_build_info{version}` is 1. Core's own metrics get their HELP text here
//! (`describe`); each service crate describes its own in its `metrics` module.

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

/// 1, labelled with the `version` of this build.
pub const BUILD_INFO: &str = "yoink_build_info";
/// Worker threads of the process's tokio runtime.
pub const TOKIO_WORKERS: &str = "yoink_tokio_workers";
/// Tasks alive on the runtime (spawned and not finished).
pub const TOKIO_TASKS_ALIVE: &str = "yoink_tokio_tasks_alive";
/// Share of the last sampling interval the runtime's workers were busy, 0 to 1
/// (all workers busy all the time: 1).
pub const TOKIO_BUSY_RATIO: &str = "yoink_tokio_busy_ratio";
/// Tasks waiting in the runtime's global (injection) queue.
pub const TOKIO_GLOBAL_QUEUE: &str = "yoink_tokio_global_queue_depth";
/// Mean time a woken task waited for a worker over the last sampling interval
/// (`tokio-metrics` TaskMonitor on a probe task woken every `PROBE_PERIOD`).
pub const TOKIO_SCHEDULING_DELAY: &str = "yoink_tokio_scheduling_delay_seconds";
/// Longest lateness of the probe's timer over the last sampling interval: deadline to
/// running again, timer processing included. The analogue of Node's event-loop lag.
pub const TOKIO_PROBE_LATENESS: &str = "yoink_tokio_probe_lateness_seconds";

/// How often the runtime gauges are refreshed, and process metrics collected.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The scheduling probe's sleep: ~50 wake-ups per sampling interval, a cost nobody sees.
const PROBE_PERIOD: Duration = Duration::from_millis(20);

/// HELP text for core's metrics and the process-wide ones (build info, runtime), and
/// the build-info gauge. Called once when the recorder is installed; idempotent.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version of the yoink build this process runs."
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        ROLLBACKS_DETECTED,
        "Sales this process found with Redis behind PostgreSQL (Redis went back in time) and suspended, by sale and by which process noticed."
    );
    describe_gauge!(
        crate::readiness::STORE_UP,
        "1 while the store (redis, postgres) answers this process's probe, 0 while it does not."
    );
    describe_counter!(
        crate::rebuild::RECOVERIES,
        "Sales rebuilt in Redis from PostgreSQL after Redis went back in time, by sale."
    );
    describe_histogram!(
        crate::rebuild::RECOVERY_SECONDS,
        Unit::Seconds,
        "Time to rebuild one sale in Redis from PostgreSQL."
    );
    describe_counter!(
        crate::rebuild::RECOVERED_RESERVATIONS,
        "Reservations a rebuild found in PostgreSQL, by sale and fate (confirmed, released)."
    );
    describe_gauge!(
        crate::rebuild::LOST_RESERVATIONS,
        "Reservations answered 202 that the last rebuild of the sale found lost with Redis."
    );
    describe_counter!(
        crate::holds::DECIDED,
        "Holds decided, by sale and outcome (confirmed, cancelled, expired)."
    );
    describe_histogram!(
        crate::holds::CONFIRM_SECONDS,
        Unit::Seconds,
        "Time from a hold's reservation to its confirm."
    );
    describe_histogram!(
        crate::holds::EXPIRY_LAG_SECONDS,
        Unit::Seconds,
        "Time from a hold's deadline to its units being back on sale (projector expiry sweep)."
    );
    describe_gauge!(
        crate::holds::ACTIVE,
        "Holds waiting for a decision, by sale."
    );
    describe_gauge!(TOKIO_WORKERS, "Worker threads of the tokio runtime.");
    describe_gauge!(
        TOKIO_TASKS_ALIVE,
        "Tasks alive on the tokio runtime (spawned, not finished)."
    );
    describe_gauge!(
        TOKIO_BUSY_RATIO,
        "Share of the last second the tokio workers were busy, 0 to 1 (1: every worker busy all the time)."
    );
    describe_gauge!(
        TOKIO_GLOBAL_QUEUE,
        "Tasks waiting in the tokio runtime's global queue."
    );
    describe_gauge!(
        TOKIO_SCHEDULING_DELAY,
        Unit::Seconds,
        "Mean time a woken task waited for a tokio worker over the last second (a probe task)."
    );
    describe_gauge!(
        TOKIO_PROBE_LATENESS,
        Unit::Seconds,
        "Longest lateness of a 20 ms probe timer over the last second, timer processing included (the event-loop lag)."
    );
    process_collector().describe();
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Samples the current tokio runtime into the `yoink_tokio_*` gauges every
/// `SAMPLE_EVERY`, on a task of that runtime. Once per process: a process runs one
/// runtime, and tests, which run many, get the first one's (the gauges stop moving
/// when it ends). Outside a runtime it does nothing.
pub fn watch_runtime() {
    static WATCHED: OnceLock<()> = OnceLock::new();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if WATCHED.set(()).is_err() {
        return;
    }
    let mut sampler = RuntimeSampler::start(&runtime);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            sampler.sample();
        }
    });
}

/// The runtime's metrics between two samples (`tokio-metrics`), and a probe task that
/// sleeps `PROBE_PERIOD` in a loop: how long it waits for a worker once woken is the
/// scheduling delay every ready task meets.
pub struct RuntimeSampler {
    runtime: tokio_metrics::RuntimeIntervals,
    probe: Box<dyn Iterator<Item = tokio_metrics::TaskMetrics> + Send>,
    lateness_nanos: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _probe_task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RuntimeSampler {
    /// Starts the probe task on `runtime` and takes the first reading.
    pub fn start(runtime: &tokio::runtime::Handle) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let monitor = tokio_metrics::TaskMonitor::new();
        let lateness_nanos = std::sync::Arc::new(AtomicU64::new(0));
        let worst = lateness_nanos.clone();
        let probe = monitor.instrument(async move {
            loop {
                let deadline = tokio::time::Instant::now() + PROBE_PERIOD;
                tokio::time::sleep_until(deadline).await;
                let late = tokio::time::Instant::now().saturating_duration_since(deadline);
                let late = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                worst.fetch_max(late, Ordering::Relaxed);
            }
        });
        Self {
            runtime: tokio_metrics::RuntimeMonitor::new(runtime).intervals(),
            probe: Box::new(monitor.intervals()),
            lateness_nanos,
            _probe_task: AbortOnDrop(runtime.spawn(probe)),
        }
    }

    /// Sets the `yoink_tokio_*` gauges from what happened since the last sample.
    pub fn sample(&mut self) {
        if let Some(rt) = self.runtime.next() {
            let workers = rt.workers_count.max(1);
            let elapsed = rt.elapsed.as_secs_f64() * workers as f64;
            let busy = if elapsed > 0.0 {
                (rt.total_busy_duration.as_secs_f64() / elapsed).clamp(0.0, 1.0)
            } else {
                0.0
            };
            metrics::gauge!(TOKIO_WORKERS).set(rt.workers_count as f64);
            metrics::gauge!(TOKIO_TASKS_ALIVE).set(rt.live_tasks_count as f64);
            metrics::gauge!(TOKIO_BUSY_RATIO).set(busy);
            metrics::gauge!(TOKIO_GLOBAL_QUEUE).set(rt.global_queue_depth as f64);
        }
        if let Some(task) = self.probe.next() {
            metrics::gauge!(TOKIO_SCHEDULING_DELAY)
                .set(task.mean_scheduled_duration().as_secs_f64());
        }
        let worst = self
            .lateness_nanos
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(TOKIO_PROBE_LATENESS).set(worst as f64 / 1e9);
    }
}

/// Latency buckets: fine below 10 ms where `/buy` lives, coarse up to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch sizes (whole entries, 1 to `--batch-size`, 500 by default). Prometheus
/// interpolates within a bucket from its lower edge, which is 0 for the first one: with
/// `le="1"` first, batches of 1 read as 0.5 at the median. The empty `le="0.99"` bucket
/// makes the edge 0.99, so they read as 0.995 to 1.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    0.99, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];
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

/// Set by `disable`: `prometheus` then installs no recorder.
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns metrics off for the process (`serve --metrics off`, to measure their cost):
/// `prometheus` installs no recorder, so every metric call is a no-op, and its handle
/// renders an empty page. False when too late: the recorder was installed already.
pub fn disable() -> bool {
    DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    HANDLE.get().is_none()
}

/// The process-wide recorder's handle; installs the recorder on first use (tests run
/// many apps in one process, so this must be callable many times).
pub fn prometheus() -> PrometheusHandle {
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) && HANDLE.get().is_none() {
        static OFF: OnceLock<PrometheusHandle> = OnceLock::new();
        return OFF
            .get_or_init(|| builder().build_recorder().handle())
            .clone();
    }
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder was installed first; metrics then go
            // there and this handle renders an empty page, which tests would show.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed.");
            }
            describe();
            process_collector().collect();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    for tick in 1u64.. {
                        std::thread::sleep(SAMPLE_EVERY);
                        process_collector().collect();
                        if tick % 5 == 0 {
                            upkeep.run_upkeep();
                        }
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
    watch_runtime();
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

    #[test]
    fn a_batch_of_one_falls_in_a_bucket_whose_lower_edge_is_just_below_one() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("yoink_projector_batch_size").record(1.0);
        });
        let page = handle.render();
        for line in [
            "yoink_projector_batch_size_bucket{le=\"0.99\"} 0",
            "yoink_projector_batch_size_bucket{le=\"1\"} 1",
        ] {
            assert!(page.contains(line), "{line:?} missing from:\n{page}");
        }
    }

    #[test]
    fn describe_gives_help_text_build_info_and_process_metrics() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // At least a few clock ticks of CPU (the kernel counts in 10 ms ticks).
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        metrics::with_local_recorder(&recorder, || {
            describe();
            process_collector().collect();
            rollback_detected(&crate::SaleId::parse("s1").expect("id"), "api");
        });
        let page = handle.render();
        for needle in [
            "# HELP yoink_build_info ",
            &format!(
                "yoink_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "# HELP yoink_redis_rollbacks_detected_total ",
            "# HELP process_resident_memory_bytes ",
            "# HELP process_cpu_seconds_total ",
            "# TYPE process_cpu_seconds_total gauge",
            "process_start_time_seconds ",
            "process_open_fds ",
        ] {
            assert!(page.contains(needle), "{needle:?} missing from:\n{page}");
        }
        let rss = page
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("an RSS sample");
        assert!(
            rss > 1_000_000.0,
            "a test process uses more than 1 MB: {rss}"
        );
        let cpu = page
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("a CPU sample");
        assert!(cpu > 0.0, "fractions of a CPU second count: {cpu}");
    }

    /// The value of an unlabelled gauge on a rendered page.
    fn gauge(page: &str, name: &str) -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{page}"))
    }

    #[test]
    fn the_runtime_sampler_sees_busy_workers_queued_tasks_and_a_late_timer() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let mut sampler = RuntimeSampler::start(runtime.handle());

        // Idle: the probe runs on time and the workers are parked.
        std::thread::sleep(Duration::from_millis(300));
        metrics::with_local_recorder(&recorder, || sampler.sample());
        let idle = handle.render();
        assert_eq!(gauge(&idle, TOKIO_WORKERS), 2.0);
        assert!(gauge(&idle, TOKIO_BUSY_RATIO) < 0.5, "{idle}");
        assert!(gauge(&idle, TOKIO_PROBE_LATENESS) < 0.1, "{idle}");

        // Every worker busy with tasks that yield: ready tasks queue, the probe waits.
        let spinners: Vec<_> = (0..8)
            .map(|_| {
                runtime.spawn(async {
                    let until = std::time::Instant::now() + Duration::from_millis(400);
                    while std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_micros(500));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        // Then both workers blocked outright: timers are not even processed.
        std::thread::sleep(Duration::from_millis(450));
        let blockers: Vec<_> = (0..2)
            .map(|_| runtime.spawn(async { std::thread::sleep(Duration::from_millis(300)) }))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        metrics::with_local_recorder(&recorder, || sampler.sample());
        let busy = handle.render();
        assert!(gauge(&busy, TOKIO_BUSY_RATIO) > 0.5, "{busy}");
        assert!(gauge(&busy, TOKIO_SCHEDULING_DELAY) > 0.0, "{busy}");
        assert!(gauge(&busy, TOKIO_TASKS_ALIVE) >= 3.0, "{busy}");
        runtime.block_on(async {
            for task in spinners.into_iter().chain(blockers) {
                task.await.expect("a test task");
            }
        });
        metrics::with_local_recorder(&recorder, || sampler.sample());
        let after = handle.render();
        assert!(
            gauge(&after, TOKIO_PROBE_LATENESS) >= 0.1,
            "the probe's timer waited for a blocked runtime:\n{after}"
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
