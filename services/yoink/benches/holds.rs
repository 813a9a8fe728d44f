//! Holds: how fast they are made, how fast nobody-paid holds expire, and how late.
//! The real API and projector in-process, against the shared Redis and PostgreSQL (a
//! database and key prefix of their own).
//!
//!   cargo bench -p yoink --bench holds       (SECONDS=5 CLIENTS=64 RATE=1000 RATE_SECONDS=20 BACKLOG=20000 PARTS=123)
//!
//! 1. Holds created per second: `POST /buy` on a sale with holds against the same load
//!    on a sale without, in the same run (CLIENTS concurrent clients, SECONDS each).
//! 2. Expiry lag at RATE holds per second for RATE_SECONDS (hold_seconds = 2, one
//!    projector at its default `--expiry-interval-ms`): for every expired hold, the
//!    time from `expires_at` to its units being back on sale (the `released` stream
//!    entry's id is Redis's clock at that moment). p50, p99, max.
//! 3. Expiries processed per second: BACKLOG holds recorded in PostgreSQL and all past
//!    their deadline when a projector starts: how long until every unit is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use yoink_core::scripts::SaleTerms;
use yoink_projector::ProjectorArgs;
use yoink_testkit::{RunningProjector, TestApp, spawn_app};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

fn projector(name: &str, expiry_interval_ms: u64) -> ProjectorArgs {
    ProjectorArgs {
        consumer: Some(name.to_owned()),
        metrics_listen: "off".into(),
        expiry_interval_ms,
        ..ProjectorArgs::defaults()
    }
}

async fn bench() {
    println!(
        "holds bench: {} cores, the API and a projector in-process, shared Redis and PostgreSQL",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "123".into());
    // Each part on a database and key prefix of its own: a projector never meets the
    // backlog another part left.
    if parts.contains('1') {
        creation(&Arc::new(spawn_app().await)).await;
    }
    if parts.contains('2') {
        expiry_lag(&Arc::new(spawn_app().await)).await;
    }
    if parts.contains('3') {
        expiry_throughput(&Arc::new(spawn_app().await)).await;
    }
}

/// `POST /buy` answers per second for `seconds` from `clients` concurrent clients.
async fn buys_per_second(app: &Arc<TestApp>, sale: &str, clients: u64, seconds: u64) -> f64 {
    let accepted = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (app, sale, accepted) = (app.clone(), sale.to_owned(), accepted.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    let (status, body) = app.buy(&sale, &format!("c{c}-{i}"), 1).await;
                    assert_eq!(status, 202, "{body}");
                    accepted.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("client");
    }
    accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn creation(app: &Arc<TestApp>) {
    let (seconds, clients) = (env("SECONDS", 5), env("CLIENTS", 64));
    let terms = |hold_seconds| SaleTerms {
        initial_stock: 100_000_000,
        hold_seconds,
        ..SaleTerms::default()
    };
    app.create_sale_with("plain", terms(0)).await;
    app.create_sale_with("held", terms(3_600)).await;
    // Alternate, so neither gets the warmer machine.
    let mut plain = Vec::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        plain.push(buys_per_second(app, "plain", clients, seconds).await);
        held.push(buys_per_second(app, "held", clients, seconds).await);
    }
    let (p, h) = (
        plain.iter().sum::<f64>() / 2.0,
        held.iter().sum::<f64>() / 2.0,
    );
    println!(
        "1. POST /buy, {clients} clients, 2 x {seconds} s each: no holds {p:.0} req/s, holds {h:.0} holds/s, ratio {:.2}",
        h / p
    );
}

async fn expiry_lag(app: &Arc<TestApp>) {
    let (rate, seconds) = (env("RATE", 1_000), env("RATE_SECONDS", 20));
    let sale = app
        .create_sale_with(
            "lag",
            SaleTerms {
                initial_stock: 100_000_000,
                hold_seconds: 2,
                ..SaleTerms::default()
            },
        )
        .await;
    let defaults = ProjectorArgs::defaults();
    let running =
        RunningProjector::start(&app.stores, projector("lag", defaults.expiry_interval_ms));
    // Paced: every 10 ms, rate/100 buys.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let started = Instant::now();
    let mut sent = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            let app = app.clone();
            let n = sent.len();
            sent.push(tokio::spawn(async move {
                app.buy("lag", &format!("u{n}"), 1).await.0
            }));
        }
    }
    let offered = sent.len();
    let mut held = 0;
    for s in sent {
        if s.await.expect("buy") == 202 {
            held += 1;
        }
    }
    let achieved = held as f64 / started.elapsed().as_secs_f64();
    let mut redis = app.redis.clone();
    let holds = app.keys().holds(&sale);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.zcard::<_, i64>(&holds).await.unwrap_or(-1) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;

    // Lag per hold: the `released` entry's id (Redis's clock when the units came back)
    // minus the hold's deadline.
    let deadlines: std::collections::HashMap<String, i64> = app
        .db
        .pool()
        .get()
        .await
        .expect("db")
        .query(
            "SELECT reservation_id::text, (extract(epoch FROM expires_at) * 1000)::bigint
             FROM holds WHERE sale_id = 'lag'",
            &[],
        )
        .await
        .expect("holds")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut lags = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis
            .xrange_count(app.keys().events(&sale), &from, "+", 10_000)
            .await
            .expect("xrange");
        let Some(last) = page.ids.last() else { break };
        from = format!("({}", last.id);
        for entry in &page.ids {
            let kind: Option<String> = entry.get("type");
            let reason: Option<String> = entry.get("reason");
            if kind.as_deref() != Some("released") || reason.as_deref() != Some("expired") {
                continue;
            }
            let rid: String = entry.get("reservation_id").unwrap_or_default();
            let back_ms: i64 = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            if let Some(expires) = deadlines.get(&rid) {
                lags.push(back_ms - expires);
            }
        }
    }
    lags.sort_unstable();
    println!(
        "2. {offered} holds offered at {rate}/s ({achieved:.0}/s made, {held} held, hold_seconds 2), \
         expiry sweep every {} ms: {} expired; expiry lag p50 {} ms, p99 {} ms, max {} ms",
        defaults.expiry_interval_ms,
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(-1),
    );
}

async fn expiry_throughput(app: &Arc<TestApp>) {
    let backlog = env("BACKLOG", 20_000) as usize;
    let sale = app
        .create_sale_with(
            "backlog",
            SaleTerms {
                initial_stock: backlog as i64,
                hold_seconds: 2,
                ..SaleTerms::default()
            },
        )
        .await;
    // A projector that records the holds but never sweeps.
    let recorder = RunningProjector::start(&app.stores, projector("recorder", 3_600_000));
    app.reserve_many(&sale, "b", backlog).await;
    assert!(app.wait_drained(&sale, Duration::from_secs(120)).await);
    recorder.stop().await;
    let recorded = app
        .db
        .scalar("SELECT count(*) FROM holds WHERE sale_id = 'backlog' AND state = 'held'")
        .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let defaults = ProjectorArgs::defaults();
    let started = Instant::now();
    let sweeper = RunningProjector::start(
        &app.stores,
        projector("sweeper", defaults.expiry_interval_ms),
    );
    let mut redis = app.redis.clone();
    let stock = app.keys().stock(&sale);
    while redis.get::<_, i64>(&stock).await.unwrap_or(0) < backlog as i64
        && started.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    sweeper.stop().await;
    let back: i64 = redis.get(&stock).await.unwrap_or(0);
    println!(
        "3. {recorded} holds past their deadline when a projector starts (--expiry-batch {}): \
         {back} units back in {:.2} s, {:.0} expiries/s",
        defaults.expiry_batch,
        took.as_secs_f64(),
        back as f64 / took.as_secs_f64()
    );
}
