//! Redis keeps what is in flight, not history: projectors trim what PostgreSQL has
//! from each sale's stream, and never a pending, undelivered or dead-lettered entry.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{SaleId, stream};
use yoink_projector::ProjectorArgs;
use yoink_projector::trim::{Trim, Trimmed};
use yoink_testkit::{TestApp, eventually, spawn_app};

use crate::reconcile::reconcile;

/// Entries a trimmed stream may keep beyond those in flight: the last delivered one,
/// and up to one stream node (`stream-node-max-entries`, 100) of acknowledged ones.
const SLACK: usize = 101;

fn trimming(consumer: &str) -> ProjectorArgs {
    ProjectorArgs {
        batch_size: 2_000,
        trim_batch: 20_000,
        trim_interval_ms: 50,
        ..ProjectorArgs::local(consumer)
    }
}

async fn length(app: &TestApp, sale: &SaleId) -> usize {
    let mut redis = app.redis.clone();
    redis.xlen(app.keys().events(sale)).await.expect("XLEN")
}

async fn exists(app: &TestApp, sale: &SaleId, id: &str) -> bool {
    let mut redis = app.redis.clone();
    let found: StreamRangeReply = redis
        .xrange(app.keys().events(sale), id, id)
        .await
        .expect("XRANGE");
    found.ids.len() == 1
}

fn trim_now(app: &TestApp, sale: &SaleId) -> Trim {
    Trim::new(
        sale.clone(),
        app.keys().clone(),
        app.redis.clone(),
        app.db.pool(),
        1_000_000,
        Duration::ZERO,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projected_sale_keeps_only_what_is_in_flight_through_a_killed_projector() {
    let app = spawn_app().await;
    let sale = app.create_sale("trimmed", 200_000, 0).await;
    let (status, first) = app.buy("trimmed", "first", 1).await;
    assert_eq!(status, 202, "{first}");
    let first_id = first["reservation_id"].as_str().expect("id").to_owned();
    app.reserve_many(&sale, "u", 100_000).await;
    assert_eq!(length(&app, &sale).await, 100_001);

    // A projector killed part way: what it committed and trimmed is gone from Redis
    // only because PostgreSQL has it; the next one finishes.
    let killed = app.projector_with(trimming("killed"));
    let part_way = eventually(Duration::from_secs(60), || async {
        app.db.scalar("SELECT count(*) FROM orders").await >= 30_000
    })
    .await;
    assert!(part_way, "the first projector never got going");
    drop(killed);
    let projector = app.projector_with(trimming("after"));
    assert!(
        app.wait_drained(&sale, Duration::from_secs(120)).await,
        "not drained: {:?}",
        app.group_state(&sale).await
    );
    let trimmed = eventually(Duration::from_secs(30), || async {
        length(&app, &sale).await <= SLACK
    })
    .await;
    projector.stop().await;
    assert!(
        trimmed,
        "the stream still has {} entries",
        length(&app, &sale).await
    );

    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, 100_001);
    assert_eq!(
        app.db
            .scalar("SELECT count(DISTINCT reservation_id) FROM orders")
            .await,
        100_001
    );
    let (code, reports, text) = reconcile(&app, &["--sale", "trimmed"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["status"], "consistent", "{text}");
    let (status, view) = app.get(&format!("/reservations/{first_id}")).await;
    assert_eq!(
        (status, &view["status"]),
        (200, &"confirmed".into()),
        "{view}"
    );
    let (status, view) = app.get("/sales/trimmed").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["remaining"], 200_000 - 100_001, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trimming_keeps_pending_undelivered_and_dead_lettered_entries() {
    let app = spawn_app().await;
    let sale = app.create_sale("kept", 10_000, 0).await;
    let events = app.keys().events(&sale);
    let mut redis = app.redis.clone();

    // 500 projected, then 300 read by a consumer that never acknowledges them, then
    // 200 projected after them.
    app.reserve_many(&sale, "a", 500).await;
    let no_reclaim = || ProjectorArgs {
        claim_idle_ms: 600_000,
        trim_batch: 0,
        ..ProjectorArgs::local("projector")
    };
    let projector = app.projector_with(no_reclaim());
    assert!(app.wait_drained(&sale, Duration::from_secs(30)).await);
    projector.stop().await;
    app.reserve_many(&sale, "b", 300).await;
    stream::ensure_group(&mut redis, &events)
        .await
        .expect("group");
    let read: StreamReadReply = redis
        .xread_options(
            &[&events],
            &[">"],
            &StreamReadOptions::default()
                .group(PROJECTOR_GROUP, "stalled")
                .count(300),
        )
        .await
        .expect("XREADGROUP");
    let stalled: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stalled.len(), 300);
    app.reserve_many(&sale, "c", 200).await;
    let projector = app.projector_with(no_reclaim());
    let settled = eventually(Duration::from_secs(30), || async {
        app.group_state(&sale).await.lag == 0
            && app.db.scalar("SELECT count(*) FROM orders").await == 700
    })
    .await;
    projector.stop().await;
    assert!(settled, "{:?}", app.group_state(&sale).await);

    let outcome = trim_now(&app, &sale).run_once().await.expect("trim");
    assert!(
        matches!(outcome, Trimmed::Removed { removed, .. } if removed > 0),
        "{outcome:?}"
    );
    for id in &stalled {
        assert!(exists(&app, &sale, id).await, "pending entry {id} trimmed");
    }
    let kept = length(&app, &sale).await;
    assert!(
        (500..=500 + SLACK).contains(&kept),
        "300 pending + 200 after them must stay, the 500 before mostly go: {kept}"
    );

    // Entries nobody has read yet stay too.
    app.reserve_many(&sale, "d", 100).await;
    trim_now(&app, &sale).run_once().await.expect("trim");
    assert_eq!(
        length(&app, &sale).await,
        kept + 100,
        "undelivered entries stay"
    );

    // While the sale has a dead letter, its stream stays whole.
    let _: String = redis
        .xadd(
            app.keys().dead_letters(&sale),
            "*",
            &[("original_id", &stalled[0])],
        )
        .await
        .expect("XADD");
    let outcome = trim_now(&app, &sale).run_once().await.expect("trim");
    assert_eq!(
        outcome,
        Trimmed::Kept {
            reason: "dead_letters".into()
        }
    );
}
