//! A private `redis-server`: a child process on a free loopback port, with its working
//! dir and log in a temp dir of its own. It persists nothing, unless started
//! persistent (for `yoink nemesis`): then it keeps an AOF (`appendfsync everysec`, so a
//! SIGKILL of the server alone loses nothing) and can be killed, started again on the
//! same port and data, snapshotted, and put back to an older snapshot.
//!
//! It must never touch a Redis it did not start: it kills only its own child, and it
//! is ready only once the server answering on its port reports the child's pid.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
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

/// The AOF directory Redis 7 keeps inside `--dir`.
const AOF_DIR: &str = "appendonlydir";
/// The snapshot file name inside `--dir`.
const DUMP: &str = "dump.rdb";
/// Where older snapshots are copied, inside the temp dir.
const SNAPSHOTS: &str = "snapshots";

/// A running private `redis-server`, killed and its temp dir removed on drop.
pub(crate) struct RedisServer {
    port: u16,
    /// Keeps an AOF and can be restarted on its data (see the module doc).
    persistent: bool,
    /// `None` once stopped.
    child: Option<Child>,
    /// Its `--dir` and log; `None` once removed.
    dir: Option<TempDir>,
    /// Snapshots taken so far (names them uniquely).
    snapshots: u32,
}

impl RedisServer {
    /// Starts the server and waits (until `deadline`) for its PING.
    pub(crate) async fn start(deadline: Instant, persistent: bool) -> Result<Self, LocalError> {
        let dir = temp_dir("yoink-demo-redis-")?;
        let port = free_port()?;
        // From here on, an early return drops `server`, which kills the child.
        let mut server = Self {
            port,
            persistent,
            child: None,
            dir: Some(dir),
            snapshots: 0,
        };
        server.spawn(persistent)?;
        server.wait_ready(deadline).await?;
        Ok(server)
    }

    /// Spawns `redis-server` on this port and dir, appending to its log; with `aof`,
    /// it keeps (and loads) an AOF.
    fn spawn(&mut self, aof: bool) -> Result<(), LocalError> {
        let dir = self.path()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG))
            .and_then(|out| Ok((out.try_clone()?, out)))
            .map_err(|err| {
                LocalError::Failed(format!("cannot create the redis-server log: {err}"))
            })?;
        let appendonly = if aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", "everysec", "--dir"])
            .arg(&dir)
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
        self.child = Some(child);
        Ok(())
    }

    /// The temp dir, or an error once it is removed.
    fn path(&self) -> Result<PathBuf, LocalError> {
        self.dir()
            .ok_or_else(|| LocalError::Failed("the Redis temp dir is gone".to_owned()))
    }

    pub(crate) fn started(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the server (no goodbye to clients), keeping its data dir. Idempotent.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                tracing::debug!(port = self.port, error = %err, "Local redis-server not killed.");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(port = self.port, error = %err, "Local redis-server not reaped.");
            }
        }
    }

    /// Starts the server again on the same port and data (a killed one; a running one
    /// is killed first) and waits (until `deadline`) for its PING.
    pub(crate) async fn start_again(&mut self, deadline: Instant) -> Result<(), LocalError> {
        self.kill();
        self.spawn(self.persistent)?;
        self.wait_ready(deadline).await
    }

    /// Writes a snapshot now (`SAVE`) and copies it aside; returns the copy's path, for
    /// `restore`.
    pub(crate) async fn snapshot(&mut self) -> Result<PathBuf, LocalError> {
        let dir = self.path()?;
        let mut conn = self.connect().await?;
        let saved: redis::RedisResult<()> = redis::cmd("SAVE").query_async(&mut conn).await;
        saved.map_err(|err| LocalError::Failed(format!("Redis SAVE failed: {err}")))?;
        self.snapshots += 1;
        let aside = dir.join(SNAPSHOTS);
        let copy = aside.join(format!("{}-{DUMP}", self.snapshots));
        std::fs::create_dir_all(&aside)
            .and_then(|()| std::fs::copy(dir.join(DUMP), &copy))
            .map_err(|err| LocalError::Failed(format!("cannot copy the Redis snapshot: {err}")))?;
        Ok(copy)
    }

    /// Kills the server and starts it again from `snapshot` alone (its AOF removed):
    /// Redis back at an older state. Persistent again once its AOF is rewritten from
    /// that state, which this waits for (until `deadline`).
    pub(crate) async fn restore(
        &mut self,
        snapshot: &Path,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let dir = self.path()?;
        self.kill();
        let aof = dir.join(AOF_DIR);
        let put_back = match std::fs::remove_dir_all(&aof) {
            Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
            _ => std::fs::copy(snapshot, dir.join(DUMP)).map(|_| ()),
        };
        put_back.map_err(|err| {
            LocalError::Failed(format!("cannot put the Redis snapshot back: {err}"))
        })?;
        // Started without an AOF it loads the snapshot; then the AOF is turned on,
        // which rewrites it from the loaded state.
        self.spawn(false)?;
        self.wait_ready(deadline).await?;
        if self.persistent {
            self.turn_aof_on(deadline).await?;
        }
        Ok(())
    }

    /// `CONFIG SET appendonly yes`, then waits until the AOF rewrite it starts is done.
    async fn turn_aof_on(&self, deadline: Instant) -> Result<(), LocalError> {
        let mut conn = self.connect().await?;
        let set: redis::RedisResult<()> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("yes")
            .query_async(&mut conn)
            .await;
        set.map_err(|err| LocalError::Failed(format!("cannot turn the AOF on: {err}")))?;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
                .map_err(|err| LocalError::Failed(format!("Redis INFO failed: {err}")))?;
            let done = [
                "aof_enabled:1",
                "aof_rewrite_in_progress:0",
                "aof_rewrite_scheduled:0",
            ]
            .iter()
            .all(|line| info.lines().any(|l| l.trim() == *line));
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failed("the AOF rewrite did not finish in time"));
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// A connection to this server for a one-off command.
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, LocalError> {
        let client = redis::Client::open(self.url())
            .map_err(|err| LocalError::Failed(format!("bad Redis URL {}: {err}", self.url())))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(10)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| LocalError::Failed(format!("cannot reach the local Redis: {err}")))
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
        self.kill();
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
