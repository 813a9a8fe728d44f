//! The happy path at volume, concurrency between projectors, and what users see.

use std::time::Duration;

use redis::AsyncCommands;
use yoink_core::SaleId;
use yoink_testkit::{TestApp, spawn_app};

async fn assert_exactly_one_order_each(app: &TestApp, sale: &SaleId, expected: i64) {
    let orders = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM orders WHERE sale_id = '{sale}'"
        ))
        .await;
    let distinct = app
        .db
        .scalar(&format!(
            "SELECT count(DISTINCT reservation_id) FROM orders WHERE sale_id = '{sale}'"
        ))
        .await;
    assert_eq!(orders, expected, "orders");
    assert_eq!(distinct, expected, "one order per reservation");
    let confirmed = app
        .db
        .scalar(&format!(
            "SELECT confirmed_units FROM sales WHERE sale_id = '{sale}'"
        ))
        .await;
    assert_eq!(
        confirmed, expected,
        "sales.confirmed_units matches the orders"
    );
}

/// Waits until `sale`'s stream is drained and the outbox is published, then stops
/// `projector`; panics if the drain never ends, false if the outbox is not published.
async fn drain_and_publish(
    app: &TestApp,
    sale: &SaleId,
    projector: yoink_testkit::RunningProjector,
) -> bool {
    assert!(
        app.wait_drained(sale, Duration::from_secs(60)).await,
        "not drained: {:?}",
        app.group_state(sale).await
    );
    let published = yoink_testkit::eventually(Duration::from_secs(30), || async {
        app.db
            .scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await
            == 0
    })
    .await;
    projector.stop().await;
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_reservations_become_ten_thousand_orders() {
    let app = spawn_app().await;
    let sale = app.create_sale("big", 20_000, 0).await;
    app.reserve_many(&sale, "u", 10_000).await;

    let projector = app.projector("p1");
    let published = drain_and_publish(&app, &sale, projector).await;

    assert_exactly_one_order_each(&app, &sale, 10_000).await;
    assert!(published, "every outbox row is published");
    assert_eq!(app.db.scalar("SELECT count(*) FROM outbox").await, 10_000);
    let mut redis = app.redis.clone();
    let relayed: usize = redis.xlen(app.keys().order_events()).await.expect("xlen");
    assert!(
        relayed >= 10_000,
        "the relay published every event at least once"
    );
    assert_eq!(app.group_state(&sale).await.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projectors_at_once_project_each_reservation_once() {
    let app = spawn_app().await;
    let sale = app.create_sale("shared", 5_000, 0).await;
    let first = app.projector("alpha");
    let second = app.projector("beta");
    app.reserve_many(&sale, "u", 3_000).await;

    assert!(app.wait_drained(&sale, Duration::from_secs(60)).await);
    first.stop().await;
    second.stop().await;
    assert_exactly_one_order_each(&app, &sale, 3_000).await;
    let fates = app
        .db
        .scalar("SELECT count(*) FROM reservation_fates")
        .await;
    assert_eq!(fates, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_sees_the_reservation_confirmed_and_the_sale_counts_it() {
    let app = spawn_app().await;
    app.create_sale("seen", 10, 0).await;
    let projector = app.projector("p");
    let (status, body) = app.buy("seen", "alice", 2).await;
    assert_eq!(status, 202);
    let id = body["reservation_id"].as_str().expect("id").to_owned();

    let confirmed = yoink_testkit::eventually(Duration::from_secs(10), || async {
        app.get(&format!("/reservations/{id}")).await.1["status"] == "confirmed"
    })
    .await;
    assert!(confirmed, "reservation never confirmed");
    let (_, view) = app.get(&format!("/reservations/{id}")).await;
    assert!(view["order_id"].is_string(), "{view}");
    let (_, sale) = app.get("/sales/seen").await;
    assert_eq!(sale["confirmed"], 2);
    assert_eq!(sale["remaining"], 8);
    assert_eq!(sale["released"], 0);
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_sales_are_picked_up_without_a_restart() {
    let app = spawn_app().await;
    let projector = app.projector("p");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sale = app.create_sale("late-sale", 10, 0).await;
    assert!(app.reserve_direct(&sale, "u", 1).await);
    let projected = yoink_testkit::eventually(Duration::from_secs(10), || async {
        app.db.scalar("SELECT count(*) FROM orders").await == 1
    })
    .await;
    projector.stop().await;
    assert!(projected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_that_stayed_idle_with_nothing_pending_are_removed() {
    use redis::AsyncCommands;
    let app = spawn_app().await;
    let sale = app.create_sale("tidy", 10, 0).await;
    let stream = app.keys().events(&sale);
    let mut redis = app.redis.clone();
    yoink_core::stream::ensure_group(&mut redis, &stream)
        .await
        .expect("group");
    // A consumer that left long ago: known to the group, nothing pending.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg(yoink_core::keys::PROJECTOR_GROUP)
        .arg("ghost")
        .query_async(&mut redis)
        .await
        .expect("create consumer");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Something to project, so the live projector joins the group too.
    assert!(app.reserve_direct(&sale, "u", 1).await);

    let projector = app.projector_with(yoink_projector::ProjectorArgs {
        consumer_idle_delete_ms: 100,
        ..yoink_projector::ProjectorArgs::local("tidy-projector")
    });
    let removed = yoink_testkit::eventually(Duration::from_secs(10), || async {
        let mut redis = app.redis.clone();
        let info: redis::streams::StreamInfoConsumersReply = redis
            .xinfo_consumers(&stream, yoink_core::keys::PROJECTOR_GROUP)
            .await
            .expect("xinfo");
        let names: Vec<String> = info.consumers.into_iter().map(|c| c.name).collect();
        !names.iter().any(|n| n == "ghost") && names.iter().any(|n| n == "tidy-projector")
    })
    .await;
    projector.stop().await;
    assert!(
        removed,
        "the idle, empty consumer was not removed (or the live one was)"
    );
}

/// A batch split into transactions written side by side (`--write-parallelism`) still
/// gives one order per reservation, counted once, and events the relay builds from
/// the confirmed fates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_written_side_by_side_give_one_order_each_and_full_events() {
    let app = spawn_app().await;
    let sale = app.create_sale("split", 10_000, 0).await;
    app.reserve_many(&sale, "s", 5_000).await;

    let projector = app.projector_with(yoink_projector::ProjectorArgs {
        batch_size: 2_000,
        write_parallelism: 3,
        ..yoink_projector::ProjectorArgs::local("split")
    });
    let published = drain_and_publish(&app, &sale, projector).await;
    assert!(published, "every outbox row is published");
    assert_exactly_one_order_each(&app, &sale, 5_000).await;

    let mut redis = app.redis.clone();
    let events: redis::streams::StreamRangeReply = redis
        .xrange_count(app.keys().order_events(), "-", "+", 1)
        .await
        .expect("xrange");
    let payload: String = events.ids[0].get("payload").expect("payload");
    let payload: serde_json::Value = serde_json::from_str(&payload).expect("json");
    let reservation = payload["reservation_id"].as_str().expect("reservation_id");
    let order_id: String = app
        .db
        .pool()
        .get()
        .await
        .expect("db")
        .query_one(
            "SELECT order_id::text FROM orders WHERE reservation_id = $1::text::uuid",
            &[&reservation],
        )
        .await
        .expect("the event's order")
        .get(0);
    assert_eq!(payload["order_id"], order_id.as_str(), "{payload}");
    assert!(
        payload["user_id"]
            .as_str()
            .is_some_and(|u| u.starts_with('s')),
        "{payload}"
    );
    assert_eq!(payload["quantity"], 1, "{payload}");
    assert_eq!(payload["sale_id"], sale.as_str(), "{payload}");
}

/// The order-events stream keeps about `--order-events-max-len` entries, not history:
/// the outbox table keeps every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_events_stream_is_capped_and_the_outbox_keeps_everything() {
    let app = spawn_app().await;
    let sale = app.create_sale("capped", 5_000, 0).await;
    app.reserve_many(&sale, "e", 3_000).await;
    let defaults = yoink_projector::ProjectorArgs::local("capped");
    let projector = app.projector_with(yoink_projector::ProjectorArgs {
        relay: yoink_projector::RelayArgs {
            order_events_max_len: 500,
            ..defaults.relay.clone()
        },
        ..defaults
    });
    let published = drain_and_publish(&app, &sale, projector).await;
    assert!(published, "every outbox row is published");
    assert_eq!(app.db.scalar("SELECT count(*) FROM outbox").await, 3_000);
    let mut redis = app.redis.clone();
    let kept: usize = redis.xlen(app.keys().order_events()).await.expect("xlen");
    // `MAXLEN ~` trims whole stream nodes (100 entries each by default).
    assert!((500..600).contains(&kept), "{kept} order events kept");
}
