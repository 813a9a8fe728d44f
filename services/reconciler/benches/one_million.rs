//! How long `yoink reconcile --all` takes when one sale has 1,000,000 orders (issue 13,
//! goal 5: under 2 s). A benchmark, not a test: it prints figures; the only thing it
//! asserts is that the sales it measures reconcile `consistent`, because timing a pass
//! that flags something (or waits out the grace period) would prove nothing.
//!
//! 1. Builds, in seconds, a sale with RECONCILE_N (default 1,000,000) confirmed
//!    single-unit orders, consistent in both stores: PostgreSQL rows made with set-based
//!    SQL in every table a projected reservation writes (`reservation_fates`, `orders`,
//!    `outbox`, the `sales` counters and high-water mark, `sale_epochs.issued_seq`),
//!    and in Redis the sale's counters, its stream of N `reserved` entries (the same
//!    ids as in PostgreSQL) and the projectors' group at the end of it (drained: nothing
//!    in flight). Plus three small sales and an empty one, so `--all` has several.
//! 2. Times `run_once` with `--all`, RECONCILE_RUNS times (default 3): each run and the
//!    median; then the pieces of one sale's check (Redis snapshot, PostgreSQL side) and
//!    the PostgreSQL plan of each query, once.
//!
//! Run: `cargo bench -p yoink-reconciler --bench one_million`. Uses the shared
//! PostgreSQL and Redis (TEST_DATABASE_URL, TEST_REDIS_URL) in a database and key prefix
//! of its own, removed at the end, and on a panic by the testkit's drop guards. Never
//! touches anything else in either store.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db, redis_store, stream};
use yoink_reconciler::{ReconcileArgs, Verdict, snapshot};
use yoink_testkit::{TestDb, TestRedis};

/// Appends generated `reserved` entries to a sale's stream (bench only).
static FILL_STREAM: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("fill_stream.lua")));

/// Entries appended per script call: each call blocks the shared Redis (~10 ms here),
/// so it stays short for everyone else using it.
const FILL_CHUNK: i64 = 5_000;

/// The entries' `reserved_at_ms` and the ms part of their stream ids.
const BASE_MS: i64 = 1_795_000_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores (nproc), {cpu}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Creates sale number `sale_no` with `stock` units through the real path
/// (`sales::create_sale`: PostgreSQL row, Redis meta and stock, epoch 1), then gives it
/// `orders` confirmed single-unit orders, projected and drained, in both stores (each
/// store loaded concurrently with the other).
async fn generate_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &deadpool_postgres::Pool,
    loaders: &[tokio_postgres::Client; 2],
    (sale_no, name, stock, orders): (i64, &str, i64, i64),
) -> SaleId {
    let sale = SaleId::parse(name).expect("bench sale ids are valid");
    let terms = SaleTerms {
        initial_stock: stock,
        ..SaleTerms::default()
    };
    sales::create_sale(
        redis,
        keys,
        pool,
        &CreateSale {
            sale_id: sale.clone(),
            terms,
        },
    )
    .await
    .expect("create the sale");
    // The projectors' group, as the first projector makes it (at 0, before any entry).
    stream::ensure_group(redis, &keys.events(&sale))
        .await
        .expect("create the group");
    if orders == 0 {
        return sale;
    }
    let ((postgres_took, ()), redis_took) = futures::join!(
        timed(load_postgres(loaders, sale_no, &sale, orders)),
        timed(load_redis(redis, keys, sale_no, &sale, stock, orders)),
    );
    if orders >= 100_000 {
        println!(
            "generated        `{sale}`: {orders} orders, PostgreSQL {:.1} s, Redis {:.1} s (concurrently)",
            postgres_took.as_secs_f64(),
            redis_took.0.as_secs_f64()
        );
    }
    sale
}

async fn timed<T>(work: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let value = work.await;
    (started.elapsed(), value)
}

/// PostgreSQL: what `ledger::confirm_in` writes for each reservation, set-based, one
/// table per connection at once (no foreign-key checks: see `main`). The ids are the
/// ones fill_stream.lua puts in the stream entries.
async fn load_postgres(
    [fates, outbox]: &[tokio_postgres::Client; 2],
    sale_no: i64,
    sale: &SaleId,
    orders: i64,
) {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&sale_no, &sale.as_str(), &orders, &BASE_MS];
    let (f, e) = futures::join!(
        // Confirmed fates: the orders (`orders` is a view of them).
        fates.execute(
            "INSERT INTO reservation_fates
                 (reservation_id, sale_id, user_id, quantity, fate, stream_id, reserved_at,
                  epoch, seq, order_id)
             SELECT (lpad(to_hex($1::bigint), 8, '0') || '-0000-7000-8000-'
                     || lpad(to_hex(n), 12, '0'))::uuid,
                    $2, 'u' || n, 1, 'confirmed', $4::bigint || '-' || n,
                    to_timestamp($4::bigint / 1000.0), 1, n,
                    (lpad(to_hex($1::bigint), 8, '0') || '-0000-7000-9000-'
                     || lpad(to_hex(n), 12, '0'))::uuid
             FROM generate_series(1, $3::bigint) n",
            &params,
        ),
        // The order events, already published by the relay (a drained sale).
        outbox.execute(
            "INSERT INTO outbox (event_id, event_type, sale_id, reservation_id, published_at)
             SELECT (lpad(to_hex($1::bigint), 8, '0') || '-0000-7000-a000-'
                     || lpad(to_hex(n), 12, '0'))::uuid,
                    'order.confirmed', $2,
                    (lpad(to_hex($1::bigint), 8, '0') || '-0000-7000-8000-'
                     || lpad(to_hex(n), 12, '0'))::uuid,
                    now()
             FROM generate_series(1, $3::bigint) n",
            &params[..3],
        ),
    );
    f.expect("reservation_fates");
    e.expect("outbox");
    fates
        .execute(
            "UPDATE sales SET confirmed_units = $2, hwm_epoch = 1, hwm_seq = $2
             WHERE sale_id = $1",
            &[&sale.as_str(), &orders],
        )
        .await
        .expect("sales counters");
    fates
        .execute(
            "UPDATE sale_epochs SET issued_seq = $2 WHERE sale_id = $1 AND epoch = 1",
            &[&sale.as_str(), &orders],
        )
        .await
        .expect("issued seq");
}

/// Redis: the stream, then the counters and the group as reserve.lua and a projector
/// that acknowledged everything leave them.
async fn load_redis(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale_no: i64,
    sale: &SaleId,
    stock: i64,
    orders: i64,
) {
    let events = keys.events(sale);
    let mut from = 1;
    while from <= orders {
        let to = (from + FILL_CHUNK - 1).min(orders);
        let _: i64 = FILL_STREAM
            .key(&events)
            .arg(sale_no)
            .arg(sale.as_str())
            .arg(from)
            .arg(to)
            .arg(BASE_MS)
            .invoke_async(redis)
            .await
            .expect("fill the stream");
        from = to + 1;
    }
    let _: i64 = redis::cmd("HSET")
        .arg(keys.meta(sale))
        .arg("reserved")
        .arg(orders)
        .arg("seq")
        .arg(orders)
        .query_async(redis)
        .await
        .expect("meta counters");
    let () = redis::cmd("SET")
        .arg(keys.stock(sale))
        .arg(stock - orders)
        .query_async(redis)
        .await
        .expect("stock");
    let () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&events)
        .arg(PROJECTOR_GROUP)
        .arg("$")
        .arg("ENTRIESREAD")
        .arg(orders)
        .query_async(redis)
        .await
        .expect("group at the end of the stream");
}

fn args(sale: Option<&SaleId>) -> ReconcileArgs {
    ReconcileArgs {
        sale: sale.map(|s| s.to_string()),
        all: sale.is_none(),
        json: true,
        watch: None,
        grace: 5,
        repair: false,
        yes: false,
        archive_after: None,
        metrics_listen: "127.0.0.1:0".parse().expect("a loopback address"),
    }
}

/// One `run_once`: its wall time, its verdict and its JSON lines.
async fn pass(stores: &StoreArgs, args: &ReconcileArgs) -> (Duration, Verdict, String) {
    let mut out = Vec::new();
    let started = Instant::now();
    let verdict = yoink_reconciler::run_once(stores, args, &mut out)
        .await
        .expect("the reconciler reads both stores");
    let took = started.elapsed();
    (took, verdict, String::from_utf8(out).expect("UTF-8 output"))
}

/// A connection for the bulk load of rows consistent by construction: no per-row
/// foreign-key checks (1,000,000 lookups each) and no wait for the WAL flush. Session
/// settings of this connection only; `session_replication_role` needs a superuser, else
/// the load is just slower.
async fn loader(test_db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&test_db.url, NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(connection);
    let _ = client
        .batch_execute("SET session_replication_role = replica; SET synchronous_commit = off")
        .await;
    client
}

#[tokio::main]
async fn main() {
    let n = env_or("RECONCILE_N", 1_000_000) as i64;
    let runs = env_or("RECONCILE_RUNS", 3).max(1) as usize;
    println!("machine          {}", machine());
    println!("load average     {} (at start)", load_average());

    // Drop guards: the database and every key under the prefix go even on a panic.
    let test_db = TestDb::new().await;
    let test_redis = TestRedis::new();
    let stores = StoreArgs {
        key_prefix: test_redis.keys.prefix().to_owned(),
        ..StoreArgs::local(test_db.url.clone(), test_redis.url.clone())
    };
    let keys = test_redis.keys.clone();
    let mut redis = RedisConn::open(&stores).await.expect("Redis");
    // The load's own connection: on a busy host a fill call may take longer than the
    // 500 ms per-command timeout the reconciler keeps.
    let mut filler = RedisConn::open(&StoreArgs {
        redis_timeout_ms: 30_000,
        ..stores.clone()
    })
    .await
    .expect("Redis");
    let pool = db::pool(&test_db.url, 2).expect("pool");
    let loaders = [loader(&test_db).await, loader(&test_db).await];
    let loader = &loaders[0];

    let started = Instant::now();
    let big = generate_sale(&mut filler, &keys, &pool, &loaders, (1, "big", n, n)).await;
    let mut small = Vec::new();
    for spec in [
        (2, "small-a", 1_000, 1_000),
        (3, "small-b", 5_000, 1_200),
        (4, "small-c", 100, 37),
        (5, "small-empty", 50, 0),
    ] {
        small.push(generate_sale(&mut filler, &keys, &pool, &loaders, spec).await);
    }
    let generated = started.elapsed();
    let sizes = loader
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('reservation_fates')),
                    pg_size_pretty(pg_total_relation_size('outbox'))",
            &[],
        )
        .await
        .expect("sizes");
    let stream_len: i64 = redis::cmd("XLEN")
        .arg(keys.events(&big))
        .query_async(&mut redis)
        .await
        .expect("XLEN");
    println!(
        "generated        {n} orders on `{big}` + {} small sales in {:.1} s",
        small.len(),
        generated.as_secs_f64(),
    );
    println!(
        "sizes            reservation_fates (the orders) {}, outbox {} (with indexes); stream {stream_len} entries",
        sizes.get::<_, String>(0),
        sizes.get::<_, String>(1),
    );

    // The path measured must be the consistent one: every sale consistent, the big
    // one with all its orders, nothing in flight.
    let all = args(None);
    let (first, verdict, text) = pass(&stores, &all).await;
    assert_eq!(verdict, Verdict::Consistent, "{text}");
    let reports: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("one JSON report per line"))
        .collect();
    assert_eq!(reports.len(), 1 + small.len(), "{text}");
    for r in &reports {
        assert_eq!(r["status"], "consistent", "{text}");
    }
    let big_report = reports
        .iter()
        .find(|r| r["sale_id"] == big.as_str())
        .expect("the big sale is reported");
    assert_eq!(big_report["postgres"]["orders"], n, "{text}");
    assert_eq!(big_report["postgres"]["confirmed_units"], n, "{text}");
    assert_eq!(big_report["redis"]["remaining"], 0, "{text}");
    assert_eq!(big_report["in_flight_units"], 0, "{text}");
    println!(
        "check            {} sales consistent; first pass after the load {:.1} ms \
         (before VACUUM: it sets the new rows' hint bits)",
        reports.len(),
        ms(first)
    );

    let started = Instant::now();
    // Then the state autovacuum reaches soon after a sale (its insert threshold is 20 %
    // of the table): statistics and visibility map current, hint bits set.
    loader
        .batch_execute("VACUUM (ANALYZE) reservation_fates, orders, outbox, sales, sale_epochs")
        .await
        .expect("VACUUM ANALYZE");
    let vacuumed = started.elapsed();
    println!(
        "vacuumed         VACUUM (ANALYZE) in {:.1} s",
        vacuumed.as_secs_f64()
    );

    // The goal: `reconcile --all`, RUNS times.
    let mut walls = Vec::new();
    for run in 1..=runs {
        let (took, verdict, text) = pass(&stores, &all).await;
        assert_eq!(verdict, Verdict::Consistent, "{text}");
        println!("run {run}            reconcile --all: {:.1} ms", ms(took));
        walls.push(ms(took));
    }
    let wall = median(walls);
    println!(
        "median           {wall:.1} ms over {runs} runs (goal < 2000 ms: {})",
        if wall < 2_000.0 { "met" } else { "MISSED" }
    );

    // Where the time goes: the pieces of the big sale's check, RUNS times each.
    let mut all_sales = Vec::new();
    let mut redis_side = Vec::new();
    let mut postgres_side = Vec::new();
    let mut one_sale = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        yoink_core::sales::known_to_either::<yoink_reconciler::error::ReconcileError>(
            &mut redis, &keys, &pool,
        )
        .await
        .expect("all sales");
        all_sales.push(ms(started.elapsed()));
        let started = Instant::now();
        let mut snap = snapshot::redis_snapshot(&mut redis, &keys, &big)
            .await
            .expect("Redis snapshot");
        redis_side.push(ms(started.elapsed()));
        let started = Instant::now();
        snapshot::postgres_side(&pool, &big, &mut snap, Duration::from_secs(5))
            .await
            .expect("PostgreSQL side");
        postgres_side.push(ms(started.elapsed()));
        let (took, verdict, text) = pass(&stores, &args(Some(&big))).await;
        assert_eq!(verdict, Verdict::Consistent, "{text}");
        one_sale.push(ms(took));
    }
    println!("breakdown (medians of {runs}):");
    println!(
        "  list sales (PostgreSQL + SMEMBERS)        {:8.2} ms",
        median(all_sales)
    );
    println!(
        "  `{big}`: Redis snapshot (script + window)  {:8.2} ms",
        median(redis_side)
    );
    println!(
        "  `{big}`: PostgreSQL side (one snapshot)    {:8.2} ms",
        median(postgres_side)
    );
    println!(
        "  reconcile --sale {big} (incl. connecting)  {:8.2} ms",
        median(one_sale)
    );

    // The plan and time of each PostgreSQL read of the big sale's check, once.
    println!("PostgreSQL plans for `{big}` (EXPLAIN ANALYZE, BUFFERS):");
    for (what, sql) in [
        (
            "orders",
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
        ),
        (
            "released",
            "SELECT coalesce(sum(quantity), 0)::bigint FROM reservation_fates
             WHERE sale_id = $1 AND fate = 'released'",
        ),
        (
            "held",
            "SELECT coalesce(sum(quantity), 0)::bigint FROM holds
             WHERE sale_id = $1 AND state = 'held'",
        ),
        (
            "lost",
            "SELECT coalesce(sum(greatest(
                        greatest(issued_seq, max_decided_seq) - decided_seqs, 0)), 0)::bigint
             FROM sale_epochs WHERE sale_id = $1 AND decided_seqs IS NOT NULL",
        ),
    ] {
        let plan = loader
            .query(
                &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"),
                &[&big.as_str()],
            )
            .await
            .expect("EXPLAIN");
        println!("  -- {what}");
        for row in plan {
            println!("     {}", row.get::<_, String>(0));
        }
    }
    println!("load average     {} (at end)", load_average());

    // Clean up now (the drop guards are the fallback on a panic).
    drop(loaders);
    pool.close();
    let _ = redis_store::delete_prefixed(&mut redis, keys.prefix()).await;
    drop(test_redis);
    drop(test_db);
}
