//! Yoink's shared core: ids, Redis keys, stream events, the Lua scripts, store
//! connections and the schema. Every service builds on this crate.
//!
//! It holds no HTTP, no CLI and no process-wide state: services pass it their parsed
//! configuration and their connections.

pub mod config;
pub mod db;
pub mod epochs;
pub mod events;
pub mod ids;
pub mod keys;
pub mod position;
pub mod redis_store;
pub mod sales;
pub mod scripts;
pub mod stream;

pub use config::StoreArgs;
pub use ids::{IdError, ReservationId, SaleId, UserId};
pub use keys::Keyspace;
pub use position::Position;
pub use redis_store::RedisConn;
pub mod shutdown;
pub mod telemetry;
