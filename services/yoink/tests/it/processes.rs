//! Projector and relay processes killed mid-work lose nothing and duplicate nothing.

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use yoink_testkit::{TestApp, spawn_app};

use crate::{YOINK, signal};

fn start_projector(app: &TestApp, name: &str) -> Child {
    app.yoink_command(YOINK)
        .args(["project", "--consumer", name])
        .args([
            "--block-ms",
            "100",
            "--claim-idle-ms",
            "500",
            "--claim-interval-ms",
            "100",
        ])
        .args(["--discover-interval-ms", "100", "--batch-size", "200"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn yoink project")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_five_times_mid_load_leaves_exactly_one_order_per_reservation() {
    let app = Arc::new(spawn_app().await);
    let sale = app.create_sale("killed", 1_000_000, 0).await;

    let buying = Arc::new(AtomicBool::new(true));
    let taken = Arc::new(AtomicUsize::new(0));
    let buyers: Vec<_> = (0..4)
        .map(|worker| {
            let app = app.clone();
            let sale = sale.clone();
            let buying = buying.clone();
            let taken = taken.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while buying.load(Ordering::Relaxed) {
                    if app
                        .reserve_direct(&sale, &format!("w{worker}-{i}"), 1)
                        .await
                    {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    if i % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        })
        .collect();

    // Each life gets a new consumer name, as a restarted process (new pid) would.
    for life in 0..5 {
        let mut projector = start_projector(&app, &format!("life-{life}"));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        signal(&projector, "-KILL");
        let _ = projector.wait();
    }
    buying.store(false, Ordering::Relaxed);
    for b in buyers {
        b.await.expect("buyer");
    }
    let taken = taken.load(Ordering::Relaxed) as i64;
    assert!(
        taken > 1_000,
        "too few reservations to prove anything: {taken}"
    );
    let orders_before_final = app.db.scalar("SELECT count(*) FROM orders").await;
    assert!(
        orders_before_final > 0,
        "the killed projectors made progress"
    );

    // A final projector takes over what the dead ones left pending (XAUTOCLAIM).
    let mut last = start_projector(&app, "survivor");
    let drained = app.wait_drained(&sale, Duration::from_secs(60)).await;
    signal(&last, "-TERM");
    let status = last.wait().expect("wait");
    assert!(drained, "not drained: {:?}", app.group_state(&sale).await);
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");

    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, taken);
    assert_eq!(
        app.db
            .scalar("SELECT count(DISTINCT reservation_id) FROM orders")
            .await,
        taken
    );
    let mut redis = app.redis.clone();
    let reserved_units: i64 = redis
        .hget(app.keys().meta(&sale), "reserved")
        .await
        .expect("meta");
    assert_eq!(reserved_units, taken, "every reservation has its order");
    assert_eq!(app.group_state(&sale).await.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_publish_publishes_every_event_at_least_once() {
    let app = spawn_app().await;
    let pool = app.db.pool();
    let client = pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO outbox (event_id, event_type, sale_id, payload)
             SELECT gen_random_uuid(), 'order.confirmed', 's', jsonb_build_object('n', n)
             FROM generate_series(1, 20000) n",
            &[],
        )
        .await
        .expect("seed outbox");
    let total = 20_000;

    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while app
        .db
        .scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .await
        > 0
        && Instant::now() < deadline
    {
        let mut relay = app
            .yoink_command(YOINK)
            .args(["relay", "--batch", "50", "--interval-ms", "10"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn relay");
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&relay, "-KILL");
        let _ = relay.wait();
        kills += 1;
    }
    // A relay with nothing left to do stops cleanly on SIGTERM.
    let mut relay = app
        .yoink_command(YOINK)
        .args(["relay"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn relay");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    signal(&relay, "-TERM");
    let status = relay.wait().expect("wait");
    assert!(status.success(), "relay exits 0 on SIGTERM: {status:?}");
    assert!(
        kills >= 2,
        "the relay was never killed mid-publish ({kills} kills)"
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );

    let mut redis = app.redis.clone();
    let mut ids: Vec<String> = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis
            .xrange_count(app.keys().order_events(), &start, "+", 2_000)
            .await
            .expect("xrange");
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        ids.extend(
            page.ids
                .iter()
                .map(|e| e.get::<String>("event_id").expect("every event has an id")),
        );
    }
    let unique: HashSet<&String> = ids.iter().collect();
    let rows = client
        .query("SELECT event_id::text FROM outbox", &[])
        .await
        .expect("ids");
    let outbox: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(ids.len() >= total, "published {} < {total}", ids.len());
    assert_eq!(
        unique.len(),
        total,
        "after dropping duplicates by event_id, each event once"
    );
    assert!(
        unique.iter().all(|id| outbox.contains(*id)),
        "every published id is an outbox event"
    );
}
