//! Whether this process's stores answer, for the processes with no HTTP API of their own
//! (`project`, `relay`, `reconcile --watch`): a probe PINGs Redis and runs `SELECT 1` on
//! PostgreSQL every second, exports `yoink_store_up{store}`, logs once per change of
//! state (never once per retry), and `/readyz` on the metrics listener answers from it.
//!
//! Nothing here stops a process: a store that is down is waited for, and the work loops
//! retry on their own. Process-wide, like the metrics recorder.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::redis_store::RedisConn;

/// 1 while the store answers the probe, 0 while it does not.
pub const STORE_UP: &str = "yoink_store_up";

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last verdict on each store (unknown until probed).
#[derive(Debug, Default)]
struct States {
    redis: AtomicU8,
    postgres: AtomicU8,
}

static STATES: OnceLock<States> = OnceLock::new();

fn states() -> &'static States {
    STATES.get_or_init(States::default)
}

fn word(state: u8) -> &'static str {
    match state {
        UP => "ok",
        DOWN => "down",
        _ => "unknown",
    }
}

/// What `/readyz` answers: ready when no probed store is down.
pub fn report() -> (bool, Value) {
    let s = states();
    let (redis, postgres) = (
        s.redis.load(Ordering::Relaxed),
        s.postgres.load(Ordering::Relaxed),
    );
    let ready = redis != DOWN && postgres != DOWN;
    (
        ready,
        json!({
            "status": if ready { "ready" } else { "unavailable" },
            "redis": word(redis),
            "postgres": word(postgres),
        }),
    )
}

/// A store's state changed (what gets logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Answers,
    Back,
    Lost,
}

/// Records one probe result; the change to log, if the state changed.
fn record(name: &'static str, slot: &AtomicU8, up: bool) -> Option<Change> {
    let now = if up { UP } else { DOWN };
    metrics::gauge!(STORE_UP, "store" => name).set(f64::from(u8::from(up)));
    match (slot.swap(now, Ordering::Relaxed), now) {
        (DOWN, UP) => Some(Change::Back),
        (UNKNOWN, UP) => Some(Change::Answers),
        (UP | UNKNOWN, DOWN) => Some(Change::Lost),
        _ => None,
    }
}

fn log(name: &'static str, change: Option<Change>, error: &str) {
    match change {
        Some(Change::Answers) => tracing::info!(store = name, "Store answers."),
        Some(Change::Back) => tracing::info!(store = name, "Store is back."),
        Some(Change::Lost) => {
            tracing::warn!(store = name, error, "Store unreachable; waiting for it.")
        }
        None => {}
    }
}

/// Probes both stores every `every` until `stop` turns true (first probe at once).
pub async fn probe(redis: RedisConn, pool: Pool, every: Duration, mut stop: watch::Receiver<bool>) {
    let timeout = every.max(Duration::from_millis(500));
    loop {
        let mut conn = redis.clone();
        let redis_probe = tokio::time::timeout(timeout, async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        });
        let postgres_probe = tokio::time::timeout(timeout, async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let (r, p) = tokio::join!(redis_probe, postgres_probe);
        let r = r.unwrap_or_else(|_| Err("no answer in time".into()));
        let p = p.unwrap_or_else(|_| Err("no answer in time".into()));
        let s = states();
        let redis_error = r.as_ref().err().map_or("", String::as_str);
        log("redis", record("redis", &s.redis, r.is_ok()), redis_error);
        let postgres_error = p.as_ref().err().map_or("", String::as_str);
        log(
            "postgres",
            record("postgres", &s.postgres, p.is_ok()),
            postgres_error,
        );
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let slot = AtomicU8::new(UNKNOWN);
        let changes: Vec<Option<Change>> = [true, false, false, false, true, true]
            .into_iter()
            .map(|up| record("test", &slot, up))
            .collect();
        assert_eq!(
            changes,
            [
                Some(Change::Answers),
                Some(Change::Lost),
                None,
                None,
                Some(Change::Back),
                None
            ]
        );
    }
}
