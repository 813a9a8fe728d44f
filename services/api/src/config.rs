//! `yoink serve` settings (flags or environment, defaults that work on a dev box).

use std::net::SocketAddr;
use std::time::Duration;

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
        }
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
