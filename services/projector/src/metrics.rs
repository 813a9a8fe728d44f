//! The projector's metric names (see `observability/` for dashboards and alerts).

pub const EVENTS: &str = "yoink_projector_events_total";
pub const BATCH_SIZE: &str = "yoink_projector_batch_size";
pub const BATCH_SECONDS: &str = "yoink_projector_batch_seconds";
pub const PENDING: &str = "yoink_projector_pending";
pub const LAG: &str = "yoink_projector_lag";
pub const DEAD_LETTERS: &str = "yoink_dead_letters_total";
/// Units given back to stock by a dead-letter release.
pub const RELEASED_UNITS: &str = "yoink_projector_released_units_total";
pub const TRANSIENT_ERRORS: &str = "yoink_projector_transient_errors_total";
pub const OUTBOX_PUBLISHED: &str = "yoink_outbox_published_total";
pub const OUTBOX_UNPUBLISHED: &str = "yoink_outbox_unpublished";
pub const POOL_IN_USE: &str = "yoink_pg_pool_in_use";
pub const POOL_SIZE: &str = "yoink_pg_pool_size";
/// 1 while a sale is suspended (Redis went back in time, a rebuild is due).
pub const SUSPENDED: &str = "yoink_sale_suspended";
/// A sale's projector task panicked and was started again.
pub const TASK_RESTARTS: &str = "yoink_projector_task_restarts_total";
/// Dead-lettered reservations whose units could not be given back: Redis's record of
/// the reservation was unreadable (the units stay taken until a repair).
pub const UNRELEASABLE: &str = "yoink_projector_unreleasable_total";

pub fn event(outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(EVENTS, "outcome" => outcome).increment(n);
    }
}

pub fn transient(kind: &'static str) {
    metrics::counter!(TRANSIENT_ERRORS, "kind" => kind).increment(1);
}

pub fn pool(pool: &deadpool_postgres::Pool) {
    let status = pool.status();
    metrics::gauge!(POOL_SIZE).set(status.max_size as f64);
    metrics::gauge!(POOL_IN_USE).set((status.size - status.available) as f64);
}

pub fn counter_dead_letter(sale: &yoink_core::SaleId) {
    metrics::counter!(DEAD_LETTERS, "sale" => sale.to_string()).increment(1);
}

pub fn suspended(sale: &yoink_core::SaleId, suspended: bool) {
    metrics::gauge!(SUSPENDED, "sale" => sale.to_string()).set(f64::from(u8::from(suspended)));
}

pub fn task_restarted(sale: &yoink_core::SaleId) {
    metrics::counter!(TASK_RESTARTS, "sale" => sale.to_string()).increment(1);
}

pub fn unreleasable(sale: &yoink_core::SaleId) {
    metrics::counter!(UNRELEASABLE, "sale" => sale.to_string()).increment(1);
}
