//! `yoink reconcile` as an operator runs it: exit codes 0 / 1 / 2, JSON figures,
//! repairs, and the `--watch` gauges.

use std::process::{Output, Stdio};
use std::time::Duration;

use futures::future::join_all;
use redis::AsyncCommands;
use serde_json::Value;
use yoink_core::SaleId;
use yoink_testkit::{AppOptions, PrivateRedis, TestApp, spawn_app, spawn_app_with};

use crate::{YOINK, signal};

pub(crate) fn reconcile(app: &TestApp, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = app
        .yoink_command(YOINK)
        .args(["reconcile", "--json", "--grace", "1"])
        .args(extra)
        .output()
        .expect("run yoink reconcile");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let reports = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let code = status.code().expect("exited, not killed");
    (
        code,
        reports,
        format!("{stdout}{}", String::from_utf8_lossy(&stderr)),
    )
}

async fn buy_crowd(app: &TestApp, sale: &str, buyers: usize) -> usize {
    join_all((0..buyers).map(|i| async move { app.buy(sale, &format!("b{i}"), 1).await.0 }))
        .await
        .iter()
        .filter(|s| **s == 202)
        .count()
}

async fn project_all(app: &TestApp, sale: &SaleId) {
    let projector = app.projector("reconcile-test");
    assert!(app.wait_drained(sale, Duration::from_secs(60)).await);
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_drained_sale_exits_0_with_every_figure_in_json() {
    let app = spawn_app().await;
    let sale = app.create_sale("clean", 500, 0).await;
    assert_eq!(buy_crowd(&app, "clean", 2_000).await, 500);
    project_all(&app, &sale).await;

    let (code, reports, text) = reconcile(&app, &["--all"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["status"], "consistent");
    for (field, value) in [
        ("initial_stock", 500),
        ("oversold_units", 0),
        ("lost_units", 0),
        ("phantom_units", 0),
        ("in_flight_units", 0),
        ("redis_self_diff", 0),
    ] {
        assert_eq!(r[field], value, "{field} in {r}");
    }
    assert_eq!(r["redis"]["remaining"], 0);
    // Projectors trim what PostgreSQL has (every --trim-interval-ms): the stream holds
    // at most the 500 entries, however many a trim pass removed before the stop.
    let stream_length = r["redis"]["stream_length"].as_i64().expect("stream_length");
    assert!((1..=500).contains(&stream_length), "{r}");
    assert_eq!(r["redis"]["pending"], 0);
    assert_eq!(r["redis"]["lag"], 0);
    assert_eq!(r["redis"]["dead_letters"], 0);
    assert_eq!(r["postgres"]["confirmed_units"], 500);
    assert_eq!(r["postgres"]["orders"], 500);
    assert_eq!(r["postgres"]["released_units"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_still_being_projected_is_in_flight_not_divergence() {
    let app = spawn_app().await;
    let sale = app.create_sale("backlog", 3_000, 0).await;
    app.reserve_many(&sale, "u", 3_000).await;
    // Nothing projected yet: all of it is lag.
    let (code, reports, text) = reconcile(&app, &["--sale", "backlog"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["status"], "in_flight");
    assert_eq!(reports[0]["in_flight_units"], 3_000);

    // And while a projector is working through it.
    let projector = app.projector("slow");
    let (code, reports, text) = reconcile(&app, &["--sale", "backlog"]);
    assert_eq!(code, 0, "{text}");
    assert_ne!(reports[0]["status"], "diverged");
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_taken_without_an_event_is_one_lost_unit() {
    let app = spawn_app().await;
    let sale = app.create_sale("seed-bug", 100, 0).await;
    assert_eq!(buy_crowd(&app, "seed-bug", 10).await, 10);
    project_all(&app, &sale).await;
    // The seed system's bug: stock decremented, no event, no order.
    let mut redis = app.redis.clone();
    let _: i64 = redis.decr(app.keys().stock(&sale), 1).await.expect("decr");

    let (code, reports, text) = reconcile(&app, &["--sale", "seed-bug"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(reports[0]["status"], "diverged");
    assert_eq!(reports[0]["lost_units"], 1);
    assert_eq!(reports[0]["phantom_units"], 0);
    assert_eq!(reports[0]["redis_self_diff"], 1);

    // Nothing to re-project; the repair gives the unit back to stock from the ledger.
    let (code, reports, text) = reconcile(&app, &["--sale", "seed-bug", "--repair", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["status"], "consistent");
    assert_eq!(reports[0]["redis"]["remaining"], 90);
    assert_eq!(reports[0]["redis_self_diff"], 0);
    let (status, _) = app.buy("seed-bug", "after-repair", 1).await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_order_is_flagged_and_repair_projects_it_again() {
    let app = spawn_app().await;
    let sale = app.create_sale("deleted", 50, 0).await;
    assert_eq!(buy_crowd(&app, "deleted", 20).await, 20);
    project_all(&app, &sale).await;
    let pool = app.db.pool();
    let db = pool.get().await.expect("db");
    let removed = db
        .execute(
            "DELETE FROM orders WHERE order_id IN (SELECT order_id FROM orders LIMIT 2)",
            &[],
        )
        .await
        .expect("delete");
    assert_eq!(removed, 2);

    let (code, reports, text) = reconcile(&app, &["--sale", "deleted"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(reports[0]["lost_units"], 2);

    // The plan alone changes nothing.
    let (code, _, text) = reconcile(&app, &["--sale", "deleted", "--repair"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("re-project 2 reservation(s)"), "{text}");
    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, 18);

    let (code, reports, text) = reconcile(&app, &["--sale", "deleted", "--repair", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["status"], "consistent");
    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, 20);
    let (code, _, text) = reconcile(&app, &["--sale", "deleted"]);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_that_lost_its_data_shows_phantom_units_and_repair_prevents_oversell() {
    let redis_server = PrivateRedis::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis_server.url()),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("flushed", 100, 0).await;
    assert_eq!(buy_crowd(&app, "flushed", 40).await, 40);
    project_all(&app, &sale).await;

    let mut redis = app.redis.clone();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .expect("flush the private Redis");

    let (code, reports, text) = reconcile(&app, &["--sale", "flushed"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(reports[0]["phantom_units"], 40);
    assert_eq!(reports[0]["redis"]["present"], false);

    let (code, reports, text) = reconcile(&app, &["--sale", "flushed", "--repair", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["redis"]["remaining"], 60);

    // Buying resumes: only what is left can be sold.
    let projector = app.projector("after-repair");
    let sold = join_all((0..150).map(|i| {
        let app = &app;
        async move { app.buy("flushed", &format!("late{i}"), 1).await.0 }
    }))
    .await
    .iter()
    .filter(|s| **s == 202)
    .count();
    assert_eq!(sold, 60);
    assert!(app.wait_drained(&sale, Duration::from_secs(30)).await);
    projector.stop().await;
    let confirmed = app
        .db
        .scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM orders")
        .await;
    assert_eq!(confirmed, 100, "never more than the initial stock");
    let (code, _, text) = reconcile(&app, &["--sale", "flushed"]);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test]
async fn postgres_unreachable_exits_2_with_a_one_line_reason() {
    let app = spawn_app().await;
    let output = app
        .yoink_command(YOINK)
        .env(
            "DATABASE_URL",
            format!(
                "postgres://postgres@127.0.0.1:{}/x",
                yoink_testkit::free_port()
            ),
        )
        .args(["reconcile", "--all"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("PostgreSQL unreachable"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_exports_the_gauges_on_metrics() {
    let app = spawn_app().await;
    let sale = app.create_sale("watched", 10, 0).await;
    assert!(app.reserve_direct(&sale, "u", 3).await);
    let port = yoink_testkit::free_port();
    let mut watcher = app
        .yoink_command(YOINK)
        .args(["reconcile", "--watch", "1", "--grace", "1"])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = false;
    while !seen && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(body) = reqwest_get(&url).await {
            text = body;
        }
        seen = text.contains(r#"yoink_reconcile_in_flight_units{sale="watched"} 3"#)
            && text.contains("yoink_reconcile_last_success_timestamp_seconds");
    }
    signal(&watcher, "-TERM");
    let status = watcher.wait().expect("wait");
    assert!(seen, "{text}");
    assert!(
        text.contains(r#"yoink_reconcile_oversold_units{sale="watched"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"yoink_reconcile_divergence_units{sale="watched",kind="lost"} 0"#),
        "{text}"
    );
    assert!(status.success(), "{status:?}");
    // What the sale's keys take, as Redis counts it exactly (every element walked).
    let exported =
        yoink_testkit::metric_value(&text, r#"yoink_sale_redis_memory_bytes{sale="watched"}"#)
            .unwrap_or_else(|| panic!("no memory gauge in:\n{text}"));
    let mut redis = app.redis.clone();
    let mut exact = 0.0;
    for key in app.keys().all_of_sale(&sale) {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut redis)
            .await
            .expect("MEMORY USAGE");
        exact += bytes.unwrap_or(0) as f64;
    }
    assert!(exact > 0.0);
    assert!(
        (exported - exact).abs() <= exact * 0.1,
        "exported {exported} B, exact {exact} B"
    );
    assert!(
        text.contains("# HELP yoink_sale_redis_memory_bytes "),
        "{text}"
    );
}

async fn reqwest_get(url: &str) -> Result<String, reqwest::Error> {
    reqwest::get(url).await?.text().await
}

#[tokio::test]
async fn a_typo_in_the_sale_exits_3_and_a_wrong_command_line_64_not_like_an_outage() {
    let app = spawn_app().await;
    app.create_sale("real", 5, 0).await;
    let (code, _, text) = reconcile(&app, &["--sale", "reel"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("no sale reel"), "{text}");
    let (code, _, text) = reconcile(&app, &["--sale", "not a sale id"]);
    assert_eq!(code, 64, "{text}");
    let (code, _, text) = reconcile(&app, &["--no-such-flag"]);
    assert_eq!(code, 64, "{text}");
    let (code, _, text) = reconcile(&app, &["--sale", "real"]);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_postgres_recorded_and_redis_never_applied_is_flagged_and_repaired() {
    let app = spawn_app().await;
    let sale = app.create_sale("unreleased", 10, 0).await;
    assert!(app.reserve_direct(&sale, "u1", 3).await);
    let mut redis = app.redis.clone();
    let stream = app.keys().events(&sale);
    let entries = yoink_core::stream::read_range(&mut redis, &stream, "-", "+")
        .await
        .expect("XRANGE");
    let (stream_id, reserved) = yoink_core::stream::reservations(&entries)
        .pop()
        .expect("the reservation");
    // A dead letter recorded `released`, its release script failed, and the entry was
    // acknowledged anyway (as older projectors did): no redelivery will heal it.
    yoink_core::ledger::release(&app.db.pool(), &stream_id, &reserved, "refused")
        .await
        .expect("record the fate");
    yoink_core::stream::ensure_group(&mut redis, &stream)
        .await
        .expect("group");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            yoink_core::keys::PROJECTOR_GROUP,
            "test",
            "STREAMS",
            &stream,
            ">",
        ])
        .query_async(&mut redis)
        .await
        .expect("XREADGROUP");
    let _: i64 = redis
        .xack(&stream, yoink_core::keys::PROJECTOR_GROUP, &[&stream_id])
        .await
        .expect("XACK");

    let (code, reports, text) = reconcile(&app, &["--sale", "unreleased"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(reports[0]["status"], "diverged", "{text}");
    assert_eq!(reports[0]["pending_release_units"], 3, "{text}");

    let (code, reports, text) = reconcile(&app, &["--sale", "unreleased", "--repair", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(reports[0]["redis"]["remaining"], 10, "{text}");
}
