//! `yoink serve` settings (flags or environment, defaults that work on a dev box), and
//! `ApiArgs::check`, which refuses values that would start a server that cannot work
//! (a bound of 0 buys in flight answers 503 to everyone; `WAIT 0` blocks forever).
//! Defaults are written once, in the clap attributes; nothing here re-types them.

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

    /// Bearer token of the checkout side (POST /reservations/{id}/confirm, /cancel,
    /// /extend); unset = the admin token; neither set = those endpoints refuse.
    #[arg(long, env = "YOINK_CHECKOUT_TOKEN", hide_env_values = true)]
    pub checkout_token: Option<String>,

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

    /// Milliseconds a `sold_out` answer from Redis is believed by this instance: buys of
    /// as many units or more are answered 409 without a script call meanwhile (buys with
    /// an Idempotency-Key always go to Redis). Units that come back are sold again at
    /// most this late. 0 turns the fast path off; at most 100.
    #[arg(long, env = "YOINK_SOLD_OUT_RECHECK_MS", default_value_t = 50)]
    pub sold_out_recheck_ms: u64,

    /// Milliseconds between refreshes of the sales' position floors from PostgreSQL
    /// (and checks that Redis has not gone back behind them).
    #[arg(long, env = "YOINK_FENCE_REFRESH_MS", default_value_t = 1_000)]
    pub fence_refresh_ms: u64,

    /// `off`: no metrics recorder at all (every metric call a no-op, `/metrics` an empty
    /// page), to measure what metrics cost (`loadtest/metrics-cost.sh`). Give it with
    /// `--metrics-listen off`, whose listener would otherwise install the recorder.
    #[arg(long, value_enum, env = "YOINK_METRICS", default_value_t = MetricsSwitch::On)]
    pub metrics: MetricsSwitch,
}

/// Whether the process records metrics (`--metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsSwitch {
    On,
    Off,
}

/// A flag whose value is outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} ({env}) must be {allowed}; got {value}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub allowed: String,
    pub value: String,
}

impl ApiArgs {
    /// Clap's defaults (`core::config::clap_defaults`: the environment is ignored, so
    /// a `YOINK_*` variable in the shell running the tests cannot change them),
    /// listening on port 0 (tests bind their own listener).
    pub fn local() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..yoink_core::config::clap_defaults()
        }
    }

    /// Refuses values a working server cannot have; the message names the flag, its
    /// variable and the allowed range.
    pub fn check(&self) -> Result<(), ConfigError> {
        let at_least = |flag, env, min: u64, value: u64| {
            if value >= min {
                Ok(())
            } else {
                Err(ConfigError {
                    flag,
                    env,
                    allowed: format!("at least {min}"),
                    value: value.to_string(),
                })
            }
        };
        // Past this tokio's semaphore panics instead of refusing.
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        if !(1..=most).contains(&self.max_in_flight) {
            return Err(ConfigError {
                flag: "max-in-flight",
                env: "YOINK_MAX_IN_FLIGHT",
                allowed: format!("at least 1 (and at most {most})"),
                value: self.max_in_flight.to_string(),
            });
        }
        let most_ms = u64::try_from(crate::sold_out::MAX_WINDOW.as_millis()).unwrap_or(100);
        if self.sold_out_recheck_ms > most_ms {
            return Err(ConfigError {
                flag: "sold-out-recheck-ms",
                env: "YOINK_SOLD_OUT_RECHECK_MS",
                allowed: format!("at most {most_ms}"),
                value: self.sold_out_recheck_ms.to_string(),
            });
        }
        at_least(
            "header-timeout-secs",
            "YOINK_HEADER_TIMEOUT_SECS",
            1,
            self.header_timeout_secs,
        )?;
        at_least(
            "shutdown-grace-secs",
            "YOINK_SHUTDOWN_GRACE_SECS",
            1,
            self.shutdown_grace_secs,
        )?;
        if self.durability_replicas < 1 {
            return Err(ConfigError {
                flag: "durability-replicas",
                env: "YOINK_DURABILITY_REPLICAS",
                allowed: "at least 1".into(),
                value: self.durability_replicas.to_string(),
            });
        }
        at_least(
            "durability-timeout-ms",
            "YOINK_DURABILITY_TIMEOUT_MS",
            1,
            self.durability_timeout_ms,
        )?;
        at_least(
            "durability-check-secs",
            "YOINK_DURABILITY_CHECK_SECS",
            1,
            self.durability_check_secs,
        )?;
        at_least(
            "fence-refresh-ms",
            "YOINK_FENCE_REFRESH_MS",
            10,
            self.fence_refresh_ms,
        )?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_settings_are_clap_defaults_on_port_zero_and_pass_the_check() {
        let args = ApiArgs::local();
        assert_eq!(args.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(args.max_in_flight, 4096);
        assert_eq!(args.fence_refresh_ms, 1_000);
        assert_eq!(args.durability, Level::None);
        assert!(args.admin_token.is_none());
        assert!(args.checkout_token.is_none());
        assert_eq!(args.check(), Ok(()));
    }

    #[test]
    fn every_numeric_flag_out_of_range_is_refused_by_name() {
        type BreakIt = fn(&mut ApiArgs);
        let cases: [(&str, BreakIt); 8] = [
            ("--max-in-flight", |a| a.max_in_flight = 0),
            ("--max-in-flight", |a| a.max_in_flight = usize::MAX),
            ("--header-timeout-secs", |a| a.header_timeout_secs = 0),
            ("--shutdown-grace-secs", |a| a.shutdown_grace_secs = 0),
            ("--durability-replicas", |a| a.durability_replicas = 0),
            ("--durability-timeout-ms", |a| a.durability_timeout_ms = 0),
            ("--durability-check-secs", |a| a.durability_check_secs = 0),
            ("--fence-refresh-ms", |a| a.fence_refresh_ms = 9),
        ];
        for (flag, break_it) in cases {
            let mut args = ApiArgs::local();
            break_it(&mut args);
            let err = args.check().expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{err}");
            assert!(err.contains("must be at least"), "{err}");
        }
        let mut args = ApiArgs::local();
        args.fence_refresh_ms = 10;
        args.max_in_flight = 1;
        assert_eq!(args.check(), Ok(()), "the bounds themselves are allowed");
    }
}
