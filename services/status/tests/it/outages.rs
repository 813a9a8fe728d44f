//! A missing sale exits 3, a wrong flag 64; a store that is down leaves its figures
//! null with the reason and exits 2, while the other store's figures are shown; and
//! `--watch` keeps printing through an outage until it is stopped.

use std::time::{Duration, Instant};

use yoink_core::StoreArgs;
use yoink_status::{StatusArgs, StatusError, exit};
use yoink_testkit::{TestApp, free_port, spawn_app};

use crate::args_for;

/// The app's stores with Redis pointed at a port nobody listens on.
fn redis_down(app: &TestApp) -> StoreArgs {
    StoreArgs {
        redis_url: format!("redis://127.0.0.1:{}", free_port()),
        ..app.stores.clone()
    }
}

/// The app's stores with PostgreSQL pointed at a port nobody listens on.
fn postgres_down(app: &TestApp) -> StoreArgs {
    StoreArgs {
        database_url: format!("postgres://postgres@127.0.0.1:{}/yoink", free_port()),
        ..app.stores.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_neither_store_knows_exits_3_and_a_wrong_flag_64() {
    let app = spawn_app().await;
    app.create_sale("st-known", 5, 0).await;
    let mut out = Vec::new();
    let err = yoink_status::run_once(&app.stores, &args_for(Some("st-nope")), &mut out)
        .await
        .expect_err("no such sale");
    assert!(matches!(err, StatusError::UnknownSale(_)), "{err}");
    assert_eq!(err.exit_code(), exit::UNKNOWN_SALE);
    assert!(out.is_empty(), "nothing printed for an unknown sale");

    let err = yoink_status::collect(&app.stores, &args_for(Some("not a sale!")))
        .await
        .expect_err("not a sale id");
    assert_eq!(err.exit_code(), exit::USAGE);
    let watch_zero = StatusArgs {
        watch: Some(0),
        ..args_for(None)
    };
    let err = yoink_status::run(&app.stores, &watch_zero)
        .await
        .expect_err("--watch 0");
    assert_eq!(err.exit_code(), exit::USAGE);

    // With Redis down, PostgreSQL alone cannot say the sale does not exist.
    let report = yoink_status::collect(&redis_down(&app), &args_for(Some("st-nope")))
        .await
        .expect("answers with what it has");
    assert_eq!(report.exit_code(), exit::STORE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_postgres_figures_are_shown_redis_ones_are_null_and_it_exits_2() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-noredis", 10, 0).await;
    let projector = app.projector("p1");
    assert_eq!(app.buy("st-noredis", "u1", 3).await.0, 202);
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;

    let stores = redis_down(&app);
    let started = Instant::now();
    let report = yoink_status::collect(&stores, &args_for(None))
        .await
        .expect("answers with what it has");
    assert!(started.elapsed() < Duration::from_secs(10), "never hangs");
    assert_eq!(report.exit_code(), exit::STORE);
    assert_eq!(report.sales.len(), 1);
    let s = &report.sales[0];
    assert_eq!(s.sale_id, sale);
    assert_eq!(s.confirmed, Some(3));
    assert_eq!(s.in_postgres, Some(true));
    assert_eq!(
        (s.stock, s.lag, s.pending, s.in_redis),
        (None, None, None, None)
    );
    assert!(
        s.errors.iter().any(|e| e.starts_with("Redis")),
        "{:?}",
        s.errors
    );

    let mut out = Vec::new();
    let json = StatusArgs {
        json: true,
        ..args_for(Some("st-noredis"))
    };
    let code = yoink_status::run_once(&stores, &json, &mut out)
        .await
        .expect("answers");
    assert_eq!(code, exit::STORE);
    let line: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert_eq!(line["stock"], serde_json::Value::Null);
    assert_eq!(line["confirmed"], 3);
    assert!(
        line["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("Redis"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_redis_figures_are_shown_postgres_ones_are_null_and_it_exits_2() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-nopg", 10, 0).await;
    assert!(app.reserve_direct(&sale, "u1", 2).await);

    let started = Instant::now();
    let report = yoink_status::collect(&postgres_down(&app), &args_for(Some("st-nopg")))
        .await
        .expect("answers with what it has");
    assert!(started.elapsed() < Duration::from_secs(10), "never hangs");
    assert_eq!(report.exit_code(), exit::STORE);
    assert!(report.outbox.is_none());
    let s = &report.sales[0];
    assert_eq!(
        (s.stock, s.reserved, s.stream_length),
        (Some(8), Some(2), Some(1))
    );
    assert_eq!(s.lag, Some(1), "no projector group yet: every entry waits");
    assert_eq!(s.group_exists, Some(false));
    assert_eq!(
        (s.confirmed, s.orders, s.outbox_backlog),
        (None, None, None)
    );
    assert!(
        s.errors.iter().any(|e| e.starts_with("PostgreSQL")),
        "{:?}",
        s.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_stores_down_it_exits_2_and_watch_keeps_printing_until_stopped() {
    let app = spawn_app().await;
    let both_down = StoreArgs {
        redis_url: redis_down(&app).redis_url,
        ..postgres_down(&app)
    };
    let err = yoink_status::collect(&both_down, &args_for(None))
        .await
        .expect_err("nothing to read");
    assert!(matches!(err, StatusError::Unreadable { .. }), "{err}");
    assert_eq!(err.exit_code(), exit::STORE);

    let mut out = Vec::new();
    let code = yoink_status::watch(
        &both_down,
        &args_for(None),
        Duration::from_millis(50),
        &mut out,
        false,
        tokio::time::sleep(Duration::from_millis(400)),
    )
    .await
    .expect("watching goes on through the outage");
    assert_eq!(code, exit::OK);
    let text = String::from_utf8(out).expect("utf-8");
    let passes = text.matches("! neither store could be read").count();
    assert!(passes >= 2, "{passes} passes:\n{text}");
    assert_eq!(passes, text.matches("yoink status at ").count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_every_pass_as_json_lines() {
    let app = spawn_app().await;
    app.create_sale("st-watch", 3, 0).await;
    let mut out = Vec::new();
    let args = StatusArgs {
        json: true,
        ..args_for(Some("st-watch"))
    };
    yoink_status::watch(
        &app.stores,
        &args,
        Duration::from_millis(50),
        &mut out,
        false,
        tokio::time::sleep(Duration::from_millis(400)),
    )
    .await
    .expect("watches");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line one object"))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["sale_id"] == "st-watch" && l["stock"] == 3)
    );
}
