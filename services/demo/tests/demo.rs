//! `yoink demo` end to end: against this machine's stores, and with no reachable stores
//! at all (it starts private ones and leaves nothing behind).

use std::process::Command;

use yoink_core::StoreArgs;
use yoink_demo::DemoArgs;
use yoink_testkit::{TestDb, free_port, redis_url};

fn small() -> DemoArgs {
    DemoArgs {
        stock: 300,
        buyers: 50,
        requests: 2_000,
        private_stores: false,
        drain_secs: 60,
        quiet: true,
        keep: false,
    }
}

/// What the private stores leave behind: PostgreSQL servers running from, and temp dirs
/// named, `yoink-demo-*` (Redis's dir is removed only once its server is stopped).
fn leftovers() -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps runs");
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("yoink-demo-"))
        .map(str::to_owned)
        .collect();
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        found.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("yoink-demo-")),
        );
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_demo_on_this_machines_stores_sells_out_and_loses_nothing() {
    let db = TestDb::new().await;
    let stores = StoreArgs::local(db.url.clone(), redis_url());
    let report = yoink_demo::run(&stores, &small())
        .await
        .expect("the demo runs");
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert_eq!(
        report.settled.confirmed_units, 300,
        "sold out, every unit an order"
    );
    assert_eq!(report.load.accepted, 300);
    assert_eq!(report.load.sold_out, 1_700);
    assert_eq!(report.oversold(), 0);
    assert_eq!(report.lost(), 0);
    assert!(report.sellout_to_last_order().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_reachable_stores_it_starts_private_ones_and_removes_them() {
    let before = leftovers();
    let closed = StoreArgs::local(
        format!("postgres://postgres@127.0.0.1:{}/yoink", free_port()),
        format!("redis://127.0.0.1:{}", free_port()),
    );
    let report = yoink_demo::run(&closed, &small())
        .await
        .expect("the demo runs");
    assert!(report.ok(), "{report}");
    assert_eq!(report.settled.confirmed_units, 300);
    assert_eq!(
        leftovers(),
        before,
        "no private server or temp dir left behind"
    );
}
