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
pub mod metrics;
pub mod relay;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinSet;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db, telemetry};

/// `yoink project` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectorArgs {
    /// This consumer's name in the group (default: host-pid).
    #[arg(long, env = "YOINK_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries read per XREADGROUP, projected in one transaction.
    #[arg(long, env = "YOINK_BATCH_SIZE", default_value_t = 2_000)]
    pub batch_size: usize,
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
    /// Seconds a batch in hand may keep retrying after SIGTERM.
    #[arg(long, env = "YOINK_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Do not run the outbox relay in this process.
    #[arg(long, env = "YOINK_NO_RELAY")]
    pub no_relay: bool,
    /// Outbox rows published per relay transaction.
    #[arg(long, env = "YOINK_RELAY_BATCH", default_value_t = 500)]
    pub relay_batch: i64,
    /// Milliseconds between relay passes when the outbox is drained.
    #[arg(long, env = "YOINK_RELAY_INTERVAL_MS", default_value_t = 200)]
    pub relay_interval_ms: u64,
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

    /// Defaults, with a consumer name and no metrics listener (tests).
    pub fn local(consumer: &str) -> Self {
        Self {
            consumer: Some(consumer.to_owned()),
            batch_size: 500,
            block_ms: 200,
            claim_idle_ms: 1_000,
            claim_interval_ms: 200,
            max_deliveries: 3,
            consumer_idle_delete_ms: 600_000,
            discover_interval_ms: 100,
            fence_interval_ms: 200,
            shutdown_grace_secs: 10,
            no_relay: false,
            relay_batch: 500,
            relay_interval_ms: 50,
            metrics_listen: "off".into(),
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
            || self.max_deliveries == 0
            || self.relay_batch <= 0
            || self.fence_interval_ms == 0
        {
            return Err(
                "--batch-size, --max-deliveries, --relay-batch and --fence-interval-ms must be > 0"
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

    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics_listen == "off" {
            return Ok(None);
        }
        self.metrics_listen
            .parse()
            .map(Some)
            .map_err(|e| format!("--metrics-listen {}: {e}", self.metrics_listen))
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
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// Runs the projector (and the relay) until `shutdown` resolves, then finishes the
/// batches in hand and returns.
pub async fn run(
    stores: &StoreArgs,
    args: ProjectorArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    args.check().map_err(StartError::Config)?;
    let consumer = args.consumer_name();
    let keys = Keyspace::new(stores.key_prefix.clone());
    let mut redis = RedisConn::open(stores).await?;
    let pool = db::pool(&stores.database_url, stores.pg_pool_size)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if let Some(addr) = args.metrics_addr().map_err(StartError::Config)? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Config(format!("binding metrics on {addr}: {e}")))?;
        let mut stop = stop_rx.clone();
        tasks.spawn(telemetry::serve_metrics(listener, async move {
            let _ = stop.changed().await;
        }));
        tracing::info!(%addr, "Serving projector metrics.");
    }

    if !args.no_relay {
        tasks.spawn(relay::run(
            pool.clone(),
            redis.clone(),
            keys.clone(),
            args.relay_batch,
            Duration::from_millis(args.relay_interval_ms),
            stop_rx.clone(),
        ));
    }
    tracing::info!(consumer = %consumer, batch = args.batch_size, claim_idle_ms = args.claim_idle_ms, max_deliveries = args.max_deliveries, "Projector started.");

    let mut running: HashSet<SaleId> = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        match discover(&mut redis, &keys, &pool).await {
            Ok(sales) => {
                for sale in sales {
                    if running.contains(&sale) {
                        continue;
                    }
                    // BLOCK replies may take block_ms; the reader waits a bit longer.
                    let timeout = Duration::from_millis(args.block_ms + 5_000);
                    let reader = match RedisConn::dedicated(stores, Some(timeout)).await {
                        Ok(r) => r,
                        Err(err) => {
                            tracing::warn!(error = %err, "Cannot open a reader connection.");
                            continue;
                        }
                    };
                    running.insert(sale.clone());
                    let projector = consumer::SaleProjector::new(
                        sale,
                        keys.clone(),
                        redis.clone(),
                        reader,
                        pool.clone(),
                        args.clone(),
                        consumer.clone(),
                    );
                    tasks.spawn(projector.run(stop_rx.clone()));
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
