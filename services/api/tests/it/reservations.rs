//! `GET /reservations/{id}` is unauthenticated: what one lookup costs Redis must not
//! grow with the number of sales, and a reservation PostgreSQL has not decided yet is
//! still found in Redis.

use std::time::Duration;

use futures::StreamExt;
use yoink_core::{ReservationId, SaleId};
use yoink_testkit::{AppOptions, PrivateRedis, TestApp, spawn_app, spawn_app_with};

/// Runs `during` while MONITOR watches the Redis at `url`; returns what clients sent
/// meanwhile, leaving out scripts and the commands they run (`[0 lua]`): those are the
/// app's background fence check, one script per known sale every second.
async fn commands_sent_during<T>(url: &str, during: impl Future<Output = T>) -> (T, Vec<String>) {
    let client = redis::Client::open(url).expect("url");
    let monitor = client.get_async_monitor().await.expect("MONITOR");
    let mut lines = monitor.into_on_message::<String>();
    let out = during.await;
    // Every line sent before this marker's has arrived once the marker's has.
    let marker = yoink_testkit::unique_name("end-of-lookup");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: String = redis::cmd("ECHO")
        .arg(&marker)
        .query_async(&mut conn)
        .await
        .expect("ECHO");
    let mut sent = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("MONITOR lines keep coming")
            .expect("MONITOR stays open");
        if line.contains(&marker) {
            break;
        }
        let lowercase = line.to_lowercase();
        if !line.contains(" lua]") && !lowercase.contains("\"evalsha\"") {
            sent.push(line);
        }
    }
    (out, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_reservation_id_costs_redis_the_same_few_commands_with_a_thousand_sales() {
    // A Redis of the test's own, so the command counts are this app's alone.
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    futures::stream::iter(0..1_000)
        .for_each_concurrent(25, |i| {
            let app = &app;
            async move {
                app.create_sale(&format!("many-{i}"), 10, 0).await;
            }
        })
        .await;
    let (status, body) = app.buy("many-500", "holder", 2).await;
    assert_eq!(status, 202, "{body}");
    let held = body["reservation_id"]
        .as_str()
        .expect("reservation_id")
        .to_owned();

    // An id of the old kind (v7), and one carrying the tag of a sale that exists (the
    // worst an unknown id can do: its sale, and any sharing its tag, are asked).
    let tagged = ReservationId::for_sale(&SaleId::parse("many-500").expect("valid id"));
    for unknown in [uuid::Uuid::now_v7().to_string(), tagged.to_string()] {
        let ((status, body), sent) =
            commands_sent_during(&redis.url(), app.get(&format!("/reservations/{unknown}"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("unknown_reservation")),
            "{unknown}"
        );
        assert!(
            sent.len() <= 3,
            "one unknown id ({unknown}) cost {} Redis commands with 1,000 sales: {:?}",
            sent.len(),
            &sent[..sent.len().min(5)]
        );
    }

    // A reservation Redis holds and PostgreSQL has not decided (no projector runs)
    // is still found.
    let (status, view) = app.get(&format!("/reservations/{held}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "reserved");
    assert_eq!(view["sale_id"], "many-500");
    assert_eq!(view["quantity"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_another_instance_made_is_found_in_a_sale_created_after_this_one_started() {
    let app = spawn_app().await;
    // A second API instance on the same stores, started before the sale exists: it
    // learns of the sale from PostgreSQL, not from a buy of its own.
    let state = yoink_api::state(&app.stores, &yoink_api::ApiArgs::local())
        .await
        .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let other = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(yoink_api::run(
        listener,
        state,
        yoink_api::ApiArgs::local(),
        async {
            let _ = stopped.await;
        },
    ));

    app.create_sale("later", 5, 0).await;
    let (status, body) = app.buy("later", "u", 1).await;
    assert_eq!(status, 202, "{body}");
    let id = body["reservation_id"]
        .as_str()
        .expect("reservation_id")
        .to_owned();
    let url = format!("{other}/reservations/{id}");
    let found = yoink_testkit::eventually(Duration::from_secs(5), || async {
        TestApp::status_and_json(app.http.get(&url)).await.1["status"] == "reserved"
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    assert!(found, "the other instance never found the reservation");
}
