//! Yoink's shared core: what every service needs to agree on, in one place.
//!
//! - Identity and layout: ids (`ids`), Redis keys with one hash tag per sale (`keys`),
//!   stream events (`events`), positions (`position`).
//! - Redis: the Lua scripts and their typed calls (`scripts`), the shared connection
//!   (`redis_store`), the sale stream and its consumer group (`stream`).
//! - PostgreSQL: connections and migrations (`db`), sale creation and views (`sales`),
//!   the ledger of reservation fates, orders and outbox rows (`ledger`), holds that
//!   wait for payment and who wins their race (`holds`), the position floors and
//!   epochs (`epochs`).
//! - The rebuild of a suspended sale from the ledger (`rebuild`), which projectors and
//!   the reconciler's repair both run.
//! - Process plumbing: store settings (`config`), metrics (`telemetry`), whether the
//!   stores answer (`readiness`), shutdown (`shutdown`), retry pacing (`backoff`).
//!
//! It holds no HTTP, no CLI and no process-wide state of its own (the metrics recorder
//! aside): services pass it their parsed configuration and their connections.

pub mod archive;
pub mod backoff;
pub mod config;
pub mod db;
pub mod epochs;
pub mod events;
pub mod holds;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod position;
pub mod readiness;
pub mod rebuild;
pub mod redis_store;
pub mod sales;
pub mod scratch;
pub mod scripts;
pub mod shutdown;
pub mod stream;
pub mod telemetry;

pub use config::{StoreArgs, TelemetryArgs};
pub use ids::{IdError, ReservationId, SaleId, UserId};
pub use keys::Keyspace;
pub use position::Position;
pub use redis_store::RedisConn;
