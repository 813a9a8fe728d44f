//! The sold-out fast path: after Redis said `sold_out`, this instance answers the crowd
//! from memory, but never past 100 ms once stock is back, and never a buy that may be
//! the retry of a 202.

use yoink_core::SaleId;
use yoink_core::scripts::SaleTerms;
use yoink_testkit::{AppOptions, TestApp, spawn_app_with};

const CHECKOUT: &str = "checkout-s3cret";

async fn app(recheck_ms: Option<u64>) -> TestApp {
    spawn_app_with(AppOptions {
        checkout_token: Some(CHECKOUT.into()),
        sold_out_recheck_ms: recheck_ms,
        ..AppOptions::default()
    })
    .await
}

/// A one-unit sale whose reservations are holds (so a cancel puts the unit back), sold.
async fn sold_hold_sale(app: &TestApp, id: &str) -> (SaleId, String) {
    let sale = app
        .create_sale_with(
            id,
            SaleTerms {
                initial_stock: 1,
                hold_seconds: 600,
                max_hold_seconds: 600,
                ..SaleTerms::default()
            },
        )
        .await;
    let (status, body) = app.buy(id, "first", 1).await;
    assert_eq!(status, 202, "{body}");
    let reservation = body["reservation_id"]
        .as_str()
        .expect("a reservation id")
        .to_owned();
    (sale, reservation)
}

#[tokio::test]
async fn a_sold_out_answer_is_remembered_for_as_many_units_or_more_and_not_fewer() {
    let app = app(Some(100)).await;
    let sale = app.create_sale("so-memory", 3, 0).await;
    let (status, body) = app.buy("so-memory", "big", 2).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.buy("so-memory", "bigger", 2).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("sold_out")));
    assert!(app.sold_out.refuses(&sale, 2) && app.sold_out.refuses(&sale, 5));
    assert!(!app.sold_out.refuses(&sale, 1), "one unit is still there");
    let (status, body) = app.buy("so-memory", "small", 1).await;
    assert_eq!(status, 202, "the last unit sells: {body}");
    assert!(
        !app.sold_out.refuses(&sale, 2),
        "a 202 forgets what was refused"
    );
}

#[tokio::test]
async fn a_unit_that_comes_back_is_sold_again_within_100_ms() {
    // The default window, as `serve` runs it.
    let app = app(None).await;
    let (sale, first) = sold_hold_sale(&app, "so-back").await;
    let (status, body) = app.buy("so-back", "late", 1).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("sold_out")));
    assert!(app.sold_out.refuses(&sale, 1), "the refusal is remembered");

    let (status, body) = app.cancel(&first, Some(CHECKOUT)).await;
    assert_eq!(status, 200, "{body}");
    // The bound: whatever this instance remembers, 100 ms after the unit came back a
    // buy reaches Redis and gets it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, body) = app.buy("so-back", "late", 1).await;
    assert_eq!(
        status, 202,
        "still answering sold_out 100 ms after stock came back: {body}"
    );
}

#[tokio::test]
async fn a_retry_with_its_idempotency_key_gets_its_202_even_after_the_sell_out() {
    let app = app(Some(100)).await;
    let sale = app.create_sale("so-retry", 1, 0).await;
    let (status, first) = app
        .buy_with_key("so-retry", "buyer", 1, Some("key-1"))
        .await;
    assert_eq!(status, 202, "{first}");
    let (status, _) = app.buy("so-retry", "other", 1).await;
    assert_eq!(status, 409);
    assert!(app.sold_out.refuses(&sale, 1));
    let (status, again) = app
        .buy_with_key("so-retry", "buyer", 1, Some("key-1"))
        .await;
    assert_eq!(status, 202, "the retry is replayed by Redis: {again}");
    assert_eq!(again["reservation_id"], first["reservation_id"]);
}

#[tokio::test]
async fn with_the_fast_path_off_every_buy_asks_redis() {
    let app = app(Some(0)).await;
    let sale = app.create_sale("so-off", 1, 0).await;
    assert_eq!(app.buy("so-off", "a", 1).await.0, 202);
    assert_eq!(app.buy("so-off", "b", 1).await.0, 409);
    assert!(!app.sold_out.refuses(&sale, 1));
}
