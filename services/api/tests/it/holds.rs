//! Holds from the checkout side: `POST /reservations/{id}/confirm`, `/cancel` and
//! `/extend`. PostgreSQL decides once and every repeat answers that decision; units come
//! back exactly once; nothing is read or changed before the bearer token is checked.
//! No projector runs: the API records a hold from Redis itself.

use std::time::Duration;

use serde_json::Value;
use yoink_core::scripts::SaleTerms;
use yoink_core::{ReservationId, SaleId};
use yoink_testkit::{
    AppOptions, PrivatePostgres, PrivateRedis, TestApp, now_ms, spawn_app, spawn_app_with,
};

const CHECKOUT: &str = "checkout-s3cret";

async fn app_with_checkout_token() -> TestApp {
    spawn_app_with(AppOptions {
        checkout_token: Some(CHECKOUT.into()),
        admin_token: Some("admin-s3cret".into()),
        ..AppOptions::default()
    })
    .await
}

/// A sale of `stock` units whose reservations are holds.
async fn hold_sale(app: &TestApp, id: &str, stock: i64, hold: i64, max_hold: i64) -> SaleId {
    app.create_sale_with(
        id,
        SaleTerms {
            initial_stock: stock,
            hold_seconds: hold,
            max_hold_seconds: max_hold,
            ..SaleTerms::default()
        },
    )
    .await
}

/// Buys `quantity` units and returns the 202 body.
async fn hold(app: &TestApp, sale: &str, user: &str, quantity: i64) -> Value {
    let (status, body) = app.buy(sale, user, quantity).await;
    assert_eq!(status, 202, "{body}");
    body
}

fn id_of(body: &Value) -> String {
    body["reservation_id"]
        .as_str()
        .expect("a reservation_id")
        .to_owned()
}

async fn remaining(app: &TestApp, sale: &str) -> i64 {
    let (status, view) = app.get(&format!("/sales/{sale}")).await;
    assert_eq!(status, 200, "{view}");
    view["remaining"].as_i64().expect("remaining")
}

async fn reservation(app: &TestApp, id: &str) -> Value {
    let (status, view) = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(status, 200, "{view}");
    view
}

fn error_of(answer: &(u16, Value)) -> (u16, Option<&str>) {
    (answer.0, answer.1["error"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirming_twice_answers_the_same_order_and_a_confirmed_hold_cannot_be_cancelled() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-confirm", 5, 60, 120).await;
    let id = id_of(&hold(&app, "h-confirm", "alice", 2).await);

    let (status, first) = app.confirm(&id, Some(CHECKOUT)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "confirmed");
    assert_eq!(first["reservation_id"], id.as_str());
    assert_eq!(first["sale_id"], "h-confirm");
    assert_eq!(first["user_id"], "alice");
    assert_eq!(first["quantity"], 2);
    assert!(first["reserved_at_ms"].is_i64(), "{first}");
    let order = first["order_id"].as_str().expect("an order_id").to_owned();

    let (status, again) = app.confirm(&id, Some(CHECKOUT)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first, "a repeat answers the same order");
    let view = reservation(&app, &id).await;
    assert_eq!(view["status"], "confirmed");
    assert_eq!(view["order_id"], order.as_str());

    assert_eq!(
        error_of(&app.cancel(&id, Some(CHECKOUT)).await),
        (409, Some("hold_confirmed"))
    );
    assert_eq!(
        error_of(&app.extend(&id, Some(CHECKOUT), Some(10)).await),
        (409, Some("hold_confirmed"))
    );
    assert_eq!(
        remaining(&app, "h-confirm").await,
        3,
        "an order keeps its units"
    );
    let (_, sale) = app.get("/sales/h-confirm").await;
    assert_eq!(sale["confirmed"], 2, "{sale}");
    assert_eq!(sale["held"], 0, "{sale}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_twice_answers_the_same_and_gives_the_units_back_once() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-cancel", 5, 60, 120).await;
    let id = id_of(&hold(&app, "h-cancel", "bob", 2).await);
    let other = id_of(&hold(&app, "h-cancel", "carol", 1).await);
    assert_eq!(remaining(&app, "h-cancel").await, 2);

    let (status, first) = app.cancel(&id, Some(CHECKOUT)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "released");
    assert_eq!(first["reason"], "cancelled");
    assert!(first.get("order_id").is_none(), "{first}");
    assert_eq!(
        remaining(&app, "h-cancel").await,
        4,
        "the two units are back"
    );

    let again = app.cancel(&id, Some(CHECKOUT)).await;
    assert_eq!(again, (200, first.clone()), "a repeat answers the same");
    assert_eq!(
        remaining(&app, "h-cancel").await,
        4,
        "and gives nothing back twice"
    );

    let view = reservation(&app, &id).await;
    assert_eq!(
        (&view["status"], &view["reason"]),
        (&"released".into(), &"cancelled".into())
    );
    assert_eq!(
        error_of(&app.confirm(&id, Some(CHECKOUT)).await),
        (409, Some("hold_cancelled"))
    );
    assert_eq!(
        error_of(&app.extend(&id, Some(CHECKOUT), None).await),
        (409, Some("hold_cancelled"))
    );
    assert_eq!(remaining(&app, "h-cancel").await, 4);

    // The other hold is untouched.
    assert_eq!(reservation(&app, &other).await["status"], "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extended_hold_is_confirmed_after_its_original_deadline() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-extend", 5, 1, 5).await;
    let bought = hold(&app, "h-extend", "dave", 1).await;
    let id = id_of(&bought);
    let original = bought["expires_at_ms"].as_i64().expect("a deadline");

    let (status, extended) = app.extend(&id, Some(CHECKOUT), Some(3)).await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["status"], "held");
    let moved = extended["expires_at_ms"]
        .as_i64()
        .expect("the new deadline");
    assert!(
        (moved - (original + 3_000)).abs() <= 5,
        "{original} + 3 s, got {moved}"
    );
    assert!(extended["expires_at"].is_string(), "{extended}");
    let view = reservation(&app, &id).await;
    assert_eq!(view["status"], "held");
    assert_eq!(view["expires_at_ms"], moved);

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(now_ms() > original, "past the original deadline");
    let (status, confirmed) = app.confirm(&id, Some(CHECKOUT)).await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["status"], "confirmed");
    assert!(confirmed["order_id"].is_string(), "{confirmed}");
    assert_eq!(remaining(&app, "h-extend").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extending_without_a_body_moves_the_deadline_by_the_sales_hold_seconds() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-default", 5, 10, 60).await;
    let bought = hold(&app, "h-default", "erin", 1).await;
    let original = bought["expires_at_ms"].as_i64().expect("a deadline");
    let (status, extended) = app.extend(&id_of(&bought), Some(CHECKOUT), None).await;
    assert_eq!(status, 200, "{extended}");
    let moved = extended["expires_at_ms"]
        .as_i64()
        .expect("the new deadline");
    assert!(
        (moved - (original + 10_000)).abs() <= 5,
        "{original} + 10 s, got {moved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirming_after_expiry_answers_409_and_the_units_are_back_once() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-expire", 5, 1, 1).await;
    let id = id_of(&hold(&app, "h-expire", "frank", 2).await);
    assert_eq!(remaining(&app, "h-expire").await, 3);

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        error_of(&app.confirm(&id, Some(CHECKOUT)).await),
        (409, Some("hold_expired"))
    );
    assert_eq!(remaining(&app, "h-expire").await, 5, "the units are back");
    let view = reservation(&app, &id).await;
    assert_eq!(
        (&view["status"], &view["reason"]),
        (&"released".into(), &"expired".into())
    );

    for answer in [
        app.confirm(&id, Some(CHECKOUT)).await,
        app.cancel(&id, Some(CHECKOUT)).await,
        app.extend(&id, Some(CHECKOUT), Some(5)).await,
    ] {
        assert_eq!(
            error_of(&answer),
            (409, Some("hold_expired")),
            "{}",
            answer.1
        );
    }
    assert_eq!(remaining(&app, "h-expire").await, 5, "given back once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extending_at_the_limit_answers_409_naming_max_hold_seconds() {
    let app = app_with_checkout_token().await;
    // No extension at all: max_hold_seconds defaults to hold_seconds.
    hold_sale(&app, "h-fixed", 5, 30, 0).await;
    let fixed = id_of(&hold(&app, "h-fixed", "gina", 1).await);
    let answer = app.extend(&fixed, Some(CHECKOUT), Some(10)).await;
    assert_eq!(
        error_of(&answer),
        (409, Some("hold_extension_limit")),
        "{}",
        answer.1
    );
    let detail = answer.1["detail"].as_str().expect("a detail");
    assert!(detail.contains("max_hold_seconds (30)"), "{detail}");

    // An extension past the limit stops at it; the next one is refused.
    hold_sale(&app, "h-limit", 5, 30, 40).await;
    let bought = hold(&app, "h-limit", "hank", 1).await;
    let id = id_of(&bought);
    let (status, extended) = app.extend(&id, Some(CHECKOUT), Some(3_600)).await;
    assert_eq!(status, 200, "{extended}");
    let reserved_at = extended["reserved_at_ms"].as_i64().expect("reserved_at_ms");
    let limit = extended["expires_at_ms"].as_i64().expect("expires_at_ms");
    assert!(
        (limit - (reserved_at + 40_000)).abs() <= 5,
        "{reserved_at} + 40 s, got {limit}"
    );
    let answer = app.extend(&id, Some(CHECKOUT), Some(1)).await;
    assert_eq!(
        error_of(&answer),
        (409, Some("hold_extension_limit")),
        "{}",
        answer.1
    );
    assert_eq!(reservation(&app, &id).await["expires_at_ms"], limit);
    // Still a hold that can be confirmed.
    assert_eq!(app.confirm(&id, Some(CHECKOUT)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_calls_change_nothing_and_say_why() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-auth", 5, 60, 120).await;
    let bought = hold(&app, "h-auth", "ivy", 2).await;
    let id = id_of(&bought);
    let unchanged = |view: &Value| {
        assert_eq!(view["status"], "held", "{view}");
        assert_eq!(view["expires_at_ms"], bought["expires_at_ms"], "{view}");
    };
    // The admin token does not pass once a checkout token is set.
    for token in [None, Some("wrong"), Some("admin-s3cret"), Some("")] {
        for answer in [
            app.confirm(&id, token).await,
            app.cancel(&id, token).await,
            app.extend(&id, token, Some(30)).await,
        ] {
            assert_eq!(
                error_of(&answer),
                (401, Some("unauthorized")),
                "{token:?}: {}",
                answer.1
            );
        }
        unchanged(&reservation(&app, &id).await);
        assert_eq!(remaining(&app, "h-auth").await, 3);
    }
    // Auth comes first: a bad id or body without the token is still 401.
    assert_eq!(
        error_of(&app.confirm("not-a-uuid", None).await),
        (401, Some("unauthorized"))
    );

    // No token configured at all: the endpoints are off.
    let off = spawn_app().await;
    hold_sale(&off, "h-off", 5, 60, 120).await;
    let id = id_of(&hold(&off, "h-off", "jack", 2).await);
    for answer in [
        off.confirm(&id, Some("anything")).await,
        off.cancel(&id, None).await,
        off.extend(&id, Some("anything"), Some(30)).await,
    ] {
        assert_eq!(
            error_of(&answer),
            (403, Some("checkout_disabled")),
            "{}",
            answer.1
        );
        let detail = answer.1["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("YOINK_CHECKOUT_TOKEN"), "{detail}");
    }
    assert_eq!(reservation(&off, &id).await["status"], "held");
    assert_eq!(remaining(&off, "h-off").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checkout_token_works_and_the_admin_token_stands_in_when_none_is_set() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-tok", 5, 60, 120).await;
    let id = id_of(&hold(&app, "h-tok", "kim", 1).await);
    assert_eq!(app.confirm(&id, Some(CHECKOUT)).await.0, 200);

    let admin_only = spawn_app_with(AppOptions {
        admin_token: Some("admin-only".into()),
        ..AppOptions::default()
    })
    .await;
    hold_sale(&admin_only, "h-admin", 5, 60, 120).await;
    let id = id_of(&hold(&admin_only, "h-admin", "lee", 1).await);
    assert_eq!(
        admin_only.extend(&id, Some("admin-only"), Some(5)).await.0,
        200
    );
    assert_eq!(admin_only.cancel(&id, Some("admin-only")).await.0, 200);
    assert_eq!(
        error_of(&admin_only.confirm(&id, Some("nope")).await),
        (401, Some("unauthorized"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_202_carries_its_deadline_and_a_plain_202_does_not() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-202", 5, 90, 120).await;
    let before = now_ms();
    let bought = hold(&app, "h-202", "mia", 1).await;
    let after = now_ms();
    let expires_ms = bought["expires_at_ms"].as_i64().expect("expires_at_ms");
    assert!(
        (before + 90_000 - 1_000..=after + 90_000 + 1_000).contains(&expires_ms),
        "now + 90 s, got {expires_ms}"
    );
    let text = bought["expires_at"].as_str().expect("expires_at");
    let parsed: jiff::Timestamp = text.parse().expect("RFC 3339");
    assert_eq!(parsed.as_millisecond(), expires_ms, "{text}");
    assert!(
        text.ends_with('Z') && text.len() == "2026-11-27T08:00:00.123Z".len(),
        "{text}"
    );

    // Not recorded in PostgreSQL yet (no projector): Redis's deadline shows.
    let view = reservation(&app, &id_of(&bought)).await;
    assert_eq!(view["status"], "held", "{view}");
    assert_eq!(view["expires_at_ms"], expires_ms);
    assert_eq!(view["expires_at"], text);

    app.create_sale("plain-202", 5, 0).await;
    let plain = hold(&app, "plain-202", "mia", 1).await;
    assert!(plain.get("expires_at").is_none(), "{plain}");
    assert!(plain.get("expires_at_ms").is_none(), "{plain}");
    let view = reservation(&app, &id_of(&plain)).await;
    assert_eq!(view["status"], "reserved", "{view}");
    assert!(view.get("expires_at").is_none(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_without_a_hold_is_409_and_an_unknown_one_404() {
    let app = app_with_checkout_token().await;
    app.create_sale("plain", 5, 0).await;
    let id = id_of(&hold(&app, "plain", "ned", 1).await);
    for answer in [
        app.confirm(&id, Some(CHECKOUT)).await,
        app.cancel(&id, Some(CHECKOUT)).await,
        app.extend(&id, Some(CHECKOUT), None).await,
        app.extend(&id, Some(CHECKOUT), Some(5)).await,
    ] {
        assert_eq!(error_of(&answer), (409, Some("not_a_hold")), "{}", answer.1);
    }
    assert_eq!(remaining(&app, "plain").await, 4);
    assert_eq!(reservation(&app, &id).await["status"], "reserved");

    let tagged = ReservationId::for_sale(&SaleId::parse("plain").expect("valid id"));
    for unknown in [tagged.to_string(), uuid::Uuid::now_v7().to_string()] {
        for answer in [
            app.confirm(&unknown, Some(CHECKOUT)).await,
            app.cancel(&unknown, Some(CHECKOUT)).await,
            app.extend(&unknown, Some(CHECKOUT), None).await,
        ] {
            assert_eq!(
                error_of(&answer),
                (404, Some("unknown_reservation")),
                "{}",
                answer.1
            );
        }
    }
    assert_eq!(
        error_of(&app.confirm("not-a-uuid", Some(CHECKOUT)).await),
        (400, Some("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_extend_bodies_are_400_and_change_nothing() {
    let app = app_with_checkout_token().await;
    hold_sale(&app, "h-bad", 5, 60, 600).await;
    let bought = hold(&app, "h-bad", "olga", 1).await;
    let id = id_of(&bought);
    for body in [
        r#"{"seconds":0}"#,
        r#"{"seconds":-5}"#,
        r#"{"seconds":604801}"#,
        r#"{"seconds":1.5}"#,
        r#"{"seconds":"10"}"#,
        r#"{"seconds":null}"#,
        r#"{"secs":10}"#,
        "[10]",
        "null",
        "ten",
    ] {
        let answer = TestApp::status_and_json(
            app.http
                .post(format!("{}/reservations/{id}/extend", app.base))
                .bearer_auth(CHECKOUT)
                .body(body),
        )
        .await;
        assert_eq!(
            error_of(&answer),
            (400, Some("invalid_request")),
            "{body}: {}",
            answer.1
        );
    }
    let (status, extended) = TestApp::status_and_json(
        app.http
            .post(format!("{}/reservations/{id}/extend", app.base))
            .bearer_auth(CHECKOUT)
            .body("{}"),
    )
    .await;
    assert_eq!(
        status, 200,
        "an empty object is the default extension: {extended}"
    );
    assert_eq!(
        extended["expires_at_ms"].as_i64(),
        bought["expires_at_ms"].as_i64().map(|ms| ms + 60_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_a_recorded_hold_is_still_decided_and_an_unrecorded_one_is_503() {
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        checkout_token: Some(CHECKOUT.into()),
        ..AppOptions::default()
    })
    .await;
    hold_sale(&app, "h-redis", 5, 60, 600).await;
    let recorded = id_of(&hold(&app, "h-redis", "pia", 1).await);
    let unrecorded = id_of(&hold(&app, "h-redis", "quin", 1).await);
    // An extension records the hold in PostgreSQL.
    assert_eq!(app.extend(&recorded, Some(CHECKOUT), Some(5)).await.0, 200);

    redis.stop();
    let (status, confirmed) = app.confirm(&recorded, Some(CHECKOUT)).await;
    assert_eq!(
        status, 200,
        "PostgreSQL decided; Redis follows later: {confirmed}"
    );
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(reservation(&app, &recorded).await["status"], "confirmed");

    let answer = app.confirm(&unrecorded, Some(CHECKOUT)).await;
    assert_eq!(
        error_of(&answer),
        (503, Some("unavailable")),
        "{}",
        answer.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_down_a_decision_is_503_and_works_once_it_is_back() {
    let postgres = PrivatePostgres::start().await;
    let app = spawn_app_with(AppOptions {
        postgres_server_url: Some(postgres.url()),
        checkout_token: Some(CHECKOUT.into()),
        ..AppOptions::default()
    })
    .await;
    hold_sale(&app, "h-pg", 5, 60, 600).await;
    let id = id_of(&hold(&app, "h-pg", "rae", 1).await);

    postgres.stop();
    for answer in [
        app.confirm(&id, Some(CHECKOUT)).await,
        app.cancel(&id, Some(CHECKOUT)).await,
        app.extend(&id, Some(CHECKOUT), None).await,
    ] {
        assert_eq!(
            error_of(&answer),
            (503, Some("unavailable")),
            "{}",
            answer.1
        );
    }

    postgres.start_again().await;
    let back = yoink_testkit::eventually(Duration::from_secs(10), || async {
        app.confirm(&id, Some(CHECKOUT)).await.0 == 200
    })
    .await;
    assert!(
        back,
        "the confirm never went through once PostgreSQL was back"
    );
    assert_eq!(reservation(&app, &id).await["status"], "confirmed");
}
