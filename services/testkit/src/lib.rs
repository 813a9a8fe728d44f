//! Test helpers shared by every crate's integration tests: a database per test cloned
//! from a migrated template, a Redis key prefix per test, private Redis servers for
//! tests that stop one, `spawn_app` running the real API in-process, processes killed
//! when a test ends (`Spawned`), and captured logs (`logs`).
//!
//! Tests run in parallel: nothing here may flush or stop a shared server, and every
//! name a test creates is unique to it.

mod app;
pub mod logs;
mod postgres;
mod process;
pub mod prometheus;
mod redis_servers;

pub use app::{AppOptions, GroupState, RunningProjector, TestApp, spawn_app, spawn_app_with};
pub use postgres::{PrivatePostgres, TestDb};
pub use process::Spawned;
pub use redis_servers::{PrivateRedis, PrivateRedisCluster, TestRedis};

/// The PostgreSQL server tests use (`TEST_DATABASE_URL`, default the local one). Its
/// database part is ignored: each test gets its own database.
pub fn postgres_server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The shared Redis tests use (`TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test uses: `{prefix}_{uuid-ish}`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port on loopback")
}

/// The value of `metric{sale="<sale>"}` on this process's Prometheus page (0 when it is
/// not there yet).
pub fn sale_metric(metric: &str, sale: &yoink_core::SaleId) -> f64 {
    let page = yoink_core::telemetry::prometheus().render();
    metric_value(&page, &format!("{metric}{{sale=\"{sale}\"}}")).unwrap_or(0.0)
}

/// The value of `series` (name and labels as Prometheus renders them) on a metrics page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The wall clock in Unix milliseconds, as sale times and hold deadlines count it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
