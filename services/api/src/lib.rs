//! Yoink's HTTP API on raw hyper 1.x: `/buy`, `/sales`, `/reservations`, health and
//! metrics. `run` serves on an already-bound listener, so tests bind port 0.
//!
//! The API never writes PostgreSQL on the `/buy` path: a buy is one Redis script call.

pub mod config;
pub mod error;
pub mod metrics;
pub mod response;
pub mod router;
pub mod routes;
pub mod server;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use yoink_core::{Keyspace, RedisConn, StoreArgs, db, telemetry};

pub use config::ApiArgs;
pub use state::AppState;

/// Builds the shared state from settings. Neither store needs to be up: both connect
/// lazily, and requests answer 503 until they are.
pub async fn state(stores: &StoreArgs, args: &ApiArgs) -> Result<AppState, StartError> {
    let redis = RedisConn::open(stores).await.map_err(StartError::Redis)?;
    let pool = db::pool(&stores.database_url, stores.pg_pool_size)?;
    Ok(AppState {
        redis,
        keys: Keyspace::new(stores.key_prefix.clone()),
        pool,
        admin_token: args.admin_token.as_deref().map(Arc::from),
        reserve_permits: Arc::new(Semaphore::new(args.max_in_flight)),
        max_in_flight: args.max_in_flight,
        metrics: telemetry::prometheus(),
        redis_timeout: stores.redis_timeout(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Redis settings: {0}")]
    Redis(#[source] redis::RedisError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    args: ApiArgs,
    shutdown: impl Future<Output = ()>,
) {
    server::serve(listener, state, &args, shutdown).await;
}
