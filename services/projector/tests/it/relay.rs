//! The outbox relay while PostgreSQL is unreachable: it waits longer and longer between
//! attempts and says so once, not once per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use yoink_core::{RedisConn, StoreArgs, db};
use yoink_projector::RelayArgs;
use yoink_testkit::TestRedis;

/// A port where PostgreSQL should be that accepts each connection and hangs up at once
/// (a server going away), counting the attempts.
async fn hanging_up_postgres() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    (
        format!("postgres://postgres@127.0.0.1:{port}/yoink"),
        attempts,
    )
}

// One thread (the default): the relay runs on the test's thread, where the log capture
// is installed.
#[tokio::test]
async fn the_relay_backs_off_and_logs_once_while_postgres_is_unreachable() {
    let log = yoink_testkit::logs::capture();
    let (database_url, attempts) = hanging_up_postgres().await;
    let test_redis = TestRedis::new();
    let mut stores = StoreArgs::local(database_url, test_redis.url.clone());
    stores.key_prefix = test_redis.keys.prefix().to_owned();
    let redis = RedisConn::open(&stores).await.expect("redis");
    let pool = db::pool(&stores.database_url, 2).expect("pool");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = yoink_projector::relay::run(
        pool,
        redis,
        test_redis.keys.clone(),
        RelayArgs {
            batch: 500,
            interval_ms: 200,
            order_events_max_len: 0,
        },
        stopped,
    );
    let watch = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
    };
    tokio::join!(relay, watch);

    let attempts = attempts.load(Ordering::Relaxed);
    // Every 200 ms would be about 10 attempts (plus the backlog gauge's); doubling
    // from 100 ms: 0, 0.1, 0.3, 0.7, 1.5 s.
    assert!(
        (2..=7).contains(&attempts),
        "{attempts} connection attempts in 2 s"
    );
    let warnings: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line per outage: {warnings:#?}");
}
