//! The reconciler on sales with holds, against real Redis and PostgreSQL: held units
//! are accounted for (neither lost nor divergent), holds nobody expires are flagged
//! `holds_overdue` once their deadline plus the grace passed (exit code 1, gauges on
//! `--watch`), and a projector's expiry sweep brings the sale back to consistent.
//!
//! Runs `run_once` / `watch` in-process on the test app's stores.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use yoink_core::holds::{self, FromRedis, HoldState};
use yoink_core::scripts::SaleTerms;
use yoink_core::stream::{self, read_range};
use yoink_core::{ReservationId, SaleId};
use yoink_reconciler::{ReconcileArgs, Verdict};
use yoink_testkit::{TestApp, eventually, sale_metric, spawn_app};

fn args(sale: &SaleId, grace: u64, json: bool) -> ReconcileArgs {
    ReconcileArgs {
        sale: Some(sale.to_string()),
        all: false,
        json,
        watch: None,
        grace,
        repair: false,
        yes: false,
        archive_after: None,
        metrics_listen: "127.0.0.1:0".parse().expect("a loopback address"),
    }
}

/// One `yoink reconcile --json --sale SALE`: the verdict, the sale's report, the text.
async fn reconcile_with(app: &TestApp, args: &ReconcileArgs) -> (Verdict, Value, String) {
    let mut out = Vec::new();
    let verdict = yoink_reconciler::run_once(&app.stores, args, &mut out)
        .await
        .expect("the reconciler reads both stores");
    let text = String::from_utf8(out).expect("UTF-8 output");
    let report = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .next_back()
        .unwrap_or(Value::Null);
    (verdict, report, text)
}

async fn reconcile(app: &TestApp, sale: &SaleId, grace: u64) -> (Verdict, Value, String) {
    reconcile_with(app, &args(sale, grace, true)).await
}

/// Every reservation in `sale`'s stream, in stream order.
async fn reservations(app: &TestApp, sale: &SaleId) -> Vec<ReservationId> {
    let mut redis = app.redis.clone();
    let entries = read_range(&mut redis, &app.keys().events(sale), "-", "+")
        .await
        .expect("XRANGE");
    stream::reservations(&entries)
        .into_iter()
        .map(|(_, r)| r.reservation_id)
        .collect()
}

async fn held_in_postgres(app: &TestApp, sale: &SaleId) -> i64 {
    let pool = app.db.pool();
    let client = pool.get().await.expect("PostgreSQL");
    holds::held_units(&client, sale).await.expect("held units")
}

fn hold_sale(hold_seconds: i64, stock: i64) -> SaleTerms {
    SaleTerms {
        initial_stock: stock,
        hold_seconds,
        max_hold_seconds: hold_seconds,
        ..SaleTerms::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_units_are_accounted_for_neither_lost_nor_divergent() {
    let app = spawn_app().await;
    let sale = app.create_sale_with("rec-held", hold_sale(3_600, 20)).await;
    for i in 0..6 {
        assert!(app.reserve_direct(&sale, &format!("u{i}"), 1).await);
    }
    assert!(app.reserve_direct(&sale, "big", 2).await);

    // Nothing projected yet: all of it is in flight.
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    assert_eq!(r["status"], "in_flight", "{text}");
    assert_eq!(r["in_flight_units"], 8, "{text}");
    assert_eq!(r["held_units"], 0, "{text}");

    // While a projector records them as holds: never diverged, never lost.
    let projector = app.projector("rec-held");
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    assert!(
        r["status"] == "in_flight" || r["status"] == "consistent",
        "{text}"
    );
    assert!(app.wait_drained(&sale, Duration::from_secs(30)).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            held_in_postgres(&app, &sale).await == 8
        })
        .await
    );

    // Projected, none decided: every unit out of stock is held.
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    assert_eq!(r["status"], "consistent", "{text}");
    for (field, value) in [
        ("held_units", 8),
        ("in_flight_units", 0),
        ("lost_units", 0),
        ("phantom_units", 0),
        ("pending_release_units", 0),
        ("overdue_holds", 0),
        ("overdue_hold_units", 0),
        ("redis_self_diff", 0),
    ] {
        assert_eq!(r[field], value, "{field} in {text}");
    }
    assert_eq!(r["redis"]["remaining"], 12, "{text}");
    assert_eq!(r["postgres"]["confirmed_units"], 0, "{text}");
    assert_eq!(r["postgres"]["held_units"], 8, "{text}");

    // One confirmed (an order), one cancelled (units back): still balanced.
    let ids = reservations(&app, &sale).await;
    let pool = app.db.pool();
    let mut redis = app.redis.clone();
    for (id, action) in [
        (ids[0], holds::Action::Confirm),
        (ids[1], holds::Action::Cancel),
    ] {
        let (hold, _) = holds::act(&pool, id, action)
            .await
            .expect("decide the hold")
            .expect("the hold is recorded");
        holds::apply(&mut redis, app.keys(), &hold)
            .await
            .expect("apply it in Redis");
    }
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    assert_eq!(r["status"], "consistent", "{text}");
    assert_eq!(r["held_units"], 6, "{text}");
    assert_eq!(r["postgres"]["confirmed_units"], 1, "{text}");
    assert_eq!(r["postgres"]["released_units"], 1, "{text}");
    assert_eq!(r["redis"]["remaining"], 13, "{text}");
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_nobody_expires_are_flagged_overdue_until_a_projector_sweeps_them() {
    let app = spawn_app().await;
    let sale = app.create_sale_with("rec-overdue", hold_sale(1, 10)).await;
    for i in 0..3 {
        assert!(app.reserve_direct(&sale, &format!("u{i}"), 1).await);
    }
    assert!(app.reserve_direct(&sale, "big", 2).await);
    // No projector: the holds are recorded as a decision arriving first would.
    let pool = app.db.pool();
    let mut redis = app.redis.clone();
    for id in reservations(&app, &sale).await {
        let recorded = holds::record_from_redis(&mut redis, app.keys(), &pool, &sale, id)
            .await
            .expect("record the hold");
        assert_eq!(recorded, FromRedis::Recorded);
    }
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "before the deadline: {text}");
    assert_eq!(r["held_units"], 5, "{text}");
    assert_eq!(r["overdue_holds"], 0, "{text}");

    // The deadline (1 s) and the grace (1 s) pass with no sweep.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    eventually(Duration::from_secs(10), || async {
        reconcile(&app, &sale, 1).await.1["status"] == "holds_overdue"
    })
    .await;
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Flagged, "exit code 1: {text}");
    assert_eq!(r["status"], "holds_overdue", "{text}");
    for (field, value) in [
        ("overdue_holds", 4),
        ("overdue_hold_units", 5),
        ("held_units", 5),
        ("lost_units", 0),
        ("phantom_units", 0),
        ("in_flight_units", 0),
    ] {
        assert_eq!(r[field], value, "{field} in {text}");
    }

    // The human report says what to do; --repair plans nothing for it.
    let (_, _, text) = reconcile_with(&app, &args(&sale, 1, false)).await;
    assert!(text.contains("holds_overdue"), "{text}");
    assert!(
        text.contains("4 hold(s) (5 units) still held past their deadline"),
        "{text}"
    );
    assert!(text.contains("start `yoink project`"), "{text}");
    let mut repair = args(&sale, 1, true);
    repair.repair = true;
    repair.yes = true;
    let (verdict, r, text) = reconcile_with(&app, &repair).await;
    assert_eq!(verdict, Verdict::Flagged, "{text}");
    assert!(
        text.contains("4 hold(s) overdue: not repaired here"),
        "{text}"
    );
    assert_eq!(r["held_units"], 5, "the repair expired nothing: {text}");

    // A divergence on top is worse, and wins: one unit taken without an event.
    let stock = app.keys().stock(&sale);
    let _: i64 = redis.decr(&stock, 1).await.expect("DECR");
    let (verdict, r, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Flagged, "{text}");
    assert_eq!(r["status"], "diverged", "{text}");
    assert_eq!(r["lost_units"], 1, "{text}");
    assert_eq!(r["overdue_holds"], 4, "still reported: {text}");
    let _: i64 = redis.incr(&stock, 1).await.expect("INCR");

    // --watch exports both gauges.
    yoink_core::telemetry::prometheus();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watch_args = {
        let mut a = args(&sale, 1, true);
        a.watch = Some(1);
        a
    };
    let stores = app.stores.clone();
    let watcher = tokio::spawn(async move {
        yoink_reconciler::watch(
            &stores,
            &watch_args,
            Duration::from_millis(200),
            None,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let exported = eventually(Duration::from_secs(10), || async {
        sale_metric(yoink_reconciler::OVERDUE_HOLDS, &sale) == 4.0
            && sale_metric(yoink_reconciler::HELD_UNITS, &sale) == 5.0
    })
    .await;
    let _ = stop.send(());
    watcher
        .await
        .expect("the watcher did not panic")
        .expect("the watcher ran");
    assert!(exported, "{}", yoink_core::telemetry::prometheus().render());

    // A projector starts: its sweep expires them, and the units are back on sale.
    let projector = app.projector("rec-sweeper");
    eventually(Duration::from_secs(20), || async {
        let (verdict, r, _) = reconcile(&app, &sale, 1).await;
        verdict == Verdict::Consistent && r["status"] == "consistent"
    })
    .await;
    projector.stop().await;
    let (verdict, last, text) = reconcile(&app, &sale, 1).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    assert_eq!(last["status"], "consistent", "{text}");
    for (field, value) in [
        ("held_units", 0),
        ("overdue_holds", 0),
        ("overdue_hold_units", 0),
        ("lost_units", 0),
        ("phantom_units", 0),
        ("pending_release_units", 0),
    ] {
        assert_eq!(last[field], value, "{field} in {last}");
    }
    assert_eq!(last["postgres"]["released_units"], 5, "{last}");
    assert_eq!(last["redis"]["remaining"], 10, "{last}");
    let client = pool.get().await.expect("PostgreSQL");
    for id in reservations(&app, &sale).await {
        let hold = holds::find(&client, id)
            .await
            .expect("read the hold")
            .expect("recorded");
        assert_eq!(hold.state, HoldState::Expired, "{hold:?}");
    }
}
