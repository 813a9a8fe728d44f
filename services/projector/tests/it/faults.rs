//! PostgreSQL going away mid-sale: buys keep working, nothing is dead-lettered, every
//! order lands once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use yoink_testkit::{AppOptions, PrivatePostgres, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_for_ten_seconds_loses_nothing_and_dead_letters_nothing() {
    let postgres = PrivatePostgres::start().await;
    let app = Arc::new(
        spawn_app_with(AppOptions {
            postgres_server_url: Some(postgres.url()),
            ..AppOptions::default()
        })
        .await,
    );
    let sale = app.create_sale("pg-outage", 100_000, 0).await;
    let projector = app.projector("p");

    let buying = Arc::new(AtomicBool::new(true));
    let buyers = tokio::spawn({
        let app = app.clone();
        let buying = buying.clone();
        async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while buying.load(Ordering::Relaxed) {
                statuses.push(app.buy("pg-outage", &format!("u{i}"), 1).await.0);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.stop();
    let down = app.db.pool().get().await;
    assert!(down.is_err(), "PostgreSQL is really down during the outage");
    tokio::time::sleep(Duration::from_secs(10)).await;
    postgres.start_again().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    buying.store(false, Ordering::Relaxed);
    let statuses = buyers.await.expect("buyers");

    let accepted = statuses.iter().filter(|s| **s == 202).count() as i64;
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "only 202/409 while PostgreSQL was down: {:?}",
        statuses.iter().filter(|s| **s != 202).collect::<Vec<_>>()
    );
    assert!(
        accepted > 100,
        "the test made too few buys to prove anything: {accepted}"
    );
    assert!(
        app.wait_drained(&sale, Duration::from_secs(60)).await,
        "{:?}",
        app.group_state(&sale).await
    );
    projector.stop().await;

    let mut redis = app.redis.clone();
    let dead: usize = redis
        .xlen(app.keys().dead_letters(&sale))
        .await
        .expect("xlen");
    assert_eq!(dead, 0, "a transient outage never dead-letters");
    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, accepted);
    assert_eq!(
        app.db
            .scalar("SELECT count(DISTINCT reservation_id) FROM orders")
            .await,
        accepted
    );
}

/// The pending entries of `stream` idle at least `min_idle_ms` (all of them with 0),
/// with their delivery counts.
async fn pending_entries(
    redis: &mut yoink_core::RedisConn,
    stream: &str,
    min_idle_ms: u64,
) -> Vec<redis::streams::StreamPendingId> {
    let reply: redis::RedisResult<redis::streams::StreamPendingCountReply> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(yoink_core::keys::PROJECTOR_GROUP)
        .arg("IDLE")
        .arg(min_idle_ms)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .query_async(redis)
        .await;
    reply.map(|r| r.ids).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_held_through_a_postgres_outage_are_never_idle_long_enough_to_be_reclaimed() {
    let postgres = PrivatePostgres::start().await;
    let app = Arc::new(
        spawn_app_with(AppOptions {
            postgres_server_url: Some(postgres.url()),
            ..AppOptions::default()
        })
        .await,
    );
    let sale = app.create_sale("pg-outage-held", 100_000, 0).await;
    let args = yoink_projector::ProjectorArgs::local("held");
    let claim_idle_ms = args.claim_idle_ms;
    let projector = app.projector_with(args);
    let stream = app.keys().events(&sale);

    let buying = Arc::new(AtomicBool::new(true));
    let buyers = tokio::spawn({
        let app = app.clone();
        let buying = buying.clone();
        async move {
            let mut accepted = 0_i64;
            let mut i = 0;
            while buying.load(Ordering::Relaxed) {
                if app.buy("pg-outage-held", &format!("u{i}"), 1).await.0 == 202 {
                    accepted += 1;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            accepted
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.stop();
    // During the outage the projector holds a batch in hand and the batches its reader
    // fetched ahead: none of them may look abandoned (idle past --claim-idle-ms), or
    // XAUTOCLAIM delivers it again and the delivery count that decides dead-lettering
    // grows with the outage.
    let mut too_idle = Vec::new();
    let mut held_max = 0;
    let most_deliveries = Arc::new(AtomicUsize::new(0));
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut redis = app.redis.clone();
    while tokio::time::Instant::now() < outage_ends {
        let idle = pending_entries(&mut redis, &stream, claim_idle_ms).await;
        too_idle.extend(idle.into_iter().map(|p| (p.id, p.last_delivered_ms)));
        let held = pending_entries(&mut redis, &stream, 0).await;
        held_max = held_max.max(held.len());
        for p in held {
            most_deliveries.fetch_max(p.times_delivered, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    postgres.start_again().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    buying.store(false, Ordering::Relaxed);
    let accepted = buyers.await.expect("buyers");

    // Nor, until the backlog is drained, is any entry delivered a second time.
    let drained = yoink_testkit::eventually(Duration::from_secs(60), || {
        let app = app.clone();
        let stream = stream.clone();
        let sale = sale.clone();
        let most_deliveries = most_deliveries.clone();
        async move {
            let mut redis = app.redis.clone();
            for p in pending_entries(&mut redis, &stream, 0).await {
                most_deliveries.fetch_max(p.times_delivered, Ordering::Relaxed);
            }
            app.group_state(&sale).await == yoink_testkit::GroupState { pending: 0, lag: 0 }
        }
    })
    .await;
    assert!(drained, "{:?}", app.group_state(&sale).await);
    projector.stop().await;

    assert!(
        held_max > 0,
        "the projector held no entries during the outage: the test proved nothing"
    );
    assert!(
        too_idle.is_empty(),
        "entries held by the projector went idle past {claim_idle_ms} ms during the outage \
         (id, idle ms): {:?}",
        &too_idle[..too_idle.len().min(10)]
    );
    let most_deliveries = most_deliveries.load(Ordering::Relaxed);
    assert!(
        most_deliveries <= 1,
        "an entry was delivered {most_deliveries} times"
    );
    let dead: usize = redis
        .xlen(app.keys().dead_letters(&sale))
        .await
        .expect("xlen");
    assert_eq!(dead, 0, "a transient outage never dead-letters");
    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, accepted);
}
