//! `POST /sales` and `GET /sales/{id}`: creating twice never resets stock.

use serde_json::json;
use yoink_testkit::{AppOptions, spawn_app_with};

#[tokio::test]
async fn creating_an_existing_sale_answers_409_and_keeps_its_stock() {
    let app = spawn_app_with(AppOptions {
        admin_token: Some("tok".into()),
        ..AppOptions::default()
    })
    .await;
    let create = |stock: i64| {
        app.http
            .post(format!("{}/sales", app.base))
            .bearer_auth("tok")
            .json(&json!({ "sale_id": "drop-1", "stock": stock, "limit_per_user": 3 }))
    };
    let (status, body) = yoink_testkit::TestApp::status_and_json(create(10)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["initial_stock"], 10);
    assert_eq!(body["remaining"], 10);

    assert_eq!(app.buy("drop-1", "u1", 2).await.0, 202);

    let (status, body) = yoink_testkit::TestApp::status_and_json(create(1_000)).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("sale_exists")));
    let (status, view) = app.get("/sales/drop-1").await;
    assert_eq!(status, 200);
    assert_eq!(view["initial_stock"], 10);
    assert_eq!(view["remaining"], 8, "stock untouched by the second create");
    assert_eq!(view["reserved"], 2);
    assert_eq!(view["confirmed"], 0);
    assert_eq!(view["released"], 0);
}

#[tokio::test]
async fn a_sale_outside_its_window_answers_409_sale_closed() {
    let app = spawn_app_with(AppOptions {
        admin_token: Some("tok".into()),
        ..AppOptions::default()
    })
    .await;
    for (id, starts, ends) in [
        ("future", "2999-01-01T00:00:00Z", None),
        ("past", "2001-01-01T00:00:00Z", Some("2001-01-02T00:00:00Z")),
    ] {
        let (status, body) = yoink_testkit::TestApp::status_and_json(
            app.http
                .post(format!("{}/sales", app.base))
                .bearer_auth("tok")
                .json(&json!({ "sale_id": id, "stock": 5, "starts_at": starts, "ends_at": ends })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = app.buy(id, "u", 1).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("sale_closed")),
            "{id}"
        );
    }
}
