//! PostgreSQL going away mid-sale: buys keep working, nothing is dead-lettered, every
//! order lands once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
