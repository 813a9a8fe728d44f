//! What `yoink reconcile --watch` exports to Prometheus beyond its per-sale gauges
//! (`lib.rs`): HELP text for every reconciler metric, the pass-error counter and its
//! kinds, all created at zero when the watch starts so the first failure is an
//! increase. (Named apart from the `metrics` crate, whose macros `lib.rs` uses.) Never
//! fails or slows a pass.

use metrics::{describe_counter, describe_gauge};

use crate::error::ReconcileError;
use crate::repair::REPAIRS;
use crate::{
    DIVERGENCE, HELD_UNITS, IN_FLIGHT, LAST_SUCCESS, LOST_RESERVATIONS, OVERDUE_HOLDS, OVERSOLD,
    RECOVERING,
};

/// Reconcile passes that failed, by kind (`error_kind`).
pub const ERRORS: &str = "yoink_reconcile_errors_total";

/// Sales `--watch --archive-after` archived (`lib.rs`).
pub const ARCHIVED: &str = "yoink_sales_archived_total";

/// Bytes of Redis memory a sale's keys take (`memory.rs`), by sale.
pub const REDIS_MEMORY: &str = "yoink_sale_redis_memory_bytes";

/// Every `kind` of `yoink_reconcile_errors_total`.
pub const ERROR_KINDS: [&str; 7] = [
    "redis",
    "postgres",
    "rebuild",
    "snapshot",
    "unknown_sale",
    "output",
    "other",
];

/// Every `kind` of `yoink_reconcile_repairs_total` (`repair.rs`).
pub const REPAIR_KINDS: [&str; 2] = ["reproject", "rebuild_redis"];

/// The `kind` label of a failed pass: which store or step failed.
pub fn error_kind(err: &ReconcileError) -> &'static str {
    match err {
        ReconcileError::Redis(_) => "redis",
        ReconcileError::Db(_) | ReconcileError::Ledger(_) => "postgres",
        ReconcileError::Rebuild { .. } | ReconcileError::RebuildBusy(_) => "rebuild",
        ReconcileError::BadSnapshot(_) => "snapshot",
        ReconcileError::UnknownSale(_) => "unknown_sale",
        ReconcileError::Output(_) | ReconcileError::Encode(_) => "output",
        ReconcileError::BadSaleId { .. }
        | ReconcileError::MetricsListen(_)
        | ReconcileError::BadFlag(_)
        | ReconcileError::Publish(_) => "other",
    }
}

/// Counts one failed pass.
pub fn pass_failed(err: &ReconcileError) {
    metrics::counter!(ERRORS, "kind" => error_kind(err)).increment(1);
}

/// Counts one sale archived by the watch.
pub fn archived(sale: &yoink_core::SaleId) {
    metrics::counter!(ARCHIVED, "sale" => sale.to_string()).increment(1);
}

/// Records what a sale's Redis keys take.
pub fn redis_memory(sale: &yoink_core::SaleId, bytes: u64) {
    metrics::gauge!(REDIS_MEMORY, "sale" => sale.to_string()).set(bytes as f64);
}

/// HELP text for every reconciler metric.
pub fn describe() {
    describe_gauge!(
        DIVERGENCE,
        "Units Redis and PostgreSQL disagree on past the grace period, by sale and kind (lost, phantom)."
    );
    describe_gauge!(
        OVERSOLD,
        "Units confirmed beyond the sale's stock, by sale (any value is a bug)."
    );
    describe_gauge!(
        IN_FLIGHT,
        "Units reserved in Redis and not yet decided in PostgreSQL (normal while projecting), by sale."
    );
    describe_gauge!(
        LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time of the last reconcile pass that completed."
    );
    describe_gauge!(
        LOST_RESERVATIONS,
        "Reservations answered 202 and lost with Redis before PostgreSQL saw them, by sale."
    );
    describe_gauge!(
        RECOVERING,
        "1 while a sale's Redis is behind PostgreSQL (suspended) past the grace period, by sale."
    );
    describe_gauge!(
        HELD_UNITS,
        "Units of holds still held in PostgreSQL, by sale."
    );
    describe_gauge!(
        OVERDUE_HOLDS,
        "Holds still held past their deadline plus the grace period, by sale."
    );
    describe_counter!(
        ERRORS,
        "Reconcile passes that failed, by kind (redis, postgres, rebuild, snapshot, unknown_sale, output, other)."
    );
    describe_gauge!(
        REDIS_MEMORY,
        metrics::Unit::Bytes,
        "Redis memory of the sale's keys (MEMORY USAGE, sampled for the large ones; 0 once archived), by sale."
    );
    describe_counter!(
        ARCHIVED,
        "Sales this watch archived (--archive-after): ended, drained and consistent; PostgreSQL keeps them, Redis no longer."
    );
    describe_counter!(
        REPAIRS,
        "Repairs applied by this process, by kind (reproject, rebuild_redis)."
    );
}

/// Creates the reconciler's counters at zero (errors and repairs, every kind).
pub fn register() {
    for kind in ERROR_KINDS {
        metrics::counter!(ERRORS, "kind" => kind).increment(0);
    }
    for kind in REPAIR_KINDS {
        metrics::counter!(REPAIRS, "kind" => kind).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn a_failed_pass_is_counted_by_kind_from_zero_with_help_text() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register();
        });
        let before = handle.render();
        for line in [
            "# HELP yoink_reconcile_errors_total ",
            "# HELP yoink_reconcile_repairs_total ",
            "yoink_reconcile_errors_total{kind=\"redis\"} 0",
            "yoink_reconcile_errors_total{kind=\"postgres\"} 0",
            "yoink_reconcile_repairs_total{kind=\"reproject\"} 0",
        ] {
            assert!(before.contains(line), "{line:?} missing from:\n{before}");
        }
        let outage = ReconcileError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        metrics::with_local_recorder(&recorder, || pass_failed(&outage));
        let after = handle.render();
        assert!(
            after.contains("yoink_reconcile_errors_total{kind=\"redis\"} 1"),
            "{after}"
        );
        for kind in ERROR_KINDS {
            let series = format!("yoink_reconcile_errors_total{{kind=\"{kind}\"}} ");
            assert!(
                before.contains(&series),
                "{series:?} missing from:\n{before}"
            );
        }
        assert_eq!(error_kind(&ReconcileError::BadSnapshot("x")), "snapshot");
    }
}
