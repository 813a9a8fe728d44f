//! What every request handler shares: store handles, keys, the bearer tokens, the bound
//! on reserve calls in flight, the sales' position floors, the sales a reservation id
//! can belong to, the durability level and the recent sold-out answers.
//! Cheap to clone; holds no per-request state.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use yoink_core::{Keyspace, RedisConn};

use crate::durability::Durability;
use crate::fences::Fences;
use crate::sale_index::SaleIndex;
use crate::sold_out::SoldOut;

#[derive(Clone)]
pub struct AppState {
    pub redis: RedisConn,
    pub keys: Keyspace,
    pub pool: Pool,
    /// `POST /sales`; `None`: admin endpoints are off.
    pub admin_token: Option<Arc<str>>,
    /// The hold decisions (`/reservations/{id}/confirm`, ...): `--checkout-token`, else
    /// the admin token; `None`: those endpoints are off.
    pub checkout_token: Option<Arc<str>>,
    /// Permits for reserve scripts in flight; `try_acquire` failing means 503 now.
    pub reserve_permits: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub metrics: PrometheusHandle,
    /// Longest wait for one Redis call, reconnects included.
    pub redis_timeout: Duration,
    /// What this instance knows of each sale's position (the reserve floor).
    pub fences: Arc<Fences>,
    /// Which sales a reservation id's tag can name (`GET /reservations/{id}`).
    pub sale_index: Arc<SaleIndex>,
    pub durability: Arc<Durability>,
    /// Recent `sold_out` answers: the crowd after a sell-out is answered without Redis.
    pub sold_out: Arc<SoldOut>,
}

impl AppState {
    /// Reserve calls holding a permit right now.
    pub fn reserve_calls_in_flight(&self) -> usize {
        self.max_in_flight - self.reserve_permits.available_permits()
    }
}
