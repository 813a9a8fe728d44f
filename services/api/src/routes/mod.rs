//! One module per route; each handler returns `Result<Response, ApiError>` and leaves
//! error responses and metrics to `error.rs` and `router.rs`.

pub mod buy;
pub mod health;
pub mod holds;
pub mod reservations;
pub mod sales;
