//! `POST /buy` under concurrency: no oversell, limits hold, retries replay.

use std::collections::HashSet;

use futures::future::join_all;
use redis::AsyncCommands;
use yoink_testkit::{AppOptions, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_buyers_on_five_hundred_units_get_exactly_five_hundred() {
    let app = spawn_app().await;
    let sale = app.create_sale("flash", 500, 0).await;

    let answers = join_all((0..2_000).map(|i| {
        let app = &app;
        async move { app.buy("flash", &format!("buyer-{i}"), 1).await }
    }))
    .await;

    let accepted: Vec<_> = answers.iter().filter(|(s, _)| *s == 202).collect();
    let sold_out = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"] == "sold_out")
        .count();
    let others: Vec<_> = answers
        .iter()
        .filter(|(s, b)| *s != 202 && !(*s == 409 && b["error"] == "sold_out"))
        .take(3)
        .collect();
    assert_eq!(
        accepted.len(),
        500,
        "202 answers; other answers, e.g. {others:?}"
    );
    assert_eq!(
        sold_out, 1_500,
        "409 sold_out answers; other answers, e.g. {others:?}"
    );
    let ids: HashSet<&str> = accepted
        .iter()
        .map(|(_, b)| b["reservation_id"].as_str().expect("reservation_id"))
        .collect();
    assert_eq!(ids.len(), 500, "no two reservations share an id");

    let mut redis = app.redis.clone();
    let remaining: i64 = redis.get(app.keys().stock(&sale)).await.expect("stock");
    let stream_len: i64 = redis.xlen(app.keys().events(&sale)).await.expect("xlen");
    assert_eq!(remaining, 0);
    assert_eq!(stream_len, 500, "one event per accepted unit");

    let (status, view) = app.get("/sales/flash").await;
    assert_eq!(status, 200);
    assert_eq!(view["remaining"], 0);
    assert_eq!(view["reserved"], 500);
    assert_eq!(view["initial_stock"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_firing_twenty_buys_gets_exactly_the_limit() {
    let app = spawn_app().await;
    let sale = app.create_sale("limited", 100, 2).await;

    let answers = join_all((0..20).map(|_| app.buy("limited", "greedy", 1))).await;

    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let limited = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b["error"] == "limit_exceeded")
        .count();
    assert_eq!(accepted, 2);
    assert_eq!(limited, 18);
    let mut redis = app.redis.clone();
    let held: i64 = redis
        .hget(app.keys().buyers(&sale), "greedy")
        .await
        .expect("buyer count");
    assert_eq!(held, 2);
    let remaining: i64 = redis.get(app.keys().stock(&sale)).await.expect("stock");
    assert_eq!(remaining, 98);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quantity_over_the_limit_is_refused_whole() {
    let app = spawn_app().await;
    app.create_sale("pairs", 10, 2).await;
    assert_eq!(app.buy("pairs", "u", 3).await.0, 429);
    assert_eq!(app.buy("pairs", "u", 2).await.0, 202);
    assert_eq!(app.buy("pairs", "u", 1).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_retries_with_one_idempotency_key_take_one_unit() {
    let app = spawn_app().await;
    let sale = app.create_sale("idem", 10, 0).await;

    let answers =
        join_all((0..50).map(|_| app.buy_with_key("idem", "retrier", 1, Some("order-attempt-1"))))
            .await;

    assert!(answers.iter().all(|(s, _)| *s == 202), "{answers:?}");
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["reservation_id"].as_str().expect("reservation_id"))
        .collect();
    assert_eq!(ids.len(), 1, "every answer carries the same reservation");
    let mut redis = app.redis.clone();
    let remaining: i64 = redis.get(app.keys().stock(&sale)).await.expect("stock");
    assert_eq!(remaining, 9, "one decrement");
    let stream_len: i64 = redis.xlen(app.keys().events(&sale)).await.expect("xlen");
    assert_eq!(stream_len, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_reused_for_another_buyer_is_refused() {
    let app = spawn_app().await;
    app.create_sale("idem2", 10, 0).await;
    assert_eq!(app.buy_with_key("idem2", "a", 1, Some("k")).await.0, 202);
    let (status, body) = app.buy_with_key("idem2", "b", 1, Some("k")).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "idempotency_key_reused");
    let (status, _) = app.buy_with_key("idem2", "a", 2, Some("k")).await;
    assert_eq!(status, 422, "same key, other quantity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_is_visible_as_reserved_until_decided() {
    let app = spawn_app().await;
    app.create_sale("visible", 5, 0).await;
    let (status, body) = app.buy("visible", "u1", 2).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "reserved");
    let id = body["reservation_id"].as_str().expect("reservation_id");

    let (status, view) = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "reserved");
    assert_eq!(view["sale_id"], "visible");
    assert_eq!(view["user_id"], "u1");
    assert_eq!(view["quantity"], 2);

    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app.get(&format!("/reservations/{unknown}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_reservation"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_only_202_409_or_503_and_every_unit_has_one_event() {
    // A bound far below the crowd, and a short Redis timeout, so 503s happen.
    let app = spawn_app_with(AppOptions {
        max_in_flight: Some(8),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("crowd", 300, 0).await;

    let answers = join_all((0..3_000).map(|i| {
        let app = &app;
        async move { app.buy("crowd", &format!("c{i}"), 1).await }
    }))
    .await;

    let mut taken = 0;
    let mut overloaded = 0;
    for (status, body) in &answers {
        match status {
            202 => taken += 1,
            409 => assert_eq!(body["error"], "sold_out"),
            503 => {
                overloaded += 1;
                assert!(body["error"] == "overloaded" || body["error"] == "unavailable");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(
        overloaded > 0,
        "the bound was never reached; the test proves nothing"
    );
    let mut redis = app.redis.clone();
    let remaining: i64 = redis.get(app.keys().stock(&sale)).await.expect("stock");
    let stream_len: i64 = redis.xlen(app.keys().events(&sale)).await.expect("xlen");
    assert_eq!(
        300 - remaining,
        stream_len,
        "units taken == events in the stream"
    );
    assert_eq!(
        taken, stream_len,
        "every 202 has its event and no event lacks a 202"
    );
}

#[tokio::test]
async fn a_whole_quantity_written_with_a_fraction_counts_and_an_encoded_id_is_found() {
    let app = spawn_app().await;
    app.create_sale("drop:1", 10, 0).await;
    let (status, body) = yoink_testkit::TestApp::status_and_json(
        app.http
            .post(format!("{}/buy", app.base))
            .body(r#"{"sale_id":"drop:1","user_id":"u","quantity":2.0}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["quantity"], 2);
    let (status, view) = app.get("/sales/drop%3A1").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["remaining"], 8);
}
