//! `run` end to end against the test server: counts, exact request numbers, sell-out time,
//! percentiles, keep-alive, and failures that must end in `other` rather than a hang.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use yoink_loadgen::{Load, LoadError, LoadReport, Progress, run};

use crate::server::{TestServer, closed_port};

/// Far above what any of these loads needs, so a hang fails the test instead of stalling it.
const NO_HANG: Duration = Duration::from_secs(20);

fn load(base_url: &str, buyers: usize, requests: u64) -> Load {
    Load {
        base_url: base_url.to_owned(),
        sale_id: "sale-1".into(),
        buyers,
        requests,
        user_prefix: "buyer-".into(),
    }
}

async fn run_in_time(load: &Load, progress: Arc<Progress>) -> Result<LoadReport, LoadError> {
    tokio::time::timeout(NO_HANG, run(load, progress))
        .await
        .expect("the load ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_counts_every_answer_by_class() {
    let server = TestServer::spawn(50).await;
    let progress = Arc::new(Progress::default());
    let report = run_in_time(&load(&server.base_url, 8, 200), Arc::clone(&progress))
        .await
        .expect("the load runs");

    // Of 200 buyers, 20 end in 7 (503) and 20 end in 3 (other 409); 160 meet the stock of 50.
    assert_eq!(report.accepted, 50);
    assert_eq!(report.sold_out, 110);
    assert_eq!(report.unavailable, 20);
    assert_eq!(report.other, 20);
    assert_eq!(
        report.other_examples,
        [r#"409 Conflict: {"error":"already_reserved"}"#]
    );
    assert_eq!(report.latency.len(), 200, "every request was answered");

    assert_eq!(progress.sent.load(Ordering::Relaxed), 200);
    assert_eq!(progress.accepted.load(Ordering::Relaxed), 50);
    assert_eq!(progress.sold_out.load(Ordering::Relaxed), 110);
    assert_eq!(progress.unavailable.load(Ordering::Relaxed), 20);
    assert_eq!(progress.other.load(Ordering::Relaxed), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_sends_each_request_number_exactly_once() {
    let server = TestServer::spawn(10).await;
    run_in_time(&load(&server.base_url, 7, 101), Arc::default())
        .await
        .expect("the load runs");

    let users = server.users();
    assert_eq!(users.len(), 101);
    let distinct: BTreeSet<String> = users.into_iter().collect();
    let expected: BTreeSet<String> = (1..=101).map(|n| format!("buyer-{n}")).collect();
    assert_eq!(distinct, expected);
}

#[tokio::test]
async fn run_with_more_buyers_than_requests_sends_only_the_requests() {
    let server = TestServer::spawn(10).await;
    let report = run_in_time(&load(&server.base_url, 16, 5), Arc::default())
        .await
        .expect("the load runs");
    assert_eq!(server.users().len(), 5);
    assert_eq!(
        report.accepted + report.sold_out + report.unavailable + report.other,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_reports_when_the_sale_sold_out_and_monotonic_percentiles() {
    let server = TestServer::spawn(20).await;
    let report = run_in_time(&load(&server.base_url, 4, 100), Arc::default())
        .await
        .expect("the load runs");

    let sold_out_after = report.sold_out_after.expect("the stock of 20 ran out");
    assert!(sold_out_after <= report.elapsed);

    let percentiles: Vec<Duration> = [0.0, 50.0, 90.0, 99.0, 99.9, 100.0]
        .into_iter()
        .map(|p| report.percentile(p))
        .collect();
    assert!(
        percentiles.windows(2).all(|w| w[0] <= w[1]),
        "{percentiles:?}"
    );
    assert!(report.percentile(100.0) > Duration::ZERO);
    assert!(report.percentile(100.0) <= report.elapsed);
    assert!(report.requests_per_second() > 0.0);
}

#[tokio::test]
async fn run_never_sold_out_leaves_sold_out_after_empty() {
    let server = TestServer::spawn(1_000).await;
    let report = run_in_time(&load(&server.base_url, 2, 10), Arc::default())
        .await
        .expect("the load runs");
    assert_eq!(report.sold_out, 0);
    assert_eq!(report.sold_out_after, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_reuses_keep_alive_connections() {
    let server = TestServer::spawn(10).await;
    run_in_time(&load(&server.base_url, 4, 400), Arc::default())
        .await
        .expect("the load runs");
    // About one connection per buyer: a buyer may open another while its last one is still
    // going back to the pool, but nowhere near one per request (400).
    let connections = server.connections();
    assert!(connections <= 40, "{connections} connections for 4 buyers");
}

#[tokio::test]
async fn run_against_a_closed_port_counts_other_with_an_example() {
    let addr = closed_port().await;
    let progress = Arc::new(Progress::default());
    let report = run_in_time(
        &load(&format!("http://{addr}"), 3, 9),
        Arc::clone(&progress),
    )
    .await
    .expect("refused connections are counted, not errors");

    assert_eq!(report.other, 9);
    assert_eq!(progress.other.load(Ordering::Relaxed), 9);
    assert_eq!(progress.sent.load(Ordering::Relaxed), 9);
    assert_eq!(report.latency.len(), 0, "nothing was answered");
    assert!(!report.other_examples.is_empty());
    assert!(report.other_examples.len() <= 5);
    assert!(
        report.other_examples[0].starts_with("transport error: client error (Connect)")
            && report.other_examples[0].contains("refused"),
        "{:?}",
        report.other_examples
    );
}

#[tokio::test]
async fn run_refuses_a_bad_base_url_before_sending() {
    for base_url in ["not a url", "https://127.0.0.1:1", "127.0.0.1:8080"] {
        let result = run(&load(base_url, 1, 1), Arc::default()).await;
        assert!(
            matches!(
                result,
                Err(LoadError::InvalidBaseUrl { .. } | LoadError::UnsupportedBaseUrl { .. })
            ),
            "{base_url}: {result:?}"
        );
    }
}

#[tokio::test]
async fn run_refuses_zero_buyers_with_requests_to_send() {
    let result = run(&load("http://127.0.0.1:1", 0, 3), Arc::default()).await;
    assert!(
        matches!(result, Err(LoadError::NoBuyers { requests: 3 })),
        "{result:?}"
    );
}
