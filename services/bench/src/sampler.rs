//! Samples, every 100 ms while a load runs, PostgreSQL's connection count
//! (`pg_stat_activity`, the whole server) and this process's resident memory.
//!
//! It opens one connection of its own before the load (so a PostgreSQL that later refuses
//! connections is still sampled) and must never fail the bench: a sample it cannot read
//! is skipped, and a peak it never read is reported as `None`.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

const EVERY: Duration = Duration::from_millis(100);

/// Peaks seen between `start` and `stop`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peaks {
    pub pg_connections: Option<i64>,
    /// Bytes.
    pub rss: Option<u64>,
}

pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Peaks>,
}

impl Sampler {
    pub async fn start(database_url: &str) -> Sampler {
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
            loop {
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
