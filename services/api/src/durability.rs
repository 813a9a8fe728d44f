//! How durable a 202 is (`serve --durability none|local|replica`), and what makes it so.
//!
//! - `none`: the 202 follows the reserve script's reply. Redis's persistence settings
//!   decide what a crash loses; they are read at start (`CONFIG GET`), logged as a loss
//!   window and shown on `/readyz`.
//! - `local`: Redis must run with `appendonly yes` and `appendfsync always`, so it
//!   fsyncs every write before it replies. Checked at start (refusing to start
//!   otherwise) and every `--durability-check-secs`; while the settings do not hold,
//!   `/buy` answers 503 `not_durable` and takes nothing.
//! - `replica`: after the reserve script, `WAIT <replicas> <timeout>` until a replica
//!   has the write. One `WAIT` covers every buy whose reply arrived before it was sent
//!   (group commit), on a connection of its own, preceded by a one-key write so that it
//!   covers every earlier write of any client (a replayed reservation written by
//!   another instance included). On timeout the buy answers 503 `not_durable`: the
//!   reservation stands, and a retry with the same Idempotency-Key returns it.
//!
//! Nothing here may answer 202 for a level it has not verified.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};
use yoink_core::{Keyspace, RedisConn, StoreArgs};

use crate::config::ApiArgs;

pub const WAITS: &str = "yoink_durability_waits_total";
pub const WAIT_SECONDS: &str = "yoink_durability_wait_seconds";
/// 1 while Redis's settings satisfy the level asked for, else 0.
pub const SATISFIED: &str = "yoink_durability_satisfied";

/// How durable a reservation must be before `/buy` answers 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As durable as Redis's own persistence settings make it.
    None,
    /// Fsynced by Redis before it replies (AOF with `appendfsync always`).
    Local,
    /// Acknowledged by a replica (`WAIT`).
    Replica,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Local => "local",
            Level::Replica => "replica",
        }
    }
}

/// Redis's persistence settings, as `CONFIG GET` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Persistence {
    pub appendonly: String,
    pub appendfsync: String,
    pub save: String,
}

impl Persistence {
    /// What a crash of Redis (or of its machine) loses with these settings.
    pub fn loss_window(&self) -> String {
        if self.appendonly == "yes" {
            match self.appendfsync.as_str() {
                "always" => "nothing Redis acknowledged: it fsyncs every write before replying".into(),
                "everysec" => "up to about 2 s of acknowledged writes on a crash of the machine (AOF fsynced every second); nothing on a crash of Redis alone".into(),
                _ => "whatever the OS had not flushed on a crash of the machine (AOF never fsynced by Redis, typically up to 30 s); nothing on a crash of Redis alone".into(),
            }
        } else if self.save.trim().is_empty() {
            "everything: Redis keeps nothing on disk (no AOF, no snapshots), so a restart starts empty".into()
        } else {
            format!(
                "every write since the last snapshot (no AOF; snapshot rules \"{}\": up to the longest interval when writes are few)",
                self.save
            )
        }
    }

    /// Why these settings do not give `local` durability, naming what to change.
    pub fn local_shortfall(&self) -> Option<String> {
        let mut wrong = Vec::new();
        if self.appendonly != "yes" {
            wrong.push(format!("appendonly is {:?}, need \"yes\"", self.appendonly));
        }
        if self.appendfsync != "always" {
            wrong.push(format!(
                "appendfsync is {:?}, need \"always\"",
                self.appendfsync
            ));
        }
        (!wrong.is_empty()).then(|| {
            format!(
                "--durability local needs Redis to fsync before replying: {} (redis-server --appendonly yes --appendfsync always, or CONFIG SET)",
                wrong.join("; ")
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Redis refuses `CONFIG GET` (managed Redis, renamed command, ACL).
    #[error("cannot read Redis's persistence settings: CONFIG GET refused: {0}")]
    ConfigRefused(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Unsatisfied(String),
}

/// Reads `appendonly`, `appendfsync` and `save`.
pub async fn read_persistence(redis: &mut RedisConn) -> Result<Persistence, CheckError> {
    let reply: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .arg("appendfsync")
        .arg("save")
        .query_async(redis)
        .await;
    let mut settings = match reply {
        Ok(settings) => settings,
        Err(err) if yoink_core::redis_store::is_unavailable(&err) => return Err(err.into()),
        Err(err) => return Err(CheckError::ConfigRefused(err.to_string())),
    };
    let mut take = |name: &str| settings.remove(name).unwrap_or_default();
    Ok(Persistence {
        appendonly: take("appendonly"),
        appendfsync: take("appendfsync"),
        save: take("save"),
    })
}

/// Replicas connected to the Redis we talk to (`INFO replication`).
async fn connected_replicas(redis: &mut RedisConn) -> Result<i64, CheckError> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(redis)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// The level asked for, its last verdict, and (for `replica`) the group committer.
pub struct Durability {
    pub level: Level,
    /// Replicas a `WAIT` must hear from (`replica`).
    replicas: i64,
    /// Longest `WAIT` (`replica`).
    wait_timeout: Duration,
    /// Between re-checks of Redis's settings.
    check_every: Duration,
    /// False while `local`'s settings do not hold (or could not be read); read on
    /// every buy, so an atomic, not a lock.
    satisfied: AtomicBool,
    /// What `/readyz` shows, kept fresh by `monitor`.
    report: RwLock<Value>,
    /// The group committer and its connection (`replica` only).
    replica: Option<(Arc<ReplicaWait>, RedisConn)>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Durability {
    /// The level of `args`, not verified yet (`local` refuses buys until the first
    /// check passes). Opens `replica`'s own connection; refuses `replica` on a Redis
    /// Cluster, where one `WAIT` cannot cover every shard.
    pub async fn open(stores: &StoreArgs, args: &ApiArgs) -> Result<Self, CheckError> {
        let level = args.durability;
        let wait_timeout = Duration::from_millis(args.durability_timeout_ms);
        let replica = if level == Level::Replica {
            if stores.redis_cluster {
                return Err(CheckError::Unsatisfied(
                    "--durability replica is not supported on Redis Cluster (WAIT covers one node); use local".into(),
                ));
            }
            if wait_timeout >= stores.redis_timeout() {
                return Err(CheckError::Unsatisfied(format!(
                    "--durability-timeout-ms ({}) must be below --redis-timeout-ms ({}): a buy waits for both",
                    args.durability_timeout_ms, stores.redis_timeout_ms
                )));
            }
            let conn =
                RedisConn::dedicated(stores, Some(wait_timeout + Duration::from_secs(1))).await?;
            Some((ReplicaWait::new(), conn))
        } else {
            None
        };
        Ok(Self {
            level,
            replicas: args.durability_replicas,
            wait_timeout,
            check_every: Duration::from_secs(args.durability_check_secs.max(1)),
            satisfied: AtomicBool::new(level != Level::Local),
            report: RwLock::new(json!({ "level": level, "redis": "not checked yet" })),
            replica,
        })
    }

    /// Starts the re-checks and (for `replica`) the group committer, until `stop`.
    pub fn spawn(
        self: &Arc<Self>,
        redis: RedisConn,
        keys: Keyspace,
        stop: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(monitor(self.clone(), redis, stop.clone()))];
        if let Some((wait, conn)) = &self.replica {
            tasks.push(tokio::spawn(wait.clone().run(
                conn.clone(),
                keys,
                self.replicas,
                self.wait_timeout,
                stop.clone(),
            )));
        }
        tasks
    }

    /// False while a reservation could not be made as durable as asked.
    pub fn satisfied(&self) -> bool {
        self.satisfied.load(Ordering::Relaxed)
    }

    /// For `/readyz`.
    pub fn report(&self) -> Value {
        self.report.read().map_or(Value::Null, |r| r.clone())
    }

    /// With `replica`: waits until a replica has every write made so far. Ok at once
    /// for the other levels.
    pub async fn covered(&self) -> Result<(), NotDurable> {
        match &self.replica {
            Some((wait, _)) => wait.covered().await,
            None => Ok(()),
        }
    }

    /// Reads Redis's settings and records the verdict. Err only when Redis could not
    /// be asked (down), or, for `local`, when the settings do not hold.
    pub async fn check(&self, redis: &mut RedisConn) -> Result<(), CheckError> {
        let persistence = read_persistence(redis).await;
        let (satisfied, report, outcome) = match (&persistence, self.level) {
            (Err(CheckError::Redis(_)), _) => {
                return persistence.map(|_| ());
            }
            (Err(err), Level::Local) => (
                false,
                json!({ "level": self.level, "redis": err.to_string() }),
                Err(CheckError::Unsatisfied(format!(
                    "--durability local cannot be verified: {err}"
                ))),
            ),
            (Err(err), _) => (
                true,
                json!({ "level": self.level, "redis": err.to_string(), "loss_window": "unknown" }),
                Ok(()),
            ),
            (Ok(p), level) => {
                let shortfall = (level == Level::Local)
                    .then(|| p.local_shortfall())
                    .flatten();
                let mut report =
                    json!({ "level": level, "redis": p, "loss_window": p.loss_window() });
                if level == Level::Replica {
                    report["replicas"] = json!(connected_replicas(redis).await?);
                    report["replicas_needed"] = json!(self.replicas);
                }
                match shortfall {
                    Some(why) => {
                        report["problem"] = json!(why);
                        (false, report, Err(CheckError::Unsatisfied(why)))
                    }
                    None => (true, report, Ok(())),
                }
            }
        };
        metrics::gauge!(SATISFIED, "level" => self.level.as_str())
            .set(f64::from(u8::from(satisfied)));
        self.satisfied.store(satisfied, Ordering::Relaxed);
        if let Ok(mut shown) = self.report.write() {
            *shown = report;
        }
        outcome
    }
}

/// Checks the level before `serve` takes buys: waits for Redis while it is down
/// (logging once), then refuses to start (Err) when `local`'s settings do not hold.
/// Logs the loss window of the settings found.
pub async fn check_at_start(
    durability: &Durability,
    redis: &mut RedisConn,
) -> Result<(), CheckError> {
    let mut delay = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match durability.check(redis).await {
            Err(CheckError::Redis(err)) => {
                if !logged {
                    tracing::warn!(error = %err, "Waiting for Redis to check its persistence settings.");
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
            Ok(()) => {
                let report = durability.report();
                if report["redis"].is_string() {
                    tracing::warn!(level = durability.level.as_str(), redis = %report["redis"], "Cannot read Redis's persistence settings: what a crash of Redis loses is unknown.");
                } else {
                    tracing::info!(level = durability.level.as_str(), status = %report, "Durability checked.");
                }
                return Ok(());
            }
        }
    }
}

/// Re-checks every `check_every` until `stop`; logs each change of verdict once.
async fn monitor(
    durability: Arc<Durability>,
    mut redis: RedisConn,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_ok = durability.satisfied();
    loop {
        tokio::select! {
            () = tokio::time::sleep(durability.check_every) => {},
            _ = stop.changed() => return,
        }
        let verdict = durability.check(&mut redis).await;
        match verdict {
            Ok(()) if !was_ok => {
                tracing::info!(level = durability.level.as_str(), "Durability restored.");
                was_ok = true;
            }
            Err(CheckError::Unsatisfied(why)) if was_ok => {
                tracing::error!(problem = %why, "Durability lost: /buy answers 503 not_durable until it is back.");
                was_ok = false;
            }
            _ => {}
        }
    }
}

/// A buy whose reservation no replica acknowledged in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no replica acknowledged the write in time")]
pub struct NotDurable;

type Waiter = oneshot::Sender<Result<(), NotDurable>>;

/// Group commit of `WAIT`: every buy whose reply arrived before a `WAIT` was sent is
/// covered by it; buys arriving meanwhile share the next one.
pub struct ReplicaWait {
    waiters: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl ReplicaWait {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            waiters: Mutex::new(Vec::new()),
            wake: Notify::new(),
        })
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves once a `WAIT` sent after this call returned enough replicas.
    pub async fn covered(&self) -> Result<(), NotDurable> {
        let (tx, rx) = oneshot::channel();
        self.waiters().push(tx);
        self.wake.notify_one();
        rx.await.unwrap_or(Err(NotDurable))
    }

    /// Sends the `WAIT`s until `stop`, on `conn` (a connection of its own: a `WAIT`
    /// blocks the connection it is sent on).
    async fn run(
        self: Arc<Self>,
        mut conn: RedisConn,
        keys: Keyspace,
        replicas: i64,
        timeout: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let probe = keys.durability_probe();
        loop {
            let batch = std::mem::take(&mut *self.waiters());
            if batch.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    _ = stop.changed() => return,
                }
            }
            let started = Instant::now();
            // The INCR makes this connection's last write the newest of all, so the
            // WAIT covers every earlier write of every client.
            let acked: redis::RedisResult<(i64, i64)> = redis::pipe()
                .cmd("INCR")
                .arg(&probe)
                .cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            let outcome = match acked {
                Ok((_, n)) if n >= replicas => Ok(()),
                Ok(_) => Err(NotDurable),
                Err(err) => {
                    tracing::warn!(error = %err, "WAIT failed.");
                    Err(NotDurable)
                }
            };
            let label = if outcome.is_ok() { "acked" } else { "timeout" };
            metrics::counter!(WAITS, "outcome" => label).increment(1);
            metrics::histogram!(WAIT_SECONDS).record(started.elapsed().as_secs_f64());
            for waiter in batch {
                let _ = waiter.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(appendonly: &str, appendfsync: &str, save: &str) -> Persistence {
        Persistence {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            save: save.into(),
        }
    }

    #[test]
    fn local_needs_an_aof_fsynced_before_every_reply_and_names_what_to_change() {
        assert_eq!(settings("yes", "always", "").local_shortfall(), None);
        let why = settings("yes", "everysec", "")
            .local_shortfall()
            .expect("everysec is not local");
        assert!(
            why.contains("appendfsync") && why.contains("always"),
            "{why}"
        );
        assert!(!why.contains("appendonly is"), "{why}");
        let why = settings("no", "everysec", "3600 1")
            .local_shortfall()
            .expect("no AOF is not local");
        assert!(
            why.contains("appendonly") && why.contains("appendfsync"),
            "{why}"
        );
    }

    #[test]
    fn the_loss_window_says_what_each_setting_can_lose() {
        assert!(
            settings("no", "everysec", "")
                .loss_window()
                .contains("everything")
        );
        assert!(
            settings("no", "everysec", "3600 1 300 100")
                .loss_window()
                .contains("3600 1 300 100")
        );
        assert!(
            settings("yes", "everysec", "")
                .loss_window()
                .contains("2 s")
        );
        assert!(
            settings("yes", "always", "")
                .loss_window()
                .starts_with("nothing")
        );
    }
}
