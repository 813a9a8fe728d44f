//! A private `redis-server`: a child process on a free loopback port, persisting
//! nothing, with its working dir and log in a temp dir of its own.
//!
//! It must never touch a Redis it did not start: it kills only its own child, and it
//! is ready only once the server answering on its port reports the child's pid.

use std::fs::File;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::LocalError;
use crate::support::{free_port, log_tail, temp_dir};

/// Where the server's stdout and stderr go, inside its temp dir.
const LOG: &str = "redis.log";
/// A probe must not hang on a port that accepts but never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// A running private `redis-server`, killed and its temp dir removed on drop.
pub(crate) struct RedisServer {
    port: u16,
    /// `None` once stopped.
    child: Option<Child>,
    /// Its `--dir` and log; `None` once removed.
    dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts the server and waits (until `deadline`) for its PING.
    pub(crate) async fn start(deadline: Instant) -> Result<Self, LocalError> {
        let dir = temp_dir("yoink-demo-redis-")?;
        let log = File::create(dir.path().join(LOG))
            .and_then(|out| Ok((out.try_clone()?, out)))
            .map_err(|err| {
                LocalError::Failed(format!("cannot create the redis-server log: {err}"))
            })?;
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .spawn()
            .map_err(|err| match err.kind() {
                ErrorKind::NotFound => LocalError::Missing(
                    "redis-server not found: install it with `apt-get install redis-server`"
                        .to_owned(),
                ),
                _ => LocalError::Failed(format!("cannot run redis-server: {err}")),
            })?;
        // From here on, an early return drops `server`, which kills the child.
        let mut server = Self {
            port,
            child: Some(child),
            dir: Some(dir),
        };
        server.wait_ready(deadline).await?;
        Ok(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_owned())
    }

    /// Polls until our child answers PING, it exits, or the deadline passes.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), LocalError> {
        let client = redis::Client::open(self.url())
            .map_err(|err| LocalError::Failed(format!("bad Redis URL {}: {err}", self.url())))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT));
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(LocalError::Failed("redis-server was stopped".to_owned()));
            };
            let pid = child.id();
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.failed(&format!(
                        "redis-server exited ({status}) before it was ready"
                    )));
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(self.failed(&format!("cannot watch redis-server: {err}")));
                }
            }
            if answering_pid(&client, &config).await == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failed(&format!(
                    "redis-server did not answer PING on port {} within {} s",
                    self.port,
                    crate::READY_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// `what`, followed by the end of the server's log.
    fn failed(&self, what: &str) -> LocalError {
        let tail = match &self.dir {
            Some(dir) => log_tail(&dir.path().join(LOG)),
            None => "    (its log is gone)".to_owned(),
        };
        LocalError::Failed(format!("{what}; the end of its log:\n{tail}"))
    }

    /// Kills the child (SIGKILL: nothing to save) and removes the temp dir. Idempotent.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                // It had exited already; `wait` below reaps it all the same.
                tracing::debug!(port = self.port, error = %err, "Local redis-server not killed.");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(port = self.port, error = %err, "Local redis-server not reaped.");
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                tracing::warn!(dir = %path.display(), error = %err, "Local Redis temp dir not removed.");
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid of the Redis answering PING at `client`, if one does.
async fn answering_pid(client: &redis::Client, config: &AsyncConnectionConfig) -> Option<u32> {
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .ok()?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}
