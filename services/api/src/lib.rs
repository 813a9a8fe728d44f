//! Yoink's HTTP API on raw hyper 1.x: `/buy`, `/sales`, `/reservations` (and the
//! checkout side's hold decisions), health and metrics. `run` serves on an already-bound listener, so tests bind port 0.
//!
//! The API never writes PostgreSQL on the `/buy` path: a buy is one Redis script call.

pub mod auth;
pub mod body;
pub mod config;
pub mod durability;
pub mod error;
pub mod fences;
pub mod log_limiter;
pub mod metrics;
pub mod response;
pub mod router;
pub mod routes;
pub mod sale_index;
pub mod server;
pub mod sold_out;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use yoink_core::{Keyspace, RedisConn, StoreArgs, db};

pub use config::ApiArgs;
pub use state::AppState;

/// Builds the shared state from settings, refusing settings out of range
/// (`ApiArgs::check`). Neither store needs to be up: both connect lazily, and requests
/// answer 503 until they are. The durability level is not verified here
/// (`durability::check_at_start` does, before `serve` takes buys).
pub async fn state(stores: &StoreArgs, args: &ApiArgs) -> Result<AppState, StartError> {
    args.check()?;
    let redis = RedisConn::open_waiting(stores)
        .await
        .map_err(StartError::Redis)?;
    let pool = db::pool(&stores.database_url, stores.pg_pool_size)?;
    let durability = durability::Durability::open(stores, args).await?;
    Ok(AppState {
        redis,
        keys: Keyspace::new(stores.key_prefix.clone()),
        pool,
        admin_token: auth::configured(args.admin_token.as_deref()),
        checkout_token: auth::configured(args.checkout_token.as_deref())
            .or_else(|| auth::configured(args.admin_token.as_deref())),
        reserve_permits: Arc::new(Semaphore::new(args.max_in_flight)),
        max_in_flight: args.max_in_flight,
        metrics: metrics::install(args.metrics),
        redis_timeout: stores.redis_timeout(),
        fences: Arc::new(fences::Fences::default()),
        sale_index: Arc::new(sale_index::SaleIndex::default()),
        durability: Arc::new(durability),
        sold_out: Arc::new(sold_out::SoldOut::new(Duration::from_millis(
            args.sold_out_recheck_ms,
        ))),
    })
}

/// Longest wait for the sales' floors before serving.
const FIRST_FLOORS: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("Redis settings: {0}")]
    Redis(#[source] redis::RedisError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Durability(#[from] durability::CheckError),
}

/// Serves the API on `listener` until `shutdown` resolves, with its background work:
/// the sales' floors kept fresh (and Redis checked against them), and the durability
/// level re-checked (and, for `replica`, the group-committed `WAIT`s).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    args: ApiArgs,
    shutdown: impl Future<Output = ()>,
) {
    // Know the sales' floors before the first buy (a fresh instance beside a Redis that
    // went back in time would otherwise sell until its first refresh); PostgreSQL being
    // down delays the start by at most this much.
    if let Ok(Err(err)) = tokio::time::timeout(FIRST_FLOORS, fences::refresh(&state)).await {
        tracing::warn!(error = %err, "Starting without the sales' floors from PostgreSQL.");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background = state
        .durability
        .spawn(state.redis.clone(), state.keys.clone(), &stop_rx);
    background.push(tokio::spawn(fences::watch(
        state.clone(),
        args.fence_refresh(),
        stop_rx,
    )));
    server::serve(listener, state, &args, shutdown).await;
    let _ = stop_tx.send(true);
    for task in background {
        let _ = task.await;
    }
}
