//! The projector: a member of consumer group `projectors` on every sale's stream,
//! turning each `reserved` event into exactly one order in PostgreSQL, plus the outbox
//! relay. Any number of projector processes may run at once.
//!
//! Exactly once comes from PostgreSQL (a fate row per reservation, unique), not from
//! Redis delivery: entries are acknowledged only after their commit, so a crash causes
//! redelivery, never loss.

pub mod consumer;
pub mod dead_letter;
pub mod entry;
pub mod error;
pub mod expiry;
pub mod held;
pub mod maintenance;
pub mod metrics;
pub mod reader;
pub mod relay;
pub mod supervisor;
pub mod trim;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinSet;
use yoink_core::backoff::Backoff;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db, telemetry};

pub use relay::RelayArgs;

/// `yoink project` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectorArgs {
    /// This consumer's name in the group (default: host-pid).
    #[arg(long, env = "YOINK_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries read per XREADGROUP, projected in one transaction.
    #[arg(long, env = "YOINK_BATCH_SIZE", default_value_t = 2_000)]
    pub batch_size: usize,
    /// Transactions a large batch is split into, written side by side on as many
    /// connections (PostgreSQL inserts on one core per transaction); the batch is
    /// acknowledged once all have committed. 1 writes each batch in one transaction.
    #[arg(long, env = "YOINK_WRITE_PARALLELISM", default_value_t = 2)]
    pub write_parallelism: usize,
    /// Milliseconds XREADGROUP blocks waiting for new entries.
    #[arg(long, env = "YOINK_BLOCK_MS", default_value_t = 1_000)]
    pub block_ms: u64,
    /// Entries pending longer than this (ms) are taken over by XAUTOCLAIM.
    #[arg(long, env = "YOINK_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,
    /// Milliseconds between reclaim passes.
    #[arg(long, env = "YOINK_CLAIM_INTERVAL_MS", default_value_t = 5_000)]
    pub claim_interval_ms: u64,
    /// Deliveries after which a permanently refused entry is dead-lettered.
    #[arg(long, env = "YOINK_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// Consumers idle this long (ms) with nothing pending are removed from the group.
    #[arg(long, env = "YOINK_CONSUMER_IDLE_DELETE_MS", default_value_t = 600_000)]
    pub consumer_idle_delete_ms: u64,
    /// Milliseconds between looks for new sales.
    #[arg(long, env = "YOINK_DISCOVER_INTERVAL_MS", default_value_t = 1_000)]
    pub discover_interval_ms: u64,
    /// Milliseconds between checks that Redis has not gone back behind PostgreSQL
    /// (a suspended sale is rebuilt on the next check).
    #[arg(long, env = "YOINK_FENCE_INTERVAL_MS", default_value_t = 500)]
    pub fence_interval_ms: u64,
    /// Most stream entries one trim pass removes from a sale's stream once PostgreSQL
    /// has them (acknowledged, below its high-water mark); 0 never trims.
    #[arg(long, env = "YOINK_TRIM_BATCH", default_value_t = 10_000)]
    pub trim_batch: u64,
    /// Milliseconds between trim passes of each sale's stream.
    #[arg(long, env = "YOINK_TRIM_INTERVAL_MS", default_value_t = 5_000)]
    pub trim_interval_ms: u64,
    /// Milliseconds between expiry sweeps of each sale with holds: a hold nobody
    /// confirmed is released at most about this long after its deadline.
    #[arg(long, env = "YOINK_EXPIRY_INTERVAL_MS", default_value_t = 200)]
    pub expiry_interval_ms: u64,
    /// Most due holds one sweep decides (one PostgreSQL transaction).
    #[arg(long, env = "YOINK_EXPIRY_BATCH", default_value_t = 1_000)]
    pub expiry_batch: usize,
    /// Seconds a batch in hand may keep retrying after SIGTERM.
    #[arg(long, env = "YOINK_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Do not run the outbox relay in this process.
    #[arg(long, env = "YOINK_NO_RELAY")]
    pub no_relay: bool,
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Where to serve /metrics ("off" to disable).
    #[arg(
        long,
        env = "YOINK_PROJECTOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9101"
    )]
    pub metrics_listen: String,
}

impl ProjectorArgs {
    pub fn claim_interval(&self) -> Duration {
        Duration::from_millis(self.claim_interval_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Every setting at its default, as `yoink project` with no flags: taken from the
    /// flag definitions above, never from the environment.
    pub fn defaults() -> Self {
        yoink_core::config::clap_defaults()
    }

    /// The defaults with a consumer name, no metrics listener and timings short enough
    /// for tests; trimming every 50 ms, so every test that runs a projector also runs
    /// the trimmer beside whatever it checks.
    pub fn local(consumer: &str) -> Self {
        let defaults = Self::defaults();
        Self {
            consumer: Some(consumer.to_owned()),
            batch_size: 500,
            block_ms: 200,
            claim_idle_ms: 1_000,
            claim_interval_ms: 200,
            max_deliveries: 3,
            discover_interval_ms: 100,
            fence_interval_ms: 200,
            expiry_interval_ms: 100,
            trim_interval_ms: 50,
            relay: RelayArgs {
                interval_ms: 50,
                ..defaults.relay
            },
            metrics_listen: "off".into(),
            ..defaults
        }
    }

    /// Cross-field checks: a reclaim must never steal entries a live projector is
    /// still reading and committing.
    pub fn check(&self) -> Result<(), String> {
        if self.claim_idle_ms < 2 * self.block_ms {
            return Err(format!(
                "--claim-idle-ms ({}) must be at least twice --block-ms ({})",
                self.claim_idle_ms, self.block_ms
            ));
        }
        if self.batch_size == 0
            || self.write_parallelism == 0
            || self.max_deliveries == 0
            || self.relay.batch <= 0
            || self.fence_interval_ms == 0
            || self.expiry_interval_ms == 0
            || self.expiry_batch == 0
        {
            return Err(
                "--batch-size, --write-parallelism, --max-deliveries, --relay-batch, \
                 --fence-interval-ms, --expiry-interval-ms and --expiry-batch must be > 0"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn consumer_name(&self) -> String {
        self.consumer.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Every sale to project: the Redis registry, plus the active sales PostgreSQL knows
/// had Redis state (a Redis that lost its data lost the registry too; their tasks then
/// find the sale behind and rebuild it). PostgreSQL being down only narrows the list.
async fn discover(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &deadpool_postgres::Pool,
) -> redis::RedisResult<HashSet<SaleId>> {
    let registered: Vec<String> = redis.smembers(keys.sales_registry()).await?;
    let mut sales: HashSet<SaleId> = registered
        .iter()
        .filter_map(|raw| match SaleId::parse(raw) {
            Ok(sale) => Some(sale),
            Err(_) => {
                tracing::warn!(sale = %raw, "Ignoring an invalid id in the sales registry.");
                None
            }
        })
        .collect();
    if let Ok(client) = pool.get().await
        && let Ok(active) = yoink_core::epochs::active_floors(&client).await
    {
        sales.extend(active.into_iter().map(|(sale, _)| sale));
    }
    Ok(sales)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Metrics(#[from] telemetry::MetricsListenError),
    #[error("publishing the metrics address (--metrics-sd-dir): {0}")]
    Publish(#[source] std::io::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// What every sale's projector runs with.
#[derive(Clone)]
struct Shared {
    stores: StoreArgs,
    keys: Keyspace,
    redis: RedisConn,
    pool: deadpool_postgres::Pool,
    args: ProjectorArgs,
    consumer: String,
}

/// One run of a sale's projector: opens its reader connection, then projects until
/// shutdown. A fresh reader connection per run, so a run that panicked leaves nothing
/// queued ahead of the next one's blocking reads.
async fn project_sale(shared: Shared, sale: SaleId, mut shutdown: watch::Receiver<bool>) {
    // BLOCK replies may take block_ms; the reader waits a bit longer.
    let timeout = Duration::from_millis(shared.args.block_ms + 5_000);
    let mut backoff = Backoff::new();
    let reader = loop {
        match RedisConn::dedicated(&shared.stores, Some(timeout)).await {
            Ok(reader) => break reader,
            Err(err) => {
                tracing::warn!(sale_id = %sale, error = %err, "Cannot open a reader connection.");
                if backoff.wait(&mut shutdown).await {
                    return;
                }
            }
        }
    };
    let Shared {
        keys,
        redis,
        pool,
        args,
        consumer,
        ..
    } = shared;
    consumer::SaleProjector::new(sale, keys, redis, reader, pool, args, consumer)
        .run(shutdown)
        .await;
}

/// Runs the projector (and the relay) until `shutdown` resolves, then finishes the
/// batches in hand and returns.
pub async fn run(
    stores: &StoreArgs,
    args: ProjectorArgs,
    sd_dir: Option<&std::path::Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    args.check().map_err(StartError::Config)?;
    let consumer = args.consumer_name();
    let keys = Keyspace::new(stores.key_prefix.clone());
    let mut redis = RedisConn::open_waiting(stores).await?;
    let pool = db::pool(&stores.database_url, stores.pg_pool_size)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let _ = telemetry::prometheus();
    metrics::describe();
    metrics::register();
    telemetry::watch_runtime();
    tasks.spawn(metrics::sample_pool(
        pool.clone(),
        metrics::POOL_SAMPLE_EVERY,
        stop_rx.clone(),
    ));
    let mut _published = None;
    if let Some(listener) = telemetry::bind_metrics(&args.metrics_listen, "projector").await? {
        if let (Some(dir), Ok(addr)) = (sd_dir, listener.local_addr()) {
            _published = Some(
                telemetry::ScrapeTarget::publish(dir, "projector", addr)
                    .map_err(StartError::Publish)?,
            );
        }
        let mut stop = stop_rx.clone();
        tasks.spawn(telemetry::serve_metrics(listener, async move {
            let _ = stop.changed().await;
        }));
    }

    if !args.no_relay {
        tasks.spawn(relay::run(
            pool.clone(),
            redis.clone(),
            keys.clone(),
            args.relay.clone(),
            stop_rx.clone(),
        ));
    }
    tracing::info!(consumer = %consumer, batch = args.batch_size, claim_idle_ms = args.claim_idle_ms, max_deliveries = args.max_deliveries, "Projector started.");

    let shared = Shared {
        stores: stores.clone(),
        keys: keys.clone(),
        redis: redis.clone(),
        pool: pool.clone(),
        args: args.clone(),
        consumer: consumer.clone(),
    };
    let mut running: HashSet<SaleId> = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        match discover(&mut redis, &keys, &pool).await {
            Ok(sales) => {
                for sale in sales {
                    if !running.insert(sale.clone()) {
                        continue;
                    }
                    metrics::register_sale(&sale);
                    let start = {
                        let shared = shared.clone();
                        let sale = sale.clone();
                        let stop = stop_rx.clone();
                        move || project_sale(shared.clone(), sale.clone(), stop.clone())
                    };
                    tasks.spawn(supervisor::supervise_sale(
                        sale,
                        pool.clone(),
                        start,
                        stop_rx.clone(),
                    ));
                }
            }
            Err(err) => {
                metrics::transient("redis");
                tracing::warn!(error = %err, "Cannot list sales.");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.discover_interval_ms)) => {},
            () = &mut shutdown => break,
        }
    }
    tracing::info!("Stopping: finishing the batches in hand.");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("Projector stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_settings_are_the_flag_defaults_with_shorter_timings() {
        let defaults = ProjectorArgs::defaults();
        assert_eq!(defaults.consumer, None);
        assert_eq!(defaults.relay.batch, 500);
        let local = ProjectorArgs::local("t");
        assert_eq!(local.consumer.as_deref(), Some("t"));
        assert_eq!(local.metrics_listen, "off");
        assert_eq!(local.relay.batch, defaults.relay.batch);
        assert_eq!(local.shutdown_grace_secs, defaults.shutdown_grace_secs);
        assert!(local.claim_idle_ms < defaults.claim_idle_ms);
        assert_eq!(local.check(), Ok(()));
        assert_eq!(defaults.check(), Ok(()));
    }
}
