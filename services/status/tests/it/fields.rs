//! `--json` carries every field, each with the value the stores hold once the buys
//! are projected.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::{consumer, json_of, report, status_of};
use yoink_testkit::spawn_app;

/// Every field of a `--json` line: tools rely on these names.
const FIELDS: &[&str] = &[
    "sale_id",
    "at_ms",
    "in_redis",
    "in_postgres",
    "suspended",
    "initial_stock",
    "stock",
    "reserved",
    "released_in_redis",
    "confirmed",
    "orders",
    "released",
    "held",
    "stream_length",
    "group_exists",
    "lag",
    "oldest_undelivered_age_ms",
    "last_delivered_id",
    "pending",
    "oldest_pending_id",
    "oldest_pending_age_ms",
    "oldest_pending_idle_ms",
    "oldest_pending_deliveries",
    "oldest_pending_consumer",
    "consumers_total",
    "consumers",
    "dead_letters",
    "oldest_dead_letter_id",
    "oldest_dead_letter_age_ms",
    "oldest_dead_letter_reason",
    "outbox_backlog",
    "outbox_oldest_age_ms",
    "outbox_backlog_all_sales",
    "outbox_oldest_age_all_sales_ms",
    "errors",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_carries_every_field_with_the_figures_of_projected_buys() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-fields", 10, 0).await;
    let projector = app.projector("p1");
    for i in 0..3 {
        let (code, body) = app.buy("st-fields", &format!("u{i}"), 1).await;
        assert_eq!(code, 202, "{body}");
    }
    let (code, body) = app.buy("st-fields", "big", 2).await;
    assert_eq!(code, 202, "{body}");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    // The relay publishes the orders' outbox rows shortly after their commit.
    let published = yoink_testkit::eventually(Duration::from_secs(10), || async {
        status_of(&app, "st-fields").await.outbox_backlog == Some(0)
    })
    .await;
    assert!(published, "the relay never published the outbox");

    let line = json_of(&app, "st-fields").await;
    let keys: BTreeSet<&str> = line
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, FIELDS.iter().copied().collect::<BTreeSet<_>>());

    assert_eq!(line["sale_id"], "st-fields");
    assert_eq!(line["in_redis"], true);
    assert_eq!(line["in_postgres"], true);
    assert_eq!(line["suspended"], false);
    assert_eq!(line["initial_stock"], 10);
    assert_eq!(line["stock"], 5);
    assert_eq!(line["reserved"], 5);
    assert_eq!(line["released_in_redis"], 0);
    assert_eq!(line["confirmed"], 5, "units bought are units confirmed");
    assert_eq!(line["orders"], 4);
    assert_eq!(line["released"], 0);
    assert_eq!(line["held"], 0);
    assert_eq!(line["stream_length"], 4);
    assert_eq!(line["group_exists"], true);
    assert_eq!(line["lag"], 0);
    assert_eq!(line["oldest_undelivered_age_ms"], serde_json::Value::Null);
    assert_eq!(line["pending"], 0);
    assert_eq!(line["oldest_pending_id"], serde_json::Value::Null);
    assert_eq!(line["dead_letters"], 0);
    assert_eq!(line["oldest_dead_letter_reason"], serde_json::Value::Null);
    assert_eq!(line["outbox_backlog"], 0);
    assert_eq!(line["outbox_backlog_all_sales"], 0);
    assert_eq!(line["errors"], serde_json::json!([]));
    assert!(
        line["at_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 1_700_000_000_000)
    );
    assert!(
        line["last_delivered_id"]
            .as_str()
            .is_some_and(|id| id.contains('-'))
    );
    assert_eq!(line["consumers"][0]["name"], "p1");
    assert_eq!(line["consumers"][0]["pending"], 0);
    assert!(line["consumers"][0]["idle_ms"].as_i64().is_some());

    projector.stop().await;
    let status = status_of(&app, "st-fields").await;
    assert_eq!(consumer(&status, "p1").map(|(pending, _)| pending), Some(0));

    // Every sale either store knows is listed when no `--sale` is given.
    app.create_sale("st-other", 1, 0).await;
    let all = report(&app, None).await;
    let ids: Vec<&str> = all.sales.iter().map(|s| s.sale_id.as_str()).collect();
    assert_eq!(ids, ["st-fields", "st-other"]);
    assert_eq!(all.exit_code(), yoink_status::exit::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_form_shows_each_figure_in_one_block_per_sale() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-human", 10, 0).await;
    let projector = app.projector("p1");
    let (code, _) = app.buy("st-human", "u1", 2).await;
    assert_eq!(code, 202);
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;

    let mut out = Vec::new();
    let code = yoink_status::run_once(&app.stores, &crate::args_for(None), &mut out)
        .await
        .expect("status answers");
    assert_eq!(code, 0);
    let text = String::from_utf8(out).expect("utf-8");
    for expected in [
        "== st-human (open)",
        "8 of 10 left, 2 reserved, 0 released (Redis)",
        "2 confirmed in 1 order, 0 released, 0 held (PostgreSQL)",
        "1 entry, lag 0, pending 0",
        "p1",
        "dead letters   0",
        "outbox (all sales):",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}
