//! `yoink status` against real Redis and PostgreSQL (a database and key prefix per
//! test): every field of `--json`, figures that stay right while the projector is
//! stopped, dead letters, bounded work on a huge pending list, and what it says and
//! exits with when a sale or a store is missing.

mod backlog;
mod dead_letters;
mod fields;
mod outages;

use yoink_status::{SaleStatus, StatusArgs, StatusReport};
use yoink_testkit::TestApp;

/// `yoink status --sale <sale>` with nothing else set.
pub fn args_for(sale: Option<&str>) -> StatusArgs {
    StatusArgs {
        sale: sale.map(str::to_owned),
        ..StatusArgs::default()
    }
}

/// One pass over the app's stores.
pub async fn report(app: &TestApp, sale: Option<&str>) -> StatusReport {
    yoink_status::collect(&app.stores, &args_for(sale))
        .await
        .expect("status answers")
}

/// The one sale's status, read without errors.
pub async fn status_of(app: &TestApp, sale: &str) -> SaleStatus {
    let report = report(app, Some(sale)).await;
    assert_eq!(report.sales.len(), 1);
    let status = report.sales.into_iter().next().expect("one sale");
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    status
}

/// `yoink status --sale <sale> --json`, parsed: exactly one line.
pub async fn json_of(app: &TestApp, sale: &str) -> serde_json::Value {
    let mut out = Vec::new();
    let args = StatusArgs {
        json: true,
        ..args_for(Some(sale))
    };
    let code = yoink_status::run_once(&app.stores, &args, &mut out)
        .await
        .expect("status answers");
    assert_eq!(code, yoink_status::exit::OK);
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line per sale: {text}");
    serde_json::from_str(lines[0]).expect("a JSON object")
}

/// The consumer named `name` in a status, as (pending, idle_ms).
pub fn consumer(status: &SaleStatus, name: &str) -> Option<(i64, i64)> {
    status
        .consumers
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.pending, c.idle_ms))
}
