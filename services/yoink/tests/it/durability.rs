//! `serve --durability none|local|replica` against real Redis persistence settings and
//! a real replica: what each level promises holds when Redis dies, and a loss the level
//! allows is reported, never silent. Private Redis and PostgreSQL.

use std::time::Duration;

use futures::future::join_all;
use redis::AsyncCommands;
use serde_json::Value;
use uuid::Uuid;
use yoink_api::durability::Level;
use yoink_core::{RedisConn, SaleId};
use yoink_testkit::{
    AppOptions, PrivatePostgres, PrivateRedis, RunningProjector, Spawned, TestApp, eventually,
    spawn_app_with,
};

use crate::YOINK;

async fn redis_at(url: &str) -> RedisConn {
    RedisConn::open(&yoink_core::StoreArgs::local("postgres://unused", url))
        .await
        .expect("Redis handle")
}

async fn config_set(url: &str, name: &str, value: &str) {
    let mut conn = redis_at(url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");
}

/// `yoink serve` on a free port, with `--durability-check-secs 1`; its base URL.
fn serve(app: &TestApp, extra: &[&str]) -> (Spawned, String) {
    let port = yoink_testkit::free_port();
    let mut command = app.yoink_command(YOINK);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("YOINK_DURABILITY_CHECK_SECS", "1");
    (
        Spawned::start(&mut command),
        format!("http://127.0.0.1:{port}"),
    )
}

async fn get(url: &str) -> Option<(u16, Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

async fn buy(base: &str, user: &str) -> (u16, Value) {
    let request = reqwest::Client::new()
        .post(format!("{base}/buy"))
        .json(&serde_json::json!({ "sale_id": "durable", "user_id": user }));
    TestApp::status_and_json(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_durability_refuses_a_redis_that_fsyncs_every_second_and_stops_selling_if_it_starts_to()
 {
    let pg = PrivatePostgres::start().await;
    let redis =
        PrivateRedis::start_persistent(&["--appendonly", "yes", "--appendfsync", "everysec"]).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        postgres_server_url: Some(pg.url()),
        ..AppOptions::default()
    })
    .await;
    app.create_sale("durable", 100, 0).await;

    // Refused at start, naming the setting to change.
    let (mut refused, _) = serve(&app, &["--durability", "local"]);
    let status = refused
        .exit_within(Duration::from_secs(30))
        .expect("serve --durability local exits on everysec");
    let stderr = refused.output();
    assert!(!status.success(), "serve started: {stderr}");
    assert!(
        stderr.contains("appendfsync") && stderr.contains("always"),
        "{stderr}"
    );

    // With `appendfsync always` it serves, and says how durable each 202 is.
    config_set(&redis.url(), "appendfsync", "always").await;
    let (mut serving, base) = serve(&app, &["--durability", "local"]);
    let ready = eventually(Duration::from_secs(20), || async {
        get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ready, "serve --durability local never got ready");
    let (_, readyz) = get(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(readyz["durability"]["level"], "local", "{readyz}");
    let (status, body) = buy(&base, "first").await;
    assert_eq!(
        (status, &body["durability"]),
        (202, &"local".into()),
        "{body}"
    );

    // The setting changes under it: buys stop (nothing taken) until it is back.
    config_set(&redis.url(), "appendfsync", "everysec").await;
    let refused = eventually(Duration::from_secs(10), || async {
        buy(&base, "meanwhile").await.1["error"] == "not_durable"
    })
    .await;
    assert!(refused, "buys went on without fsync");
    assert_eq!(get(&format!("{base}/readyz")).await.map(|r| r.0), Some(503));
    let stock = app.keys().stock(&SaleId::parse("durable").expect("id"));
    let mut conn = redis_at(&redis.url()).await;
    let before: i64 = conn.get(&stock).await.expect("stock");
    for i in 0..5 {
        let (status, body) = buy(&base, &format!("refused-{i}")).await;
        assert_eq!(
            (status, &body["error"]),
            (503, &"not_durable".into()),
            "{body}"
        );
    }
    let after: i64 = conn.get(&stock).await.expect("stock");
    assert_eq!(before, after, "a refused buy takes nothing");
    config_set(&redis.url(), "appendfsync", "always").await;
    let resumed = eventually(Duration::from_secs(10), || async {
        buy(&base, "after").await.0 == 202
    })
    .await;
    assert!(resumed, "buys never resumed");
    let status = serving.terminate().expect("SIGTERM stops serve");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_refuses_config_is_reported_and_local_durability_refuses_it() {
    let pg = PrivatePostgres::start().await;
    let redis = PrivateRedis::start_with(&["--rename-command", "CONFIG", ""]).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        postgres_server_url: Some(pg.url()),
        ..AppOptions::default()
    })
    .await;
    // `none` serves, and says it cannot tell what a crash loses.
    let (status, readyz) = app.get("/readyz").await;
    assert_eq!(status, 200, "{readyz}");
    let said = readyz["durability"]["redis"].as_str().unwrap_or("");
    assert!(said.contains("CONFIG GET refused"), "{readyz}");
    assert_eq!(readyz["durability"]["loss_window"], "unknown", "{readyz}");

    // `local` cannot be verified, so it does not start.
    let mut args = yoink_api::ApiArgs::local();
    args.durability = Level::Local;
    let state = yoink_api::state(&app.stores, &args).await.expect("state");
    let mut conn = state.redis.clone();
    let refused = yoink_api::durability::check_at_start(&state.durability, &mut conn)
        .await
        .expect_err("local durability on a Redis that hides its settings");
    assert!(
        refused.to_string().contains("cannot be verified"),
        "{refused}"
    );
}

/// A primary, its replica, and the API on the primary with `--durability replica`,
/// waiting `timeout_ms` (`--durability-timeout-ms`) for the replica's acknowledgement
/// (and, when that is longer than the 500 ms default, waiting a second longer for Redis).
async fn with_a_replica(timeout_ms: u64) -> (PrivatePostgres, PrivateRedis, PrivateRedis, TestApp) {
    let pg = PrivatePostgres::start().await;
    let primary = PrivateRedis::start().await;
    let replica = PrivateRedis::start_replica_of(&primary).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(primary.url()),
        postgres_server_url: Some(pg.url()),
        durability: Some(Level::Replica),
        durability_timeout_ms: Some(timeout_ms),
        redis_timeout_ms: Some((timeout_ms + 1_000).max(500)),
        ..AppOptions::default()
    })
    .await;
    (pg, primary, replica, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_durability_keeps_every_202_when_the_primary_dies_and_its_replica_takes_over() {
    // 2 s, not the default 100 ms: this test is about what an acknowledgement keeps, and
    // the whole suite starves the CPU (a replica too slow to answer is the next test).
    let (_pg, mut primary, replica, app) = with_a_replica(2_000).await;
    let sale = app.create_sale("durable", 10_000, 0).await;
    let (_, readyz) = app.get("/readyz").await;
    assert_eq!(readyz["durability"]["replicas"], 1, "{readyz}");
    // A projector works along (so PostgreSQL may hold reservations the replica lacks).
    let projector = app.projector("on-primary");

    let answers = join_all((0..2_000).map(|i| {
        let app = &app;
        async move { app.buy("durable", &format!("u{i}"), 1).await }
    }))
    .await;
    primary.stop();
    let accepted: Vec<Uuid> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, body)| {
            assert_eq!(body["durability"], "replica", "{body}");
            body["reservation_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("a 202 carries its reservation id")
        })
        .collect();
    assert_eq!(
        accepted.len(),
        2_000,
        "a live replica acknowledges every buy"
    );

    // Promote the replica and point Yoink at it.
    let mut promoted = redis_at(&replica.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut promoted)
        .await
        .expect("REPLICAOF NO ONE");
    // Every reservation answered 202 exists: in the promoted replica, or already
    // decided in PostgreSQL.
    let records: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(app.keys().reservations(&sale))
        .arg(accepted.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .query_async(&mut promoted)
        .await
        .expect("HMGET");
    let pool = app.db.pool();
    let decided: std::collections::HashSet<Uuid> = pool
        .get()
        .await
        .expect("db")
        .query(
            "SELECT reservation_id FROM reservation_fates WHERE reservation_id = ANY($1)",
            &[&accepted],
        )
        .await
        .expect("fates")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&Uuid> = accepted
        .iter()
        .zip(&records)
        .filter(|(id, record)| record.is_none() && !decided.contains(id))
        .map(|(id, _)| id)
        .collect();
    assert!(missing.is_empty(), "202s lost in the failover: {missing:?}");
    drop(projector);
    let mut stores = app.stores.clone();
    stores.redis_url = replica.url();
    let projector =
        RunningProjector::start(&stores, yoink_projector::ProjectorArgs::local("on-replica"));
    let all_orders = eventually(Duration::from_secs(60), || async {
        let client = pool.get().await.expect("db");
        let orders: i64 = client
            .query_one(
                "SELECT count(*) FROM orders WHERE reservation_id = ANY($1)",
                &[&accepted],
            )
            .await
            .expect("count orders")
            .get(0);
        orders == accepted.len() as i64
    })
    .await;
    projector.stop().await;
    assert!(all_orders, "every reservation answered 202 became an order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_durability_answers_503_not_durable_when_no_replica_acknowledges_and_a_retry_returns_the_reservation()
 {
    let (_pg, _primary, replica, app) = with_a_replica(100).await;
    let sale = app.create_sale("durable", 10, 0).await;
    assert_eq!(
        app.buy_with_key("durable", "u1", 1, Some("k1")).await.0,
        202
    );

    // The replica stalls for longer than --durability-timeout-ms (100 ms).
    let stall = replica.stall(Duration::from_secs(1)).await;
    let (status, body) = app.buy_with_key("durable", "u2", 1, Some("k2")).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &"not_durable".into()),
        "{body}"
    );
    let pending = body["reservation_id"].clone();
    assert!(pending.is_string(), "the 503 names the reservation: {body}");
    stall.await.expect("the replica answers again");

    // The reservation stood; once the replica has it, the retry returns it.
    let (status, body) = app.buy_with_key("durable", "u2", 1, Some("k2")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reservation_id"], pending);
    let remaining: i64 = app
        .redis
        .clone()
        .get(app.keys().stock(&sale))
        .await
        .expect("stock");
    assert_eq!(remaining, 8, "the retry took nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_durability_reports_the_reservations_a_redis_restarted_empty_lost() {
    let pg = PrivatePostgres::start().await;
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        postgres_server_url: Some(pg.url()),
        ..AppOptions::default()
    })
    .await;
    let (_, readyz) = app.get("/readyz").await;
    let window = readyz["durability"]["loss_window"].as_str().unwrap_or("");
    assert!(window.starts_with("everything"), "{readyz}");

    let sale_name = "lossy-none";
    app.create_sale(sale_name, 100, 0).await;
    // No projector yet: every reservation is only in Redis.
    let accepted = join_all((0..30).map(|i| {
        let app = &app;
        async move { app.buy(sale_name, &format!("u{i}"), 1).await.0 }
    }))
    .await;
    assert!(accepted.iter().all(|s| *s == 202));
    let flushed = eventually(Duration::from_secs(10), || async {
        app.db
            .scalar("SELECT coalesce(max(issued_seq), 0) FROM sale_epochs")
            .await
            == 30
    })
    .await;
    assert!(flushed, "the API records what Redis handed out");

    redis.stop();
    redis.start_again().await;
    let projector = app.projector("finds-it-empty");
    let resumed = eventually(Duration::from_secs(15), || async {
        app.buy(sale_name, "later", 1).await.0 == 202
    })
    .await;
    assert!(resumed, "the sale was rebuilt and sells again");
    projector.stop().await;

    let output = app
        .yoink_command(YOINK)
        .args(["reconcile", "--sale", sale_name, "--json", "--grace", "1"])
        .output()
        .expect("run yoink reconcile");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let report: Value = serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("JSON");
    assert_eq!(report["status"], "data_lost", "{report}");
    assert_eq!(report["postgres"]["lost_reservations"], 30, "{report}");
    let metrics = yoink_core::telemetry::prometheus().render();
    assert!(
        metrics.contains(&format!(
            "yoink_sale_lost_reservations{{sale=\"{sale_name}\"}} 30"
        )),
        "{metrics}"
    );
    // The units themselves are back on sale: PostgreSQL never saw those reservations.
    let remaining: i64 = app
        .redis
        .clone()
        .get(app.keys().stock(&SaleId::parse(sale_name).expect("id")))
        .await
        .expect("stock");
    assert_eq!(remaining, 99);
}
