//! Store settings shared by every subcommand: where Redis and PostgreSQL live.
//!
//! clap reads these from flags or the environment in the `yoink` binary; libraries get
//! the parsed struct and never read the environment themselves. Defaults work on a dev
//! box with the Debian Redis and PostgreSQL on their standard ports.

use std::time::Duration;

/// Where the stores are and how long to wait for them.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis URL; with `--redis-cluster`, a comma-separated list of seed nodes.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Treat REDIS_URL as Redis Cluster seed nodes.
    #[arg(long, env = "YOINK_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// PostgreSQL URL; the database is created when it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/yoink"
    )]
    pub database_url: String,

    /// Prefix for every Redis key (outside the hash tag), to share one Redis between
    /// deployments or tests.
    #[arg(long, env = "YOINK_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,

    /// Milliseconds Redis may take to answer one command before the call fails.
    #[arg(long, env = "YOINK_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,

    /// Most PostgreSQL connections this process opens.
    #[arg(long, env = "YOINK_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,
}

impl StoreArgs {
    /// Settings for the local dev servers, as the defaults above (used by tests).
    pub fn local(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_cluster: false,
            database_url: database_url.into(),
            key_prefix: String::new(),
            redis_timeout_ms: 500,
            pg_pool_size: 16,
        }
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The database URL with any password hidden, for logs.
    pub fn database_url_for_logs(&self) -> String {
        redact(&self.database_url)
    }

    /// The Redis URL with any password hidden, for logs.
    pub fn redis_url_for_logs(&self) -> String {
        redact(&self.redis_url)
    }
}

/// Hides the `user:password@` part of a URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_credentials_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
