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

mod postgres_server;
mod redis_server;
mod support;

use std::path::PathBuf;
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
        let deadline = Instant::now() + READY_WITHIN;
        // `join`, not `try_join`: neither start is abandoned halfway (a PostgreSQL
        // launched by a cancelled `pg_ctl` could outlive its cleanup). A failed start has
        // cleaned up after itself; a good one is dropped, and so stopped, here.
        let (redis, postgres) = tokio::join!(
            RedisServer::start(deadline),
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
