//! Private, throwaway Redis and PostgreSQL servers for `yoink demo`: started from the
//! installed binaries, in temp dirs of their own, listening on free loopback ports, and
//! removed afterwards (processes stopped, temp dirs deleted) on `stop` or on drop.
//!
//! It must never touch a server it did not start: it stops only its own `redis-server`
//! child and the PostgreSQL running on the data directory it made, it never flushes
//! anything, and it counts a Redis as ready only when the one answering is its own
//! child (another server may grab a port between the probe and the start).
//! `yoink demo` is user-facing, so every failure is a `LocalError`, never a panic, and
//! dropping never panics either.
//!
//! `yoink nemesis` also injects faults into them: started with
//! [`LocalStores::start_with`] and a persistent Redis, it kills and restarts Redis,
//! puts Redis back to an older snapshot, and stops and starts PostgreSQL, always on the
//! same ports and data.

mod postgres_server;
mod redis_server;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use postgres_server::PostgresServer;
use redis_server::RedisServer;

/// How long both servers get to accept connections, counted from the call to `start`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A private `redis-server` and a private PostgreSQL, both stopped and removed on
/// `stop` or drop.
pub struct LocalStores {
    redis: RedisServer,
    postgres: PostgresServer,
}

impl LocalStores {
    /// Starts a private redis-server and a private PostgreSQL (initdb into a temp dir, run as the
    /// `postgres` user when invoked as root, trust auth, fsync off, listening on 127.0.0.1 only, on free
    /// ports), and waits until both accept connections (bounded: ~30 s, then an error).
    pub async fn start() -> Result<LocalStores, LocalError> {
        Self::start_with(LocalOptions::default()).await
    }

    /// `start`, with options: a persistent Redis (an AOF, `appendfsync everysec`, so
    /// killing the server alone loses nothing) that can be snapshotted and restored.
    pub async fn start_with(options: LocalOptions) -> Result<LocalStores, LocalError> {
        let deadline = Instant::now() + READY_WITHIN;
        // `join`, not `try_join`: neither start is abandoned halfway (a PostgreSQL
        // launched by a cancelled `pg_ctl` could outlive its cleanup). A failed start has
        // cleaned up after itself; a good one is dropped, and so stopped, here.
        let (redis, postgres) = tokio::join!(
            RedisServer::start(deadline, options.persistent_redis),
            PostgresServer::start(deadline)
        );
        let stores = match (redis, postgres) {
            (Ok(redis), Ok(postgres)) => LocalStores { redis, postgres },
            (Err(LocalError::Missing(a)), Err(LocalError::Missing(b))) => {
                // Both missing: say everything to install at once.
                return Err(LocalError::Missing(format!("{a}\n{b}")));
            }
            (Err(err), Err(other)) => {
                tracing::warn!(error = %other, "Local PostgreSQL failed to start too.");
                return Err(err);
            }
            (Err(err), Ok(_)) | (Ok(_), Err(err)) => return Err(err),
        };
        tracing::info!(
            redis_url = %stores.redis_url(),
            database_url = %stores.database_url(),
            "Local stores started."
        );
        Ok(stores)
    }

    /// redis://127.0.0.1:PORT
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// postgres://postgres@127.0.0.1:PORT/postgres
    pub fn database_url(&self) -> String {
        self.postgres.url()
    }

    /// Whether the Redis server was started and not killed since (it may still have
    /// exited by itself).
    pub fn redis_running(&self) -> bool {
        self.redis.started()
    }

    /// Whether PostgreSQL was started and not stopped since.
    pub fn postgres_running(&self) -> bool {
        self.postgres.started()
    }

    /// SIGKILLs the Redis server (its data dir stays). Idempotent.
    pub fn kill_redis(&mut self) {
        self.redis.kill();
    }

    /// Starts Redis again on the same port and data (killing it first if it runs),
    /// and waits (about 30 s at most) until it answers. A persistent Redis comes back
    /// with everything it acknowledged; another one comes back empty.
    pub async fn restart_redis(&mut self) -> Result<(), LocalError> {
        self.redis.start_again(Instant::now() + READY_WITHIN).await
    }

    /// Takes a snapshot of Redis now (`SAVE`) and keeps a copy; returns the copy, for
    /// [`LocalStores::restore_redis`].
    pub async fn snapshot_redis(&mut self) -> Result<PathBuf, LocalError> {
        self.redis.snapshot().await
    }

    /// Kills Redis and starts it again from `snapshot` (an older state: everything
    /// written since is gone), then, for a persistent Redis, waits until its AOF is
    /// rewritten from that state (about 30 s at most).
    pub async fn restore_redis(&mut self, snapshot: &Path) -> Result<(), LocalError> {
        self.redis
            .restore(snapshot, Instant::now() + READY_WITHIN)
            .await
    }

    /// Stops PostgreSQL at once (`pg_ctl -m immediate`; its data stays). Blocking; idempotent.
    pub fn stop_postgres(&mut self) {
        self.postgres.halt();
    }

    /// Starts PostgreSQL again on the same port and data, and waits (about 30 s at most)
    /// until it answers `SELECT 1`.
    pub async fn start_postgres(&mut self) -> Result<(), LocalError> {
        self.postgres
            .start_again(Instant::now() + READY_WITHIN)
            .await
    }

    /// Stops both servers and removes their temp dirs; also what Drop does (Drop must never panic).
    pub fn stop(self) {
        // The servers stop themselves when dropped: `stop` only makes the moment explicit.
        drop(self);
    }

    /// The temp dirs the servers live in (for tests that check they are gone).
    #[doc(hidden)]
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.redis
            .dir()
            .into_iter()
            .chain(self.postgres.dir())
            .collect()
    }
}

/// How [`LocalStores::start_with`] sets the servers up.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOptions {
    /// Redis keeps an AOF and can be killed, restarted, snapshotted and restored
    /// without losing what it acknowledged (default: it persists nothing).
    pub persistent_redis: bool,
}

/// Why the local stores could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A binary is missing: the message says exactly what to install on Debian, e.g.
    /// "redis-server not found: install it with `apt-get install redis-server`" /
    /// "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install them with `apt-get install postgresql`".
    #[error("{0}")]
    Missing(String),
    /// Starting failed (initdb, pg_ctl, redis-server exited, or not ready in time): say which and include the tail of its log.
    #[error("{0}")]
    Failed(String),
}
