//! While no projector reads a sale, its lag and pending grow and status says so,
//! down to the consumer that sits on entries; and a pending list of 20,000 entries is
//! answered within the per-command Redis timeout (bounded work per call).

use std::time::{Duration, Instant};

use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{SaleId, stream};
use yoink_testkit::{TestApp, spawn_app};

use crate::{consumer, json_of, status_of};

/// Reads up to `count` new entries of the sale's stream as consumer `name`, which
/// never acknowledges them (a projector that died holding its batch). On a plain
/// connection without a response timeout: a big batch is test setup, not the check.
async fn claim(app: &TestApp, sale: &SaleId, name: &str, count: usize) -> usize {
    let client = redis::Client::open(app.stores.redis_url.as_str()).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection");
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(PROJECTOR_GROUP)
        .arg(name)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(app.keys().events(sale))
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("xreadgroup");
    reply.keys.iter().map(|k| k.ids.len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_projector_stopped_lag_and_pending_grow_and_the_holder_is_named() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-lag", 100, 0).await;
    let projector = app.projector("p1");
    for i in 0..2 {
        assert_eq!(app.buy("st-lag", &format!("early{i}"), 1).await.0, 202);
    }
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;

    for i in 0..5 {
        assert_eq!(app.buy("st-lag", &format!("late{i}"), 1).await.0, 202);
    }
    let s = status_of(&app, "st-lag").await;
    assert_eq!(s.stream_length, Some(7));
    assert_eq!(s.lag, Some(5), "five entries nobody was given");
    assert_eq!(s.pending, Some(0));
    assert_eq!(s.stock, Some(93));
    assert_eq!(s.reserved, Some(7));
    assert_eq!(s.confirmed, Some(2), "nothing projected since the stop");
    assert!(s.oldest_undelivered_age_ms.is_some());
    assert!(s.oldest_pending_id.is_none());

    // A consumer takes three and never acknowledges them.
    assert_eq!(claim(&app, &sale, "ghost", 3).await, 3);
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 0..2 {
        assert_eq!(app.buy("st-lag", &format!("later{i}"), 1).await.0, 202);
    }
    let s = status_of(&app, "st-lag").await;
    assert_eq!(s.stream_length, Some(9));
    assert_eq!(s.lag, Some(4), "two left undelivered, two more bought");
    assert_eq!(s.pending, Some(3));
    assert_eq!(s.oldest_pending_consumer.as_deref(), Some("ghost"));
    assert_eq!(s.oldest_pending_deliveries, Some(1));
    assert!(s.oldest_pending_age_ms.is_some_and(|ms| ms >= 30), "{s:?}");
    assert!(s.oldest_pending_idle_ms.is_some_and(|ms| ms >= 30), "{s:?}");
    let (pending, idle) = consumer(&s, "ghost").expect("ghost listed");
    assert_eq!(pending, 3);
    assert!(idle >= 30, "idle {idle}");
    assert_eq!(consumer(&s, "p1").map(|(p, _)| p), Some(0));
    assert_eq!(
        s.consumers.as_ref().map(|c| c[0].name.as_str()),
        Some("ghost"),
        "most pending first"
    );
    assert_eq!(s.confirmed, Some(2));

    // The same, as a tool reads it.
    let line = json_of(&app, "st-lag").await;
    assert_eq!(line["lag"], 4);
    assert_eq!(line["pending"], 3);
    assert_eq!(line["oldest_pending_consumer"], "ghost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_list_of_twenty_thousand_entries_is_answered_within_the_redis_timeout() {
    const ENTRIES: usize = 20_000;
    let app = spawn_app().await;
    let sale = app.create_sale("st-big", ENTRIES as i64, 0).await;
    let mut redis = app.redis.clone();
    stream::ensure_group(&mut redis, &app.keys().events(&sale))
        .await
        .expect("group");
    app.reserve_many(&sale, "u", ENTRIES).await;
    let mut claimed = 0;
    while claimed < ENTRIES {
        let n = claim(&app, &sale, "ghost", 5_000).await;
        assert!(n > 0, "claimed {claimed} of {ENTRIES}");
        claimed += n;
    }

    // Every Redis command of the status call must answer within the app's
    // --redis-timeout-ms (500 ms): a call that walked the pending list would not.
    assert_eq!(app.stores.redis_timeout_ms, 500);
    let started = Instant::now();
    let s = status_of(&app, "st-big").await;
    let took = started.elapsed();
    assert_eq!(s.pending, Some(ENTRIES as i64));
    assert_eq!(s.lag, Some(0));
    assert_eq!(s.stream_length, Some(ENTRIES as i64));
    assert_eq!(s.stock, Some(0));
    assert_eq!(consumer(&s, "ghost").map(|(p, _)| p), Some(ENTRIES as i64));
    assert_eq!(s.oldest_pending_consumer.as_deref(), Some("ghost"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
