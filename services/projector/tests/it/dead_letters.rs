//! Permanent failures: garbage is dead-lettered without touching stock; a reservation
//! PostgreSQL refuses is released exactly once, however often or concurrently.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use yoink_core::events::SaleEvent;
use yoink_core::scripts::{self, ReleaseOutcome, SaleTerms};
use yoink_core::{ReservationId, SaleId, UserId};
use yoink_projector::ProjectorArgs;
use yoink_projector::dead_letter::{GaveUp, dead_letter};
use yoink_projector::entry::Entry;
use yoink_testkit::{TestApp, spawn_app};

fn fast_args(consumer: &str) -> ProjectorArgs {
    ProjectorArgs {
        block_ms: 50,
        claim_idle_ms: 200,
        claim_interval_ms: 50,
        max_deliveries: 3,
        ..ProjectorArgs::local(consumer)
    }
}

async fn remaining(app: &TestApp, sale: &SaleId) -> i64 {
    let mut redis = app.redis.clone();
    redis.get(app.keys().stock(sale)).await.expect("stock")
}

/// A sale Redis knows and PostgreSQL does not: PostgreSQL must refuse its orders.
async fn redis_only_sale(app: &TestApp, id: &str, stock: i64) -> SaleId {
    let sale = SaleId::parse(id).expect("valid");
    let mut redis = app.redis.clone();
    let terms = SaleTerms {
        initial_stock: stock,
        limit_per_user: 0,
        starts_at_ms: 0,
        ends_at_ms: 0,
        ..SaleTerms::default()
    };
    assert!(
        scripts::create_sale(&mut redis, app.keys(), &sale, &terms)
            .await
            .expect("create")
    );
    let _: i64 = redis
        .sadd(app.keys().sales_registry(), sale.as_str())
        .await
        .expect("register");
    sale
}

async fn reserve(app: &TestApp, sale: &SaleId, user: &str, quantity: i64) -> ReservationId {
    let user = UserId::parse(user).expect("valid");
    let mut redis = app.redis.clone();
    let r = scripts::reserve(
        &mut redis,
        app.keys(),
        &scripts::Reserve {
            reservation_id: ReservationId::new(),
            sale_id: sale,
            user_id: &user,
            quantity,
            idempotency_key: None,
            floor: yoink_core::Position::ZERO,
        },
    )
    .await
    .expect("reserved");
    r.reservation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbage_entry_is_dead_lettered_with_a_reason_and_stock_is_unchanged() {
    let app = spawn_app().await;
    let sale = app.create_sale("garbage", 100, 0).await;
    let projector = app.projector_with(fast_args("p"));
    for i in 0..5 {
        assert!(app.reserve_direct(&sale, &format!("before{i}"), 1).await);
    }
    let mut redis = app.redis.clone();
    let garbage_id: String = redis
        .xadd(
            app.keys().events(&sale),
            "*",
            &[("hello", "world"), ("type", "bought")],
        )
        .await
        .expect("xadd garbage");
    for i in 0..5 {
        assert!(app.reserve_direct(&sale, &format!("after{i}"), 1).await);
    }

    let dead = yoink_testkit::eventually(Duration::from_secs(20), || async {
        let mut redis = app.redis.clone();
        redis
            .xlen::<_, usize>(app.keys().dead_letters(&sale))
            .await
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert!(dead, "garbage never dead-lettered");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;

    let entries: redis::streams::StreamRangeReply = redis
        .xrange_all(app.keys().dead_letters(&sale))
        .await
        .expect("xrange");
    assert_eq!(entries.ids.len(), 1);
    let copy = &entries.ids[0];
    let reason: String = copy.get("dead_reason").expect("reason");
    assert!(reason.contains("unknown event type `bought`"), "{reason}");
    assert_eq!(
        copy.get::<String>("original_id").as_deref(),
        Some(garbage_id.as_str())
    );
    assert_eq!(copy.get::<String>("hello").as_deref(), Some("world"));

    assert_eq!(
        remaining(&app, &sale).await,
        90,
        "stock unchanged by the garbage"
    );
    assert_eq!(
        app.db.scalar("SELECT count(*) FROM orders").await,
        10,
        "the projector kept going"
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM reservation_fates WHERE fate = 'released'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_postgres_refuses_is_released_exactly_once() {
    let app = spawn_app().await;
    let sale = redis_only_sale(&app, "orphan", 10).await;
    let id = reserve(&app, &sale, "buyer", 3).await;
    assert_eq!(remaining(&app, &sale).await, 7);

    // Two projectors race for it.
    let a = app.projector_with(fast_args("alpha"));
    let b = app.projector_with(fast_args("beta"));
    let released = yoink_testkit::eventually(Duration::from_secs(20), || async {
        remaining(&app, &sale).await == 10
    })
    .await;
    assert!(released, "units never came back");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    a.stop().await;
    b.stop().await;

    let fate: i64 = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM reservation_fates WHERE reservation_id = '{id}' AND fate = 'released'"
        ))
        .await;
    assert_eq!(fate, 1);
    assert_eq!(
        app.db.scalar("SELECT count(*) FROM orders").await,
        0,
        "never both"
    );
    let (status, view) = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "released");
    assert!(
        view["reason"].as_str().is_some_and(|r| r.contains("23503")),
        "{view}"
    );

    // Retrying the release changes nothing.
    let mut redis = app.redis.clone();
    let again = scripts::release(&mut redis, app.keys(), &sale, id, "retry")
        .await
        .expect("release");
    assert_eq!(again, ReleaseOutcome::AlreadyReleased(3));
    assert_eq!(remaining(&app, &sale).await, 10);
    let meta: HashMap<String, i64> = redis.hgetall(app.keys().meta(&sale)).await.expect("meta");
    assert_eq!(meta["released"], 3);
    assert_eq!(
        meta["initial"] - meta["reserved"] + meta["released"],
        10,
        "remaining = initial - reserved + released"
    );
    let buyers: HashMap<String, i64> = redis
        .hgetall(app.keys().buyers(&sale))
        .await
        .expect("buyers");
    assert_eq!(
        buyers.get("buyer"),
        Some(&0),
        "the buyer's count is returned too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dead_letters_of_one_entry_release_its_units_once() {
    let app = spawn_app().await;
    let sale = redis_only_sale(&app, "race", 10).await;
    let id = reserve(&app, &sale, "buyer", 2).await;
    let mut redis = app.redis.clone();
    yoink_core::stream::ensure_group(&mut redis, &app.keys().events(&sale))
        .await
        .expect("group");
    let read: redis::streams::StreamRangeReply = redis
        .xrange_all(app.keys().events(&sale))
        .await
        .expect("xrange");
    let entry = Entry::from_stream(read.ids[0].clone());
    assert!(matches!(&entry.event, Ok(SaleEvent::Reserved(r)) if r.reservation_id == id));

    let pool = app.db.pool();
    let attempts = (0..8).map(|i| {
        let mut redis = app.redis.clone();
        let pool = pool.clone();
        let entry = entry.clone();
        let keys = app.keys().clone();
        let sale = sale.clone();
        tokio::spawn(async move {
            dead_letter(
                &mut redis,
                &keys,
                &pool,
                &sale,
                GaveUp {
                    consumer: &format!("c{i}"),
                    deliveries: 1,
                },
                &entry,
                "test race",
            )
            .await
        })
    });
    for attempt in futures::future::join_all(attempts).await {
        attempt.expect("task").expect("dead-letter");
    }
    assert_eq!(
        remaining(&app, &sale).await,
        10,
        "released once: 8 + 2, not 8 + 16"
    );
    let released_events = redis
        .xrange_all::<_, redis::streams::StreamRangeReply>(app.keys().events(&sale))
        .await
        .expect("xrange")
        .ids
        .iter()
        .filter(|e| e.get::<String>("type").as_deref() == Some("released"))
        .count();
    assert_eq!(released_events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_reservation_whose_record_is_unreadable_ends_dead_lettered_and_acknowledged() {
    // The recorder must exist before the projector counts anything.
    let _ = yoink_core::telemetry::prometheus();
    let app = spawn_app().await;
    let sale = redis_only_sale(&app, "unreadable-record", 10).await;
    let id = reserve(&app, &sale, "buyer", 3).await;
    let mut redis = app.redis.clone();
    let _: () = redis
        .hset(
            app.keys().reservations(&sale),
            id.to_string(),
            "not|a record",
        )
        .await
        .expect("overwrite the record");
    let before = yoink_testkit::sale_metric("yoink_projector_unreleasable_total", &sale);

    let projector = app.projector_with(fast_args("p"));
    let drained = app.wait_drained(&sale, Duration::from_secs(20)).await;
    projector.stop().await;
    assert!(
        drained,
        "the entry never reached a terminal state: {:?}",
        app.group_state(&sale).await
    );

    let dead: redis::streams::StreamRangeReply = redis
        .xrange_all(app.keys().dead_letters(&sale))
        .await
        .expect("xrange");
    let reasons: Vec<String> = dead
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("dead_reason"))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unreadable") && r.contains("nothing was given back")),
        "{reasons:?}"
    );
    assert!(
        dead.ids
            .iter()
            .all(|e| e.get::<String>("reservation_id") == Some(id.to_string())),
        "every dead-letter copy is of this entry"
    );
    assert_eq!(remaining(&app, &sale).await, 7, "nothing was given back");
    assert!(
        yoink_testkit::sale_metric("yoink_projector_unreleasable_total", &sale) > before,
        "the unreleasable entry was not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_release_script_answers_malformed_for_an_unreadable_record_and_writes_nothing() {
    let app = spawn_app().await;
    let sale = redis_only_sale(&app, "garbled", 10).await;
    let mut redis = app.redis.clone();
    for garbage in [
        "",
        "garbage",
        "reserved|u|x|1-0|1",
        "reserved||2|1-0|1",
        "sold|u|2|1-0|1",
    ] {
        let id = reserve(&app, &sale, "buyer", 2).await;
        let _: () = redis
            .hset(app.keys().reservations(&sale), id.to_string(), garbage)
            .await
            .expect("overwrite the record");
        let length: usize = redis.xlen(app.keys().events(&sale)).await.expect("xlen");
        let stock = remaining(&app, &sale).await;

        let outcome = scripts::release(&mut redis, app.keys(), &sale, id, "test")
            .await
            .expect("an answer, not an error");
        assert_eq!(outcome, ReleaseOutcome::Malformed, "{garbage:?}");
        assert_eq!(remaining(&app, &sale).await, stock, "{garbage:?}");
        let after: usize = redis.xlen(app.keys().events(&sale)).await.expect("xlen");
        assert_eq!(after, length, "no event for {garbage:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_recorded_in_postgres_but_never_applied_in_redis_is_applied_on_redelivery() {
    let app = spawn_app().await;
    let sale = app.create_sale("half-released", 10, 0).await;
    let rid = reserve(&app, &sale, "u1", 3).await;
    assert_eq!(remaining(&app, &sale).await, 7);
    // A dead letter recorded the fate `released` and then its release script failed
    // (a timeout, a suspended sale): PostgreSQL says released, Redis still holds the
    // units, and the entry is still in the stream.
    let mut redis = app.redis.clone();
    let entries = yoink_core::stream::read_range(&mut redis, &app.keys().events(&sale), "-", "+")
        .await
        .expect("XRANGE");
    let (stream_id, reserved) = yoink_core::stream::reservations(&entries)
        .into_iter()
        .find(|(_, r)| r.reservation_id == rid)
        .expect("the reservation's entry");
    let fate = yoink_core::ledger::release(&app.db.pool(), &stream_id, &reserved, "refused")
        .await
        .expect("record the fate");
    assert_eq!(fate, yoink_core::ledger::Fate::Released);
    assert_eq!(remaining(&app, &sale).await, 7, "Redis was not told");

    let projector = app.projector_with(fast_args("finisher"));
    assert!(app.wait_drained(&sale, Duration::from_secs(20)).await);
    projector.stop().await;
    assert_eq!(
        remaining(&app, &sale).await,
        10,
        "the released units are back on sale"
    );
    let again = scripts::release(&mut redis, app.keys(), &sale, rid, "again")
        .await
        .expect("release again");
    assert_eq!(again, ReleaseOutcome::AlreadyReleased(3), "and only once");
}

/// One entry PostgreSQL refuses, in a batch written as transactions side by side: the
/// parts that committed come back as decided when the batch is isolated, the refused
/// entry alone is released, and every other reservation has exactly one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_in_a_batch_written_side_by_side_releases_only_that_entry() {
    let app = spawn_app().await;
    let sale = app.create_sale("split-refusal", 2_000, 0).await;
    app.db.refuse_orders_of_buyer_refused().await;
    app.reserve_many(&sale, "early", 600).await;
    let refused = reserve(&app, &sale, "refused", 1).await;
    app.reserve_many(&sale, "late", 600).await;

    let projector = app.projector_with(ProjectorArgs {
        batch_size: 2_000,
        write_parallelism: 2,
        ..fast_args("split")
    });
    let released = yoink_testkit::eventually(Duration::from_secs(30), || async {
        remaining(&app, &sale).await == 2_000 - 1_200
    })
    .await;
    assert!(released, "the refused unit never came back");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;

    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, 1_200);
    assert_eq!(
        app.db
            .scalar("SELECT count(DISTINCT reservation_id) FROM orders")
            .await,
        1_200
    );
    assert_eq!(
        app.db
            .scalar("SELECT confirmed_units FROM sales WHERE sale_id = 'split-refusal'")
            .await,
        1_200,
        "each order counted once"
    );
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT count(*) FROM reservation_fates WHERE fate = 'released' AND reservation_id = '{refused}'"
            ))
            .await,
        1
    );
}
