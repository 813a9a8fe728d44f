//! `yoink sale end` and `yoink sale archive` as an operator runs them (issue 15): an
//! archive refuses a live, undrained or diverged sale and says why; an archived sale
//! leaves no Redis key under its tag, answers from PostgreSQL with the figures it had,
//! reconciles as `archived`, is never rebuilt, and never takes stock again.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, SaleId};
use yoink_testkit::{AppOptions, PrivateRedisCluster, TestApp, now_ms, spawn_app, spawn_app_with};

use crate::YOINK;

/// Every key under the sale's prefix and tag, by `SCAN MATCH` on one Redis node (the
/// test's key prefixes hold no glob characters).
async fn keys_on(conn: &mut redis::aio::MultiplexedConnection, tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{tag}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await
            .expect("SCAN");
        found.extend(page);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Keys of `sale` on every node of `urls` (one URL, or a cluster's comma-separated list).
async fn keys_of_sale(urls: &str, keys: &Keyspace, sale: &SaleId) -> Vec<String> {
    let mut all = Vec::new();
    for url in urls.split(',') {
        let client = redis::Client::open(url.trim()).expect("Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis");
        all.extend(keys_on(&mut conn, &keys.sale_tag(sale)).await);
    }
    all
}

fn run(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let output = app
        .yoink_command(YOINK)
        .env(
            "YOINK_REDIS_CLUSTER",
            if app.stores.redis_cluster {
                "true"
            } else {
                "false"
            },
        )
        .args(args)
        .output()
        .expect("run yoink");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

async fn archived_at_is_set(app: &TestApp, sale: &str) -> bool {
    app.db
        .scalar(&format!(
            "SELECT count(*) FROM sales WHERE sale_id = '{sale}' AND archived_at IS NOT NULL"
        ))
        .await
        == 1
}

/// The figures a buyer and an operator see, without the fields an archive adds.
fn figures(mut view: Value) -> Value {
    if let Some(object) = view.as_object_mut() {
        object.remove("archived");
        object.remove("status");
    }
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_refuses_a_live_sale_and_says_why() {
    let app = spawn_app().await;
    let sale = app.create_sale("arch-live", 5, 0).await;
    let (code, text) = run(&app, &["sale", "archive", "--id", "arch-live", "--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("has not ended"), "{text}");
    assert!(!archived_at_is_set(&app, "arch-live").await);
    let mut redis = app.redis.clone();
    let stock: i64 = redis.get(app.keys().stock(&sale)).await.expect("stock");
    assert_eq!(stock, 5, "nothing of the live sale was touched");

    let (code, text) = run(&app, &["sale", "archive", "--id", "no-such-sale"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("no sale no-such-sale"), "{text}");
    let (code, text) = run(&app, &["sale", "end", "--id", "no-such-sale"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("no sale no-such-sale"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_refuses_a_sale_with_entries_undelivered_or_pending() {
    let app = spawn_app().await;
    let sale = app.create_sale("arch-pending", 10, 0).await;
    app.reserve_many(&sale, "u", 4).await;
    let (code, text) = run(&app, &["sale", "end", "--id", "arch-pending"]);
    assert_eq!(code, Some(0), "{text}");

    // No projector ever read them (no group yet).
    let (code, text) = run(&app, &["sale", "archive", "--id", "arch-pending", "--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("the stream holds 4 entries and no projectors' group"),
        "{text}"
    );
    // The group exists and never read them: undelivered.
    let mut redis = app.redis.clone();
    let events = app.keys().events(&sale);
    yoink_core::stream::ensure_group(&mut redis, &events)
        .await
        .expect("group");
    let (code, text) = run(&app, &["sale", "archive", "--id", "arch-pending", "--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("4 stream entries were never delivered"),
        "{text}"
    );

    // A projector read them and never acknowledged: pending.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(yoink_core::keys::PROJECTOR_GROUP)
        .arg("stuck-consumer")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&events)
        .arg(">")
        .query_async(&mut redis)
        .await
        .expect("XREADGROUP");
    let (code, text) = run(&app, &["sale", "archive", "--id", "arch-pending", "--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("4 stream entries are pending"), "{text}");
    assert!(!archived_at_is_set(&app, "arch-pending").await);
    let left = keys_of_sale(&app.stores.redis_url, app.keys(), &sale).await;
    assert!(left.len() >= 4, "nothing removed: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_refuses_a_diverged_sale() {
    let app = spawn_app().await;
    let sale = app.create_sale("arch-diverged", 10, 0).await;
    let projector = app.projector("arch-diverged-projector");
    app.reserve_many(&sale, "u", 3).await;
    assert!(app.wait_drained(&sale, Duration::from_secs(20)).await);
    projector.stop().await;
    let (code, text) = run(&app, &["sale", "end", "--id", "arch-diverged"]);
    assert_eq!(code, Some(0), "{text}");
    // Two units vanish from Redis's stock: taken, with no order and no reservation.
    let mut redis = app.redis.clone();
    let _: i64 = redis
        .decr(app.keys().stock(&sale), 2)
        .await
        .expect("DECRBY");

    let (code, text) = run(&app, &["sale", "archive", "--id", "arch-diverged", "--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("do not reconcile"), "{text}");
    assert!(text.contains("2 lost"), "{text}");
    assert!(!archived_at_is_set(&app, "arch-diverged").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_sale_that_has_not_started_closes_it_for_good() {
    let app = spawn_app().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let in_an_hour = now_ms + 3_600_000;
    let sale = app
        .create_sale_with(
            "arch-future",
            SaleTerms {
                initial_stock: 5,
                starts_at_ms: in_an_hour,
                ends_at_ms: in_an_hour + 3_600_000,
                ..SaleTerms::default()
            },
        )
        .await;
    let (code, text) = run(&app, &["sale", "end", "--id", "arch-future"]);
    assert_eq!(code, Some(0), "{text}");
    let ended: Value = serde_json::from_str(&text).expect("JSON outcome");
    let ends_at = ended["ends_at_ms"].as_i64().expect("ends_at_ms");
    assert_eq!(ended["starts_at_ms"].as_i64(), Some(ends_at - 1), "{text}");
    assert_eq!(ended["redis"], "closed", "{text}");
    assert!(ends_at < in_an_hour);
    // Again: nothing changes, and it never reopens.
    let (code, again) = run(&app, &["sale", "end", "--id", "arch-future"]);
    assert_eq!(code, Some(0), "{again}");
    let again: Value = serde_json::from_str(&again).expect("JSON outcome");
    assert_eq!(again["already_ended"], true);
    assert_eq!(again["ends_at_ms"].as_i64(), Some(ends_at));
    let mut redis = app.redis.clone();
    let redis_end: i64 = redis
        .hget(app.keys().meta(&sale), "ends_at_ms")
        .await
        .expect("meta");
    assert_eq!(redis_end, ends_at);
    let (status, body) = app.buy("arch-future", "alice", 1).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &"sale_closed".into()),
        "{body}"
    );
}

/// The whole life: buys, end, archive; then everything is answered from PostgreSQL and
/// nothing writes the sale's Redis state again.
async fn an_archived_sale_is_postgresql_s_alone(app: &TestApp, id: &str, redis_urls: &str) {
    let sale = app.create_sale(id, 10, 0).await;
    let projector = app.projector(&format!("{id}-projector"));
    let (status, first) = app.buy_with_key(id, "alice", 2, Some("key-alice")).await;
    assert_eq!(status, 202, "{first}");
    for user in ["bob", "carol", "dave"] {
        assert_eq!(app.buy(id, user, 1).await.0, 202);
    }
    assert!(app.wait_drained(&sale, Duration::from_secs(30)).await);
    let reservation = first["reservation_id"].as_str().expect("id").to_owned();
    let (_, sale_before) = app.get(&format!("/sales/{id}")).await;
    let (_, reservation_before) = app.get(&format!("/reservations/{reservation}")).await;
    assert_eq!(sale_before["confirmed"], 5, "{sale_before}");
    assert_eq!(sale_before["archived"], false, "{sale_before}");

    let (code, text) = run(app, &["sale", "end", "--id", id]);
    assert_eq!(code, Some(0), "{text}");
    let (status, body) = app.buy(id, "erin", 1).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &"sale_closed".into()),
        "{body}"
    );

    // The plan changes nothing.
    let (code, plan) = run(app, &["sale", "archive", "--id", id]);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains("add --yes"), "{plan}");
    assert!(!archived_at_is_set(app, id).await);
    assert!(!keys_of_sale(redis_urls, app.keys(), &sale).await.is_empty());

    let (code, done) = run(
        app,
        &[
            "sale",
            "archive",
            "--id",
            id,
            "--yes",
            "--settle-ms",
            "2500",
        ],
    );
    assert_eq!(code, Some(0), "{done}");
    assert!(archived_at_is_set(app, id).await);
    assert_eq!(
        keys_of_sale(redis_urls, app.keys(), &sale).await,
        Vec::<String>::new()
    );
    let mut redis = app.redis.clone();
    let registered: bool = redis
        .sismember(app.keys().sales_registry(), id)
        .await
        .expect("SISMEMBER");
    assert!(!registered, "the registry entry is gone");

    // PostgreSQL answers, with the same figures.
    let (status, sale_after) = app.get(&format!("/sales/{id}")).await;
    assert_eq!(status, 200, "{sale_after}");
    assert_eq!(sale_after["archived"], true, "{sale_after}");
    assert_eq!(sale_after["status"], "archived", "{sale_after}");
    assert_eq!(figures(sale_after), figures(sale_before));
    let (status, reservation_after) = app.get(&format!("/reservations/{reservation}")).await;
    assert_eq!(status, 200, "{reservation_after}");
    assert_eq!(reservation_after["archived"], true);
    assert_eq!(reservation_after["status"], "confirmed");
    assert_eq!(figures(reservation_after), figures(reservation_before));

    let (code, report) = run(app, &["reconcile", "--sale", id]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("archived"), "{report}");

    // Neither a buy nor a retry of a 202 takes stock, and neither brings Redis state back.
    let (status, body) = app.buy(id, "frank", 1).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &"sale_closed".into()),
        "{body}"
    );
    let (status, body) = app.buy_with_key(id, "alice", 2, Some("key-alice")).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &"sale_closed".into()),
        "{body}"
    );
    // The API's and the projector's fences run every second or faster: an archived sale
    // they still watched would be suspended (a key) and rebuilt (every key).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        keys_of_sale(redis_urls, app.keys(), &sale).await,
        Vec::<String>::new(),
        "nothing brought the sale back into Redis"
    );
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT confirmed_units FROM sales WHERE sale_id = '{id}'"
            ))
            .await,
        5
    );
    // Re-creating it is refused, and registers nothing.
    let (code, text) = run(app, &["sale", "create", "--id", id, "--stock", "10"]);
    assert_ne!(code, Some(0), "{text}");
    let registered: bool = redis
        .sismember(app.keys().sales_registry(), id)
        .await
        .expect("SISMEMBER");
    assert!(!registered, "{text}");
    // A stray key under the tag (a process that never learned of the archive suspended
    // it) is flagged, never repaired into a rebuild, and removed by a repeat.
    let _: i64 = redis
        .hset(app.keys().meta(&sale), "suspended", "1.000001")
        .await
        .expect("HSET");
    let (code, report) = run(app, &["reconcile", "--sale", id, "--repair", "--yes"]);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("archive_unbalanced"), "{report}");
    assert!(report.contains("1 Redis keys left"), "{report}");
    let (code, again) = run(app, &["sale", "archive", "--id", id, "--yes"]);
    assert_eq!(code, Some(0), "{again}");
    assert!(again.contains("1 Redis key(s) removed"), "{again}");
    assert!(again.contains("0 left"), "{again}");
    assert_eq!(run(app, &["reconcile", "--sale", id]).0, Some(0));
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_sale_answers_from_postgresql_and_never_comes_back() {
    let app = spawn_app().await;
    let urls = app.stores.redis_url.clone();
    an_archived_sale_is_postgresql_s_alone(&app, "arch-life", &urls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archiving_works_on_a_redis_cluster() {
    let cluster = PrivateRedisCluster::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(cluster.urls()),
        redis_cluster: true,
        ..AppOptions::default()
    })
    .await;
    an_archived_sale_is_postgresql_s_alone(&app, "arch-cluster", &cluster.urls()).await;
}

/// `yoink reconcile --watch --archive-after SECS` archives a sale on its own once it
/// has ended that long ago and a pass found it consistent, and leaves a live one be.
/// Two sales that end together are archived side by side (one settle wait, not one
/// each). Once archived and balanced, a sale is checked once more, then no longer every
/// pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_archives_an_ended_consistent_sale_after_its_delay() {
    let app = spawn_app().await;
    let ends_at_ms = now_ms() + 5_000;
    let ending = |stock| SaleTerms {
        initial_stock: stock,
        ends_at_ms,
        ..SaleTerms::default()
    };
    let ended = app.create_sale_with("arch-auto", ending(10)).await;
    let twin = app.create_sale_with("arch-auto-twin", ending(5)).await;
    let live = app.create_sale("arch-auto-live", 10, 0).await;
    app.reserve_many(&ended, "u", 3).await;
    app.reserve_many(&twin, "t", 2).await;
    app.reserve_many(&live, "v", 2).await;
    let projector = app.projector("arch-auto");
    for sale in [&ended, &twin, &live] {
        assert!(app.wait_drained(sale, Duration::from_secs(30)).await);
    }

    let port = yoink_testkit::free_port();
    let passes = tempfile::NamedTempFile::new().expect("a file for the watch's output");
    let mut watch = app
        .yoink_command(YOINK)
        .args([
            "reconcile",
            "--json",
            "--watch",
            "1",
            "--grace",
            "1",
            "--archive-after",
            "1",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(passes.reopen().expect("the watch's output file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn reconcile --watch");
    let archived = yoink_testkit::eventually(Duration::from_secs(30), || async {
        archived_at_is_set(&app, "arch-auto").await
            && archived_at_is_set(&app, "arch-auto-twin").await
            && keys_of_sale(&app.stores.redis_url, app.keys(), &ended)
                .await
                .is_empty()
    })
    .await;
    // The reports of each sale, in pass order, once three passes ran after the archive.
    let reports = |sale: &'static str| {
        std::fs::read_to_string(passes.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["sale_id"] == sale)
            .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<String>>()
    };
    let later_passes = yoink_testkit::eventually(Duration::from_secs(30), || async {
        let live = reports("arch-auto-live");
        let ended = reports("arch-auto");
        archived && live.len() >= ended.len() + 3
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape the watch")
        .text()
        .await
        .expect("metrics text");
    crate::signal(&watch, "-TERM");
    let _ = watch.wait();
    projector.stop().await;

    assert!(archived, "the ended sales were never archived");
    let apart_ms = app
        .db
        .scalar(
            "SELECT (extract(epoch FROM max(archived_at) - min(archived_at)) * 1000)::bigint
             FROM sales WHERE sale_id IN ('arch-auto', 'arch-auto-twin')",
        )
        .await;
    assert!(
        apart_ms < 2_000,
        "archived {apart_ms} ms apart: one after the other's 3 s settle"
    );
    assert!(
        later_passes,
        "no three passes without the archived sale: live {:?}, archived {:?}",
        reports("arch-auto-live"),
        reports("arch-auto")
    );
    let ended = reports("arch-auto");
    assert_eq!(
        ended.iter().filter(|s| *s == "archived").count(),
        1,
        "checked once archived, then no more: {ended:?}"
    );
    assert!(
        ended.iter().all(|s| s == "consistent" || s == "archived"),
        "{ended:?}"
    );
    assert!(
        metrics.contains(r#"yoink_sales_archived_total{sale="arch-auto"} 1"#),
        "{metrics}"
    );
    assert!(!archived_at_is_set(&app, "arch-auto-live").await);
    assert!(
        !keys_of_sale(&app.stores.redis_url, app.keys(), &live)
            .await
            .is_empty(),
        "the live sale keeps its keys"
    );
    let (status, view) = app.get("/sales/arch-auto").await;
    assert_eq!(
        (status, &view["status"]),
        (200, &"archived".into()),
        "{view}"
    );
    assert_eq!(view["reserved"], 3, "{view}");
}
