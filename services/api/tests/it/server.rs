//! Server behaviour: metrics keep the route label on errors, slow clients are cut off,
//! shutdown finishes requests in flight.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yoink_testkit::{AppOptions, spawn_app, spawn_app_with};

#[tokio::test]
async fn metrics_label_an_erroring_request_with_its_route_template() {
    let app = spawn_app().await;
    let (status, _) = app.get("/reservations/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = app.buy("no-such-sale-metrics", "u", 1).await;
    assert_eq!(status, 404);

    let text = metrics_text(&app).await;
    assert!(
        text.contains(
            r#"yoink_http_requests_total{route="/reservations/{id}",method="GET",status="400"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="/buy",method="POST",status="404""#));
    assert!(text.contains(r#"yoink_reservations_total{outcome="unknown_sale",sale="unknown"}"#));
    assert!(
        !text.contains("not-a-uuid"),
        "raw paths never become labels"
    );
    assert!(text.contains("yoink_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(AppOptions {
        header_timeout_secs: Some(1),
        ..AppOptions::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a half-sent request open past its timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_request_already_in_flight() {
    let mut app = spawn_app().await;
    app.create_sale("graceful", 5, 0).await;
    let body = br#"{"sale_id":"graceful","user_id":"late"}"#;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&body[..10]).await.expect("write part");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(&body[10..]).await.expect("write rest");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("answer before the grace period ends")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    let app = stopping.await.expect("server stopped");
    // New connections are refused once the server stopped.
    assert!(TcpStream::connect(app.addr).await.is_err());
}

#[tokio::test]
async fn reservation_outcomes_are_counted_under_the_error_codes_buyers_see() {
    let app = spawn_app().await;
    app.create_sale("vocabulary", 10, 0).await;
    assert_eq!(
        app.buy_with_key("vocabulary", "a", 1, Some("k")).await.0,
        202
    );
    let (status, body) = app.buy_with_key("vocabulary", "b", 1, Some("k")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("idempotency_key_reused"))
    );

    let text = metrics_text(&app).await;
    assert!(
        text.contains(
            r#"yoink_reservations_total{outcome="idempotency_key_reused",sale="vocabulary"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"yoink_reservations_total{outcome="reserved",sale="vocabulary"}"#));
    assert!(!text.contains(r#"outcome="idempotency_mismatch""#));
}

#[tokio::test]
async fn a_server_with_no_room_for_a_single_buy_refuses_to_start_and_names_the_flag() {
    let stores = yoink_core::StoreArgs::local(
        yoink_testkit::postgres_server_url(),
        yoink_testkit::redis_url(),
    );
    let mut args = yoink_api::ApiArgs::local();
    args.max_in_flight = 0;
    let refused = yoink_api::state(&stores, &args).await;
    let err = refused
        .err()
        .expect("max_in_flight 0 is refused")
        .to_string();
    assert!(err.contains("--max-in-flight"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

/// The app's `/metrics` page.
async fn metrics_text(app: &yoink_testkit::TestApp) -> String {
    app.http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}
