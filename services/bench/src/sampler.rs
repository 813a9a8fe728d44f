//! Samples, every 100 ms while a load runs, PostgreSQL's connection count
//! (`pg_stat_activity`, the whole server), this process's resident memory, and the
//! sale's timeline: units the buyers were granted (202s so far) and units in orders.
//!
//! It opens one connection of its own before the load (so a PostgreSQL that later refuses
//! connections is still sampled) and must never fail the bench: a sample it cannot read
//! is skipped, and a peak it never read is reported as `None`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use yoink_loadgen::Progress;

const EVERY: Duration = Duration::from_millis(100);

/// One sample of the sale's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimePoint {
    /// Since the load started.
    pub secs: f64,
    /// Units granted so far (202s): the stock left is the sale's stock minus these.
    pub accepted: u64,
    /// Units in orders in PostgreSQL.
    pub orders: i64,
}

/// Peaks seen between `start` and `stop`, and the timeline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peaks {
    pub pg_connections: Option<i64>,
    /// Bytes.
    pub rss: Option<u64>,
    pub timeline: Vec<TimePoint>,
}

/// Where a strategy writes its orders: the query counting the units of sale `$1`.
pub(crate) const BENCH_ORDERS: &str =
    "SELECT coalesce(sum(quantity), 0)::bigint FROM bench_orders WHERE sale_id = $1";
pub(crate) const YOINK_ORDERS: &str =
    "SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1";

pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Peaks>,
}

impl Sampler {
    /// `orders_sql` counts the units in orders of `sale` (`BENCH_ORDERS`, `YOINK_ORDERS`).
    pub async fn start(
        database_url: &str,
        orders_sql: &'static str,
        sale: String,
        progress: Arc<Progress>,
    ) -> Sampler {
        let client = match tokio_postgres::connect(database_url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                Some(client)
            }
            Err(err) => {
                tracing::warn!(error = %err, "Cannot sample pg_stat_activity.");
                None
            }
        };
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peaks = Peaks::default();
            let mut tick = tokio::time::interval(EVERY);
            let started = Instant::now();
            loop {
                if let Some(client) = &client
                    && let Ok(row) = client.query_one(orders_sql, &[&sale]).await
                {
                    peaks.timeline.push(TimePoint {
                        secs: started.elapsed().as_secs_f64(),
                        accepted: progress.accepted.load(Ordering::Relaxed),
                        orders: row.get(0),
                    });
                }
                if let Some(client) = &client
                    && let Ok(row) = client
                        .query_one("SELECT count(*) FROM pg_stat_activity", &[])
                        .await
                {
                    let n: i64 = row.get(0);
                    peaks.pg_connections = Some(peaks.pg_connections.map_or(n, |p| p.max(n)));
                }
                if let Some(rss) = rss_bytes() {
                    peaks.rss = Some(peaks.rss.map_or(rss, |p| p.max(rss)));
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
            }
            peaks
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Peaks {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// This process's resident set (`VmRSS` in /proc/self/status), in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

/// The `kB` value of `field` in a /proc status text.
pub(crate) fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::status_kb;

    #[test]
    fn reads_a_kb_field_of_proc_status() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kb(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kb(status, "VmSwap:"), None);
    }
}
