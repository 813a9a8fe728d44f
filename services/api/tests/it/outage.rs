//! A store that is down gets 503 quickly; the service recovers without a restart.

use std::time::{Duration, Instant};

use yoink_testkit::{AppOptions, PrivateRedis, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_answers_503_within_a_second_and_a_redis_back_empty_is_rebuilt_without_a_restart()
 {
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    app.create_sale("outage", 100, 0).await;
    assert_eq!(app.buy("outage", "before", 1).await.0, 202);

    redis.stop();
    for i in 0..5 {
        let started = Instant::now();
        let (status, body) = app.buy("outage", &format!("during-{i}"), 1).await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "unavailable");
        assert!(took < Duration::from_secs(1), "503 took {took:?}");
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["redis"], "down");
    assert_eq!(body["postgres"], "ok");
    assert_eq!(
        app.get("/healthz").await.0,
        200,
        "alive even when not ready"
    );

    // The private server lost its data with the process. The same app (no restart)
    // sees a Redis below the sale's floor: it fails closed, never 202, never 404...
    redis.start_again().await;
    let recovered = yoink_testkit::eventually(Duration::from_secs(5), || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    assert!(recovered, "/readyz never came back");
    let (status, body) = app.buy("outage", "too-early", 1).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &"sale_recovering".into()),
        "{body}"
    );

    // ...until a projector rebuilds the sale from PostgreSQL.
    let projector = app.projector("rebuilds");
    let sold = yoink_testkit::eventually(Duration::from_secs(10), || async {
        app.buy("outage", "after", 1).await.0 == 202
    })
    .await;
    projector.stop().await;
    assert!(sold, "the sale never came back");
}

#[tokio::test]
async fn postgres_unreachable_makes_readyz_503_and_buy_still_work() {
    // PostgreSQL URL pointing at a port nobody listens on; Redis is fine.
    let app = spawn_app_with(AppOptions::default()).await;
    app.create_sale("pg-down", 5, 0).await;
    let mut stores = app.stores.clone();
    stores.database_url = format!(
        "postgres://postgres@127.0.0.1:{}/nothing",
        yoink_testkit::free_port()
    );
    let state = yoink_api::state(&stores, &yoink_api::ApiArgs::local())
        .await
        .expect("state builds without reaching PostgreSQL");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(yoink_api::run(
        listener,
        state,
        yoink_api::ApiArgs::local(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) =
        yoink_testkit::TestApp::status_and_json(http.get(format!("{base}/readyz"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["postgres"], "down");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The buy path never touches PostgreSQL.
    let (status, body) = yoink_testkit::TestApp::status_and_json(
        http.post(format!("{base}/buy"))
            .json(&serde_json::json!({"sale_id": "pg-down", "user_id": "u"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) =
        yoink_testkit::TestApp::status_and_json(http.get(format!("{base}/sales/pg-down"))).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_lost_to_a_timeout_is_retried_without_taking_stock_twice() {
    // The trap of a response timeout under load: the client times out after Redis ran the
    // script. A private Redis is stalled with DEBUG SLEEP past the client timeout.
    let redis = PrivateRedis::start_with(&["--enable-debug-command", "yes"]).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        redis_timeout_ms: Some(300),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("slow", 10, 0).await;
    let sleeping = redis.stall(Duration::from_millis(450)).await;

    let started = std::time::Instant::now();
    let (status, body) = app.buy("slow", "patient", 1).await;
    let took = started.elapsed();
    sleeping.await.expect("DEBUG SLEEP ran");
    assert!(
        took > Duration::from_millis(300),
        "the first call really timed out: {took:?}"
    );
    assert_eq!(
        status, 202,
        "the retry with the same id is answered: {body}"
    );

    assert_eq!(
        stock_and_events(&app, &sale).await,
        (9, 1),
        "one unit taken and one event, not two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buy_whose_replies_are_both_lost_answers_503_with_its_id_and_a_retry_with_its_key_resolves_it()
 {
    // Redis stalls longer than two reserve timeouts: the call and its retry both time
    // out, yet Redis runs them once it wakes up.
    let redis = PrivateRedis::start_with(&["--enable-debug-command", "yes"]).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        redis_timeout_ms: Some(200),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("stalled", 10, 0).await;
    // Load the reserve script first, as any live server has: on a fresh Redis the
    // stalled EVALSHA would answer NOSCRIPT after its caller gave up, and nothing would
    // run (the retry below would then reserve anew, under another id).
    app.create_sale("warm-up", 1, 0).await;
    assert_eq!(app.buy("warm-up", "first", 1).await.0, 202);
    let sleeping = redis.stall(Duration::from_millis(1_200)).await;

    let response = app
        .http
        .post(format!("{}/buy", app.base))
        .header("Idempotency-Key", "checkout-7")
        .json(&serde_json::json!({"sale_id": "stalled", "user_id": "blind", "quantity": 1}))
        .send()
        .await
        .expect("the app answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    let id = body["reservation_id"]
        .as_str()
        .expect("the 503 names the reservation the server made")
        .to_owned();
    assert!(
        body.get("detail").is_none(),
        "5xx bodies hide internals: {body}"
    );

    sleeping.await.expect("DEBUG SLEEP ran");
    let (status, body) = app
        .buy_with_key("stalled", "blind", 1, Some("checkout-7"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reservation_id"], id.as_str(), "the same reservation");

    assert_eq!(
        stock_and_events(&app, &sale).await,
        (9, 1),
        "one unit taken and one event, not two"
    );
}

/// A sale's units left and the length of its event stream.
async fn stock_and_events(app: &yoink_testkit::TestApp, sale: &yoink_core::SaleId) -> (i64, i64) {
    let mut conn = app.redis.clone();
    let remaining: i64 = redis::AsyncCommands::get(&mut conn, app.keys().stock(sale))
        .await
        .expect("stock");
    let events: i64 = redis::AsyncCommands::xlen(&mut conn, app.keys().events(sale))
        .await
        .expect("xlen");
    (remaining, events)
}
