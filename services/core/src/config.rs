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

/// Settings of every long-running process's metrics.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Directory where each process writes a Prometheus file_sd target file naming the
    /// address its metrics listener bound (several processes per host find each other's
    /// ports there). Unset: none written.
    #[arg(long, env = "YOINK_METRICS_SD_DIR")]
    pub metrics_sd_dir: Option<std::path::PathBuf>,
}

/// `T` as its clap definition's defaults say, ignoring the environment: test
/// constructors start from the defaults a user gets, never from a copy of them.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command =
        T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag without a default is optional");
    T::from_arg_matches(&matches).expect("defaults parse into their own struct")
}

impl StoreArgs {
    /// The defaults, on these stores (used by tests).
    pub fn local(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            database_url: database_url.into(),
            ..clap_defaults()
        }
    }

    /// Cross-field and range checks, with the flag to change.
    pub fn check(&self) -> Result<(), String> {
        if self.redis_timeout_ms == 0 {
            return Err("--redis-timeout-ms must be at least 1".into());
        }
        if self.pg_pool_size == 0 {
            return Err("--pg-pool-size must be at least 1".into());
        }
        if self.redis_url.trim().is_empty() || self.database_url.trim().is_empty() {
            return Err("REDIS_URL and DATABASE_URL must not be empty".into());
        }
        Ok(())
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
    use super::*;

    #[test]
    fn redacts_credentials_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn test_settings_start_from_the_declared_defaults() {
        let local = StoreArgs::local("postgres://db", "redis://r");
        assert_eq!(local.redis_timeout_ms, 500);
        assert_eq!(local.pg_pool_size, 16);
        assert_eq!(local.key_prefix, "");
        assert!(!local.redis_cluster);
        assert_eq!(local.redis_url, "redis://r");
        assert!(local.check().is_ok());
    }

    #[test]
    fn zero_sized_settings_are_refused_with_the_flag_to_change() {
        let mut args = StoreArgs::local("postgres://db", "redis://r");
        args.pg_pool_size = 0;
        assert!(args.check().is_err_and(|e| e.contains("--pg-pool-size")));
        args.pg_pool_size = 1;
        args.redis_timeout_ms = 0;
        assert!(
            args.check()
                .is_err_and(|e| e.contains("--redis-timeout-ms"))
        );
    }
}
