//! Projector throughput and end-to-end latency, printed as figures and ratios measured
//! in one run (not a test: nothing here asserts a speed).
//!
//! 1. Drain a backlog of N reservations (default 100,000) into orders: orders/s.
//! 2. The ceiling: a plain `COPY` of the same N rows into a table shaped like an orders
//!    table (an order's columns, its primary key, unique reservation and sale index; no
//!    foreign keys), in the same session.
//! 3. End-to-end latency from reservation (the moment `/buy` would answer 202) to the
//!    order row, at a steady load below saturation.
//!
//! Run: `cargo bench -p yoink-projector --bench drain` (env DRAIN_N, DRAIN_BATCH,
//! DRAIN_PARALLEL, STEADY_RATE, STEADY_SECS). Uses the local Redis and PostgreSQL, on its own database and key prefix.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use yoink_projector::ProjectorArgs;
use yoink_testkit::spawn_app;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n = env_or("DRAIN_N", 100_000) as usize;
    let rate = env_or("STEADY_RATE", 1_000);
    let steady_secs = env_or("STEADY_SECS", 15);
    let batch = env_or("DRAIN_BATCH", 2_000) as usize;
    let parallel = env_or("DRAIN_PARALLEL", 2) as usize;
    let app = spawn_app().await;

    // 1. Backlog, then drain.
    let sale = app.create_sale("drain", (n as i64) * 2, 0).await;
    let started = Instant::now();
    app.reserve_many(&sale, "u", n).await;
    let reserve_secs = started.elapsed().as_secs_f64();
    let args = ProjectorArgs {
        no_relay: true,
        batch_size: batch,
        write_parallelism: parallel,
        block_ms: 500,
        claim_idle_ms: 30_000,
        // Trimming paced as in production, not as in tests.
        trim_interval_ms: ProjectorArgs::defaults().trim_interval_ms,
        ..ProjectorArgs::local("bench")
    };
    let started = Instant::now();
    let projector = app.projector_with(args.clone());
    assert!(
        app.wait_drained(&sale, Duration::from_secs(600)).await,
        "backlog never drained"
    );
    let drain_secs = started.elapsed().as_secs_f64();
    projector.stop().await;
    // Time inside batch handling (PostgreSQL transaction + XACK) vs the whole drain:
    // the rest is reading and parsing entries.
    let rendered = yoink_core::telemetry::prometheus().render();
    let handled_secs: f64 = rendered
        .lines()
        .find_map(|l| l.strip_prefix("yoink_projector_batch_seconds_sum "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let orders = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM orders WHERE sale_id = '{sale}'"
        ))
        .await;
    assert_eq!(orders as usize, n, "every reservation became one order");

    // 2. The COPY ceiling, same rows, same session.
    let pool = app.db.pool();
    let client = pool.get().await.expect("db");
    client
        .batch_execute(
            // Shaped like the `orders` table before orders became confirmed fates
            // (schema V6), so the ceiling stays the one earlier figures were against.
            "CREATE TABLE orders_ceiling (
                 order_id uuid PRIMARY KEY, reservation_id uuid NOT NULL UNIQUE,
                 fate text NOT NULL DEFAULT 'confirmed', sale_id text NOT NULL,
                 user_id text NOT NULL, quantity bigint NOT NULL, reserved_at timestamptz NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX orders_ceiling_sale ON orders_ceiling (sale_id)",
        )
        .await
        .expect("ceiling table");
    let rows = client
        .query(
            "SELECT order_id::text, reservation_id::text, sale_id, user_id, quantity::text, reserved_at::text FROM orders",
            &[],
        )
        .await
        .expect("rows");
    let mut text = String::with_capacity(rows.len() * 128);
    for r in &rows {
        let cols: [String; 6] = [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)];
        text.push_str(&cols.join("\t"));
        text.push('\n');
    }
    let started = Instant::now();
    let sink = client
        .copy_in("COPY orders_ceiling (order_id, reservation_id, sale_id, user_id, quantity, reserved_at) FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from(text)).await.expect("copy data");
    let copied = sink.finish().await.expect("copy finish");
    let copy_secs = started.elapsed().as_secs_f64();
    assert_eq!(copied as usize, n);

    // 3. Steady load below saturation, projector running; latency reservation -> order.
    let steady = app
        .create_sale("steady", (rate * steady_secs * 2) as i64, 0)
        .await;
    let projector = app.projector_with(args);
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1) as usize;
    let mut interval = tokio::time::interval(tick);
    let end = Instant::now() + Duration::from_secs(steady_secs);
    let mut i = 0usize;
    while Instant::now() < end {
        interval.tick().await;
        let batch: Vec<String> = (0..per_tick).map(|k| format!("s{}", i + k)).collect();
        i += per_tick;
        futures::future::join_all(batch.iter().map(|u| app.reserve_direct(&steady, u, 1))).await;
    }
    assert!(app.wait_drained(&steady, Duration::from_secs(120)).await);
    projector.stop().await;
    let latency = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                    count(*)
             FROM (SELECT extract(epoch FROM created_at - reserved_at) * 1000 AS ms
                   FROM orders WHERE sale_id = $1) t",
            &[&steady.as_str()],
        )
        .await
        .expect("latency");
    let p50: f64 = latency.get(0);
    let p99: f64 = latency.get(1);
    let count: i64 = latency.get(2);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!();
    println!(
        "== projector drain benchmark ({cores} cores; Redis, PostgreSQL and this process share them)"
    );
    println!(
        "backlog made:        {n} reservations in {reserve_secs:.2} s ({:.0} reserve calls/s)",
        n as f64 / reserve_secs
    );
    println!(
        "drain (projector):   {n} orders in {drain_secs:.2} s = {:.0} orders/s (batch {batch}, written as {parallel} transactions side by side)",
        n as f64 / drain_secs,
    );
    println!(
        "COPY ceiling:        {n} rows in {copy_secs:.2} s = {:.0} rows/s",
        n as f64 / copy_secs
    );
    println!(
        "  of which batches:  {handled_secs:.2} s in transaction + XACK ({:.0} %), the rest waiting for entries",
        100.0 * handled_secs / drain_secs
    );
    println!("ratio drain/COPY:    {:.2}", copy_secs / drain_secs);
    println!("steady load:         {rate} reservations/s for {steady_secs} s ({count} orders)");
    println!("reserved -> order row written: p50 {p50:.1} ms, p99 {p99:.1} ms");
}
