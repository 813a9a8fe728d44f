//! `yoink serve` settings (flags or environment, defaults that work on a dev box).

use std::net::SocketAddr;
use std::time::Duration;

use crate::durability::Level;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "YOINK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token for admin endpoints (POST /sales); unset = admin endpoints refuse.
    #[arg(long, env = "YOINK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Most reserve scripts in flight at once; beyond it /buy answers 503 at once
    /// instead of queueing into Redis timeouts.
    #[arg(long, env = "YOINK_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,

    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "YOINK_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "YOINK_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// How durable a reservation is before /buy answers 202: `none` (as Redis's own
    /// persistence makes it), `local` (Redis fsyncs before replying: needs appendonly
    /// yes + appendfsync always) or `replica` (a replica acknowledged it: WAIT).
    #[arg(long, value_enum, env = "YOINK_DURABILITY", default_value_t = Level::None)]
    pub durability: Level,

    /// Replicas that must acknowledge a reservation with `--durability replica`.
    #[arg(long, env = "YOINK_DURABILITY_REPLICAS", default_value_t = 1)]
    pub durability_replicas: i64,

    /// Longest wait (ms) for them; past it /buy answers 503 not_durable (the
    /// reservation stands and a retry with the same Idempotency-Key returns it).
    #[arg(long, env = "YOINK_DURABILITY_TIMEOUT_MS", default_value_t = 100)]
    pub durability_timeout_ms: u64,

    /// Seconds between re-checks of Redis's persistence settings.
    #[arg(long, env = "YOINK_DURABILITY_CHECK_SECS", default_value_t = 10)]
    pub durability_check_secs: u64,

    /// Milliseconds between refreshes of the sales' position floors from PostgreSQL
    /// (and checks that Redis has not gone back behind them).
    #[arg(long, env = "YOINK_FENCE_REFRESH_MS", default_value_t = 1_000)]
    pub fence_refresh_ms: u64,
}

impl ApiArgs {
    /// Defaults for a listener bound elsewhere (tests).
    pub fn local() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            max_in_flight: 4096,
            header_timeout_secs: 10,
            shutdown_grace_secs: 10,
            durability: Level::None,
            durability_replicas: 1,
            durability_timeout_ms: 100,
            durability_check_secs: 10,
            fence_refresh_ms: 1_000,
        }
    }

    pub fn fence_refresh(&self) -> Duration {
        Duration::from_millis(self.fence_refresh_ms.max(10))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
