//! `yoink bench` against real stores: each test on its own database (`TestDb`) and key
//! prefix; the `redis-sync` test on private stores whose PostgreSQL allows only 200
//! connections, so starving it harms no one else.

use yoink_bench::{BenchArgs, BenchOutcome, Reconciled, Results, Strategy, StrategyResult};
use yoink_core::StoreArgs;
use yoink_localstores::LocalStores;
use yoink_testkit::{TestDb, redis_url};

fn small(strategy: &[Strategy], out: &std::path::Path, db: &str) -> BenchArgs {
    BenchArgs {
        strategy: strategy.to_vec(),
        stock: 20,
        buyers: 200,
        requests: 2_000,
        database: Some(db.to_owned()),
        out: Some(out.to_path_buf()),
        drain_secs: 60,
        quiet: true,
        ..BenchArgs::defaults()
    }
}

async fn bench(db: &TestDb, args: &BenchArgs) -> BenchOutcome {
    let stores = StoreArgs::local(db.url.clone(), redis_url());
    yoink_bench::run(&stores, args)
        .await
        .expect("the bench runs")
}

fn only(outcome: &BenchOutcome) -> &StrategyResult {
    assert_eq!(outcome.results.strategies.len(), 1);
    &outcome.results.strategies[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_oversells_under_concurrency() {
    let db = TestDb::new().await;
    let out = tempfile::tempdir().expect("a temp dir");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let outcome = bench(&db, &small(&[Strategy::Naive], out.path(), &db.name)).await;
        let r = only(&outcome).clone();
        assert_eq!(r.lost, 0);
        if r.oversold > 0 {
            assert_eq!(r.orders, 20 + r.oversold);
            return;
        }
        seen.push(r);
    }
    panic!("naive never oversold in 5 attempts: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_atomic_and_stream_neither_oversell_nor_lose() {
    let db = TestDb::new().await;
    let out = tempfile::tempdir().expect("a temp dir");
    let args = small(
        &[Strategy::DbAtomic, Strategy::Stream],
        out.path(),
        &db.name,
    );
    let outcome = bench(&db, &args).await;
    assert_eq!(outcome.results.strategies.len(), 2);
    for r in &outcome.results.strategies {
        assert_eq!(r.oversold, 0, "{r:#?}");
        assert_eq!(r.lost, 0, "{r:#?}");
        assert_eq!(r.orders, 20, "sold out, every unit an order: {r:#?}");
        assert_eq!(r.accepted, 20, "{r:#?}");
        assert_eq!(r.sold_out, 1_980, "{r:#?}");
    }
    assert_eq!(outcome.results.strategies[0].strategy, "db-atomic");
    assert_eq!(outcome.results.strategies[1].strategy, "stream");
    assert_eq!(
        outcome.results.strategies[0].reconciled, None,
        "db-atomic has no Redis to compare"
    );
    let stream = &outcome.results.strategies[1];
    assert_eq!(
        stream.reconciled,
        Some(Reconciled {
            status: "consistent".into(),
            lost_units: 0
        }),
        "{stream:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_files_exist_results_json_parses_and_the_chart_names_each_strategy() {
    let db = TestDb::new().await;
    let out = tempfile::tempdir().expect("a temp dir");
    let dir = out.path().join("nested");
    let outcome = bench(&db, &small(&[Strategy::DbAtomic], &dir, &db.name)).await;
    assert_eq!(outcome.out_dir, dir);
    let json = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    let parsed: Results = serde_json::from_str(&json).expect("results.json parses");
    // Floats read back to the last bit only with serde_json's float_roundtrip: compare
    // counts exactly and figures to a nanosecond.
    let key = |r: &Results| -> Vec<(String, u64, i64, i64, i64)> {
        r.strategies
            .iter()
            .map(|s| (s.strategy.clone(), s.accepted, s.orders, s.oversold, s.lost))
            .collect()
    };
    assert_eq!(key(&parsed), key(&outcome.results));
    for (a, b) in parsed.strategies.iter().zip(&outcome.results.strategies) {
        assert!(
            (a.p99_ms - b.p99_ms).abs() < 1e-6 && (a.elapsed_secs - b.elapsed_secs).abs() < 1e-9
        );
    }
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let svg = std::fs::read_to_string(dir.join("latency.svg")).expect("latency.svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("db-atomic"),
        "an SVG naming the strategies"
    );
    assert!(md.contains("| db-atomic |"), "{md}");
    assert!(md.contains("CPUs"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sync_with_a_pool_past_max_connections_refuses_and_loses_units() {
    let local = LocalStores::start().await.expect("private stores start");
    let stores = StoreArgs::local(local.database_url(), local.redis_url());
    let out = tempfile::tempdir().expect("a temp dir");
    let args = BenchArgs {
        strategy: vec![Strategy::RedisSync],
        stock: 2_000,
        buyers: 400,
        requests: 4_000,
        pg_pool: 400,
        database: Some("yoink_bench".into()),
        out: Some(out.path().to_path_buf()),
        quiet: true,
        ..BenchArgs::defaults()
    };
    let outcome = yoink_bench::run(&stores, &args)
        .await
        .expect("the bench runs");
    let r = only(&outcome).clone();
    local.stop();
    println!("{}", outcome.results.table());
    assert!(r.unavailable > 0, "PostgreSQL refused some: {r:#?}");
    assert!(r.lost > 0, "units taken in Redis with no order: {r:#?}");
    assert_eq!(r.oversold, 0, "{r:#?}");
    assert_eq!(
        r.reconciled,
        Some(Reconciled {
            status: "diverged".into(),
            lost_units: r.lost
        }),
        "the reconciler flags exactly the units the bench counted lost: {r:#?}"
    );
    assert_eq!(
        r.orders,
        i64::try_from(r.accepted).expect("fits"),
        "each 202 is one unit in Yoink's ledger: {r:#?}"
    );
    assert!(r.peak_pg_connections.is_some_and(|n| n >= 150), "{r:#?}");
}

/// One run of all four at small numbers, on private stores; prints the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_four_side_by_side_on_private_stores() {
    let local = LocalStores::start().await.expect("private stores start");
    let stores = StoreArgs::local(local.database_url(), local.redis_url());
    let out = tempfile::tempdir().expect("a temp dir");
    let args = BenchArgs {
        stock: 1_000,
        buyers: 300,
        requests: 10_000,
        pg_pool: 300,
        database: Some("yoink_bench".into()),
        out: Some(out.path().to_path_buf()),
        quiet: true,
        ..BenchArgs::defaults()
    };
    let outcome = yoink_bench::run(&stores, &args)
        .await
        .expect("the bench runs");
    local.stop();
    println!(
        "{}",
        std::fs::read_to_string(out.path().join("report.md")).expect("report.md")
    );
    let names: Vec<_> = outcome
        .results
        .strategies
        .iter()
        .map(|r| r.strategy.as_str())
        .collect();
    assert_eq!(names, ["naive", "db-atomic", "redis-sync", "stream"]);
    let stream = &outcome.results.strategies[3];
    assert_eq!((stream.oversold, stream.lost), (0, 0), "{stream:#?}");
}
