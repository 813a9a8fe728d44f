//! The projector's metric names, their HELP text, and the helpers that record them (see
//! `observability/` for dashboards and alerts).
//!
//! Every counter and histogram of a known label set exists, at zero, from the start
//! (`register`) or from the moment a sale's projector starts (`register_sale`), so the
//! first dead letter already shows as an increase. The pool gauges are read from the
//! pool every `POOL_SAMPLE_EVERY` (`sample_pool`), never around a batch. Recording a
//! metric must never block or fail projection.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use tokio::sync::watch;
use yoink_core::{holds, rebuild, telemetry};

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
/// PostgreSQL connections of this process's pool checked out right now.
pub const POOL_IN_USE: &str = "yoink_pg_pool_in_use";
/// Tasks waiting for a connection of this process's pool right now.
pub const POOL_WAITING: &str = "yoink_pg_pool_waiting";
/// Connections this process's pool holds open (in use or idle).
pub const POOL_OPEN: &str = "yoink_pg_pool_open";
/// The pool's bound (`--pg-pool-size`).
pub const POOL_SIZE: &str = "yoink_pg_pool_size";
/// 1 while a sale is suspended (Redis went back in time, a rebuild is due).
pub const SUSPENDED: &str = "yoink_sale_suspended";
/// A sale's projector task panicked and was started again.
pub const TASK_RESTARTS: &str = "yoink_projector_task_restarts_total";
/// Dead-lettered reservations whose units could not be given back: Redis's record of
/// the reservation was unreadable (the units stay taken until a repair).
pub const UNRELEASABLE: &str = "yoink_projector_unreleasable_total";
/// Stream entries trimmed because PostgreSQL has them (`trim.rs`), by sale.
pub const TRIMMED: &str = "yoink_stream_trimmed_entries_total";

/// How often the pool gauges are read from the pool.
pub const POOL_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Every `outcome` of `yoink_projector_events_total`.
pub const EVENT_OUTCOMES: [&str; 7] = [
    "confirmed",
    "held",
    "duplicate",
    "released_ack",
    "hold_ack",
    "dead_lettered",
    "deleted",
];

/// Every `kind` of `yoink_projector_transient_errors_total` (`ProjectError::kind`, and
/// the loops that count their own).
pub const TRANSIENT_KINDS: [&str; 8] = [
    "redis",
    "postgres",
    "recovering",
    "malformed",
    "unexpected",
    "expiry",
    "dead_letter",
    "relay",
];

/// HELP text for every metric the projector records.
pub fn describe() {
    describe_counter!(
        EVENTS,
        "Stream entries projected, by outcome (confirmed, held, duplicate, released_ack, hold_ack, dead_lettered, deleted)."
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Entries in one projected batch.");
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time to project one batch (read to acknowledged)."
    );
    describe_gauge!(
        PENDING,
        "Entries delivered to a projector and not yet acknowledged, by sale."
    );
    describe_gauge!(
        LAG,
        "Entries of the sale's stream not yet delivered to the projectors' group, by sale."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Entries moved to the sale's dead-letter stream, by sale."
    );
    describe_counter!(
        RELEASED_UNITS,
        "Units given back to stock (dead-letter releases and expired holds), by sale."
    );
    describe_relay();
    describe_gauge!(
        POOL_IN_USE,
        "PostgreSQL connections of the projector's pool checked out (sampled every second)."
    );
    describe_gauge!(
        POOL_WAITING,
        "Tasks waiting for a connection of the projector's pool (sampled every second)."
    );
    describe_gauge!(
        POOL_OPEN,
        "Connections the projector's pool holds open, in use or idle (sampled every second)."
    );
    describe_gauge!(POOL_SIZE, "The projector's pool bound (--pg-pool-size).");
    describe_gauge!(
        SUSPENDED,
        "1 while a sale is suspended because Redis went back in time (a rebuild is due), by sale."
    );
    describe_counter!(
        TASK_RESTARTS,
        "Times a sale's projector task panicked and was started again, by sale."
    );
    describe_counter!(
        UNRELEASABLE,
        "Dead-lettered reservations whose units could not be given back (Redis's record unreadable), by sale."
    );
    describe_counter!(
        TRIMMED,
        "Stream entries removed from Redis because PostgreSQL has them (acknowledged, below its high-water mark), by sale."
    );
}

/// HELP text for the relay's metrics, and its series at zero: also for `yoink relay`
/// alone, whose process records nothing else of the projector's.
pub fn describe_relay() {
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Outbox rows the relay published downstream."
    );
    describe_gauge!(OUTBOX_UNPUBLISHED, "Outbox rows not yet published.");
    describe_counter!(
        TRANSIENT_ERRORS,
        "Failures the projector retried, by kind (redis, postgres, recovering, malformed, unexpected, expiry, dead_letter, relay)."
    );
    metrics::counter!(OUTBOX_PUBLISHED).increment(0);
    metrics::counter!(TRANSIENT_ERRORS, "kind" => "relay").increment(0);
}

/// Creates the projector's series with no sale label at zero.
pub fn register() {
    for outcome in EVENT_OUTCOMES {
        metrics::counter!(EVENTS, "outcome" => outcome).increment(0);
    }
    for kind in TRANSIENT_KINDS {
        metrics::counter!(TRANSIENT_ERRORS, "kind" => kind).increment(0);
    }
    let _ = metrics::histogram!(BATCH_SIZE);
    let _ = metrics::histogram!(BATCH_SECONDS);
    let _ = metrics::histogram!(holds::EXPIRY_LAG_SECONDS);
    let _ = metrics::histogram!(rebuild::RECOVERY_SECONDS);
}

/// Creates a sale's series at zero, when its projector starts: a counter born at its
/// first event would hide that event from `increase()`.
pub fn register_sale(sale: &yoink_core::SaleId) {
    let sale = sale.to_string();
    for name in [
        DEAD_LETTERS,
        RELEASED_UNITS,
        UNRELEASABLE,
        TASK_RESTARTS,
        TRIMMED,
        rebuild::RECOVERIES,
    ] {
        metrics::counter!(name, "sale" => sale.clone()).increment(0);
    }
    metrics::counter!(telemetry::ROLLBACKS_DETECTED, "sale" => sale.clone(), "by" => "projector")
        .increment(0);
    metrics::counter!(holds::DECIDED, "sale" => sale.clone(), "outcome" => "expired").increment(0);
    for fate in ["confirmed", "released"] {
        metrics::counter!(rebuild::RECOVERED_RESERVATIONS, "sale" => sale.clone(), "fate" => fate)
            .increment(0);
    }
    metrics::gauge!(SUSPENDED, "sale" => sale).set(0.0);
}

pub fn event(outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(EVENTS, "outcome" => outcome).increment(n);
    }
}

pub fn transient(kind: &'static str) {
    metrics::counter!(TRANSIENT_ERRORS, "kind" => kind).increment(1);
}

/// Sets the pool gauges from the pool's state right now.
pub fn pool(pool: &deadpool_postgres::Pool) {
    let status = pool.status();
    metrics::gauge!(POOL_SIZE).set(status.max_size as f64);
    metrics::gauge!(POOL_OPEN).set(status.size as f64);
    metrics::gauge!(POOL_IN_USE).set(status.size.saturating_sub(status.available) as f64);
    metrics::gauge!(POOL_WAITING).set(status.waiting as f64);
}

/// Reads the pool into its gauges every `every` until `shutdown` turns true.
pub async fn sample_pool(
    pool: deadpool_postgres::Pool,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        self::pool(&pool);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
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

pub fn trimmed(sale: &yoink_core::SaleId, entries: u64) {
    metrics::counter!(TRIMMED, "sale" => sale.to_string()).increment(entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use yoink_testkit::metric_value;

    #[test]
    fn every_counter_exists_at_zero_with_help_text_before_its_first_event() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let sale = yoink_core::SaleId::parse("first-dead-letter").expect("id");
        metrics::with_local_recorder(&recorder, || {
            describe();
            register();
            register_sale(&sale);
        });
        let page = handle.render();
        for help in [
            "# HELP yoink_dead_letters_total ",
            "# HELP yoink_projector_transient_errors_total ",
            "# HELP yoink_sale_suspended ",
            "# HELP yoink_projector_batch_size ",
        ] {
            assert!(page.contains(help), "{help:?} missing from:\n{page}");
        }
        for series in [
            r#"yoink_dead_letters_total{sale="first-dead-letter"}"#,
            r#"yoink_projector_released_units_total{sale="first-dead-letter"}"#,
            r#"yoink_projector_unreleasable_total{sale="first-dead-letter"}"#,
            r#"yoink_projector_task_restarts_total{sale="first-dead-letter"}"#,
            r#"yoink_redis_rollbacks_detected_total{sale="first-dead-letter",by="projector"}"#,
            r#"yoink_sale_suspended{sale="first-dead-letter"}"#,
            r#"yoink_projector_transient_errors_total{kind="redis"}"#,
            r#"yoink_projector_transient_errors_total{kind="postgres"}"#,
            r#"yoink_projector_events_total{outcome="dead_lettered"}"#,
            "yoink_projector_batch_size_count",
            "yoink_outbox_published_total",
        ] {
            assert_eq!(
                metric_value(&page, series),
                Some(0.0),
                "{series} in:\n{page}"
            );
        }
        // The first dead letter is then an increase from 0 to 1.
        metrics::with_local_recorder(&recorder, || counter_dead_letter(&sale));
        assert_eq!(
            metric_value(
                &handle.render(),
                r#"yoink_dead_letters_total{sale="first-dead-letter"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn the_relay_alone_describes_its_metrics() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_relay();
            metrics::gauge!(OUTBOX_UNPUBLISHED).set(3.0);
        });
        let page = handle.render();
        for help in [
            "# HELP yoink_outbox_published_total ",
            "# HELP yoink_outbox_unpublished ",
            "# HELP yoink_projector_transient_errors_total ",
        ] {
            assert!(page.contains(help), "{help:?} missing from:\n{page}");
        }
        assert_eq!(
            metric_value(&page, "yoink_outbox_published_total"),
            Some(0.0)
        );
        assert_eq!(
            metric_value(
                &page,
                r#"yoink_projector_transient_errors_total{kind="relay"}"#
            ),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn the_pool_gauges_read_a_held_connection_and_a_waiter() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let pool = yoink_core::db::pool(&yoink_testkit::postgres_server_url(), 1).expect("pool");
        let held = pool.get().await.expect("a connection to the test server");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.get().await.map(drop) }
        });
        assert!(
            yoink_testkit::eventually(Duration::from_secs(5), || {
                let waiting = pool.status().waiting;
                async move { waiting == 1 }
            })
            .await,
            "the second get() never queued"
        );
        metrics::with_local_recorder(&recorder, || self::pool(&pool));
        let busy = handle.render();
        assert_eq!(metric_value(&busy, POOL_IN_USE), Some(1.0), "{busy}");
        assert_eq!(metric_value(&busy, POOL_WAITING), Some(1.0), "{busy}");
        assert_eq!(metric_value(&busy, POOL_OPEN), Some(1.0), "{busy}");
        assert_eq!(metric_value(&busy, POOL_SIZE), Some(1.0), "{busy}");

        drop(held);
        waiter
            .await
            .expect("the waiter task")
            .expect("the waiter got the connection");
        metrics::with_local_recorder(&recorder, || self::pool(&pool));
        let idle = handle.render();
        assert_eq!(metric_value(&idle, POOL_IN_USE), Some(0.0), "{idle}");
        assert_eq!(metric_value(&idle, POOL_WAITING), Some(0.0), "{idle}");
    }
}
