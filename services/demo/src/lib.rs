//! `yoink demo`: a flash sale as a user would see it. It creates a sale, sends a crowd of
//! buyers at it through the real API (built-in load generator), shows live progress,
//! waits for the projector to write every order, reconciles Redis with PostgreSQL and
//! prints the report: speed, latency, outcomes, orders, oversold and lost units, and how
//! long after the sell-out the last order was written.
//!
//! Stores: `REDIS_URL` / `DATABASE_URL` when both answer; otherwise private, throwaway
//! instances (`yoink-localstores`), removed afterwards. On your stores it works in a
//! database (`yoink_demo_<ms>`) and under a key prefix of its own, both removed at the
//! end unless `--keep`: it never touches, deletes or flushes anything else. (A key
//! prefix alone is not enough: a projector takes every sale its database knows for one
//! its Redis must hold.)
//!
//! It exits 0 only when nothing was oversold or lost; it must never report success on
//! figures it could not read.

mod pipeline;
mod report;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use redis::AsyncCommands;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db};
use yoink_loadgen::{Load, Progress};
use yoink_localstores::LocalStores;
use yoink_reconciler::ReconcileArgs;

pub use pipeline::Pipeline;
pub use report::Report;
use yoink_core::db::with_database;

/// `yoink demo` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Units on sale.
    #[arg(long, env = "YOINK_DEMO_STOCK", default_value_t = 10_000)]
    pub stock: i64,
    /// Concurrent buyers (connections).
    #[arg(long, env = "YOINK_DEMO_BUYERS", default_value_t = 1_000)]
    pub buyers: usize,
    /// Buy requests in all, each from a new buyer.
    #[arg(long, env = "YOINK_DEMO_REQUESTS", default_value_t = 50_000)]
    pub requests: u64,
    /// Use private, throwaway Redis and PostgreSQL even when REDIS_URL and
    /// DATABASE_URL answer.
    #[arg(long, env = "YOINK_DEMO_PRIVATE_STORES")]
    pub private_stores: bool,
    /// Longest wait for the projector to write every order after the load.
    #[arg(long, env = "YOINK_DEMO_DRAIN_SECS", default_value_t = 120)]
    pub drain_secs: u64,
    /// No live progress display (for logs and tests).
    #[arg(long, env = "YOINK_DEMO_QUIET")]
    pub quiet: bool,
    /// Keep the demo's database and Redis keys afterwards, to look at them.
    #[arg(long, env = "YOINK_DEMO_KEEP")]
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "no stores: REDIS_URL/DATABASE_URL do not answer ({reason}), and private ones cannot start: {local}"
    )]
    NoStores {
        reason: String,
        local: yoink_localstores::LocalError,
    },
    #[error("private stores: {0}")]
    Local(#[from] yoink_localstores::LocalError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] db::DbError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("creating the sale: {0}")]
    Sale(#[from] sales::SaleError),
    #[error("starting the API: {0}")]
    Api(String),
    #[error("load generator: {0}")]
    Load(#[from] yoink_loadgen::LoadError),
    #[error("reconcile: {0}")]
    Reconcile(#[from] yoink_reconciler::error::ReconcileError),
}

/// Where the demo's stores come from.
enum Stores {
    Given(StoreArgs),
    Private(StoreArgs, LocalStores),
}

impl Stores {
    fn args(&self) -> &StoreArgs {
        match self {
            Stores::Given(a) | Stores::Private(a, _) => a,
        }
    }

    fn describe(&self) -> String {
        match self {
            Stores::Given(a) => format!(
                "Redis {} and PostgreSQL {} (yours; this demo writes under its own key prefix and sale)",
                a.redis_url_for_logs(),
                a.database_url_for_logs()
            ),
            Stores::Private(a, _) => format!(
                "private throwaway Redis {} and PostgreSQL {} (removed afterwards)",
                a.redis_url_for_logs(),
                a.database_url_for_logs()
            ),
        }
    }
}

/// Whether both stores answer within a second.
async fn reachable(stores: &StoreArgs) -> Result<(), String> {
    let probe = async {
        let client = redis::Client::open(stores.redis_url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        // The server, not the demo's database (it may not exist yet).
        let (client, connection) =
            tokio_postgres::connect(&server_url(&stores.database_url), tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
        tokio::spawn(connection);
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .unwrap_or_else(|_| Err("no answer within 2 s".into()))
}

/// `url` pointing at the server's `postgres` database.
fn server_url(url: &str) -> String {
    with_database(url, "postgres")
}

async fn choose_stores(given: &StoreArgs, private: bool) -> Result<Stores, DemoError> {
    let reason = if private {
        "--private-stores".to_owned()
    } else {
        match reachable(given).await {
            Ok(()) => return Ok(Stores::Given(given.clone())),
            Err(reason) => reason,
        }
    };
    let local = LocalStores::start()
        .await
        .map_err(|local| DemoError::NoStores {
            reason: reason.clone(),
            local,
        })?;
    let mut args = given.clone();
    args.redis_url = local.redis_url();
    args.redis_cluster = false;
    args.database_url = with_database(&local.database_url(), "yoink");
    Ok(Stores::Private(args, local))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Runs the demo; the report says whether anything was oversold or lost.
pub async fn run(given: &StoreArgs, args: &DemoArgs) -> Result<Report, DemoError> {
    if args.stock < 1 || args.buyers < 1 || args.requests < 1 {
        return Err(DemoError::Usage(
            "--stock, --buyers and --requests must be at least 1".into(),
        ));
    }
    let stores = choose_stores(given, args.private_stores).await?;
    // Unique per run, also for runs started in the same millisecond by one process.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stamp = now_ms() * 1_000 + u128::from(RUNS.fetch_add(1, Ordering::Relaxed) % 1_000);
    let mut store_args = stores.args().clone();
    // Its own database and keys: the demo's projector sees only the demo's sale.
    store_args.key_prefix = format!("{}yoink-demo-{stamp}:", store_args.key_prefix);
    store_args.database_url =
        with_database(&store_args.database_url, &format!("yoink_demo_{stamp}"));
    say(args, &format!("Stores: {}.", stores.describe()));
    let outcome = demo(&store_args, stamp, args).await;
    match stores {
        Stores::Private(_, local) => local.stop(),
        Stores::Given(_) if args.keep => say(
            args,
            &format!(
                "Kept: database {}, Redis keys {}*.",
                store_args.database_url_for_logs(),
                store_args.key_prefix
            ),
        ),
        Stores::Given(_) => {
            if let Err(err) = yoink_core::scratch::discard::<DemoError>(&store_args).await {
                eprintln!("Could not remove the demo's database or keys: {err}");
            }
        }
    }
    outcome
}

async fn demo(store_args: &StoreArgs, stamp: u128, args: &DemoArgs) -> Result<Report, DemoError> {
    let store_args = store_args.clone();

    db::ensure_database(&store_args.database_url).await?;
    let pool = db::pool(&store_args.database_url, 4)?;
    db::migrate(&pool).await?;

    // The API and a projector, in this process.
    let pipeline = Pipeline::start(&store_args, args.buyers, "demo")
        .await
        .map_err(DemoError::Api)?;
    let addr = pipeline.addr;

    let keys = Keyspace::new(store_args.key_prefix.clone());
    let sale = SaleId::parse(&format!("demo-{stamp}"))
        .map_err(|e| DemoError::Usage(format!("sale id: {e}")))?;
    let mut redis = RedisConn::open(&store_args).await?;
    sales::create_sale(
        &mut redis,
        &keys,
        &pool,
        &CreateSale {
            sale_id: sale.clone(),
            terms: SaleTerms {
                initial_stock: args.stock,
                ..SaleTerms::default()
            },
        },
    )
    .await?;
    say(
        args,
        &format!(
            "Sale {sale}: {} units. {} buyers at once send {} buys in all, each from a new buyer.",
            args.stock, args.buyers, args.requests
        ),
    );

    // The load, with a live display.
    let load = Load {
        base_url: format!("http://{addr}"),
        sale_id: sale.to_string(),
        buyers: args.buyers,
        requests: args.requests,
        user_prefix: format!("buyer-{stamp}-"),
    };
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let started_ms = now_ms() as i64;
    let running = {
        let progress = progress.clone();
        tokio::spawn(async move { yoink_loadgen::run(&load, progress).await })
    };
    let bar = progress_bar(args);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !running.is_finished() {
        tick.tick().await;
        let stock: i64 = redis.get(keys.stock(&sale)).await.unwrap_or(-1);
        let orders = orders_of(&pool, &sale).await.map_or(-1, |(_, units)| units);
        bar.set_position(progress.sent.load(Ordering::Relaxed));
        bar.set_message(live_line(&progress, started, stock, orders));
    }
    let load_report = running
        .await
        .map_err(|e| DemoError::Api(format!("load task: {e}")))??;
    bar.finish_and_clear();

    // Drain: every accepted unit becomes an order.
    let accepted = load_report.accepted as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    let mut orders = orders_of(&pool, &sale).await?;
    while orders.1 < accepted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        orders = orders_of(&pool, &sale).await?;
    }
    // When the last order was written, by PostgreSQL's clock (this machine's).
    let last_order_ms: Option<i64> = pool
        .get()
        .await?
        .query_one(
            "SELECT (extract(epoch FROM max(created_at)) * 1000)::bigint FROM orders
             WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
        .get(0);
    let drained_after = last_order_ms.map_or(started.elapsed(), |ms| {
        Duration::from_millis((ms - started_ms).max(0) as u64)
    });
    let remaining: i64 = redis.get(keys.stock(&sale)).await?;

    // Reconcile that sale, as `yoink reconcile --sale` would.
    let reconcile_args = ReconcileArgs {
        sale: Some(sale.to_string()),
        grace: 2,
        ..yoink_core::config::clap_defaults()
    };
    let mut rendered = Vec::new();
    let verdict = yoink_reconciler::run_once(&store_args, &reconcile_args, &mut rendered).await?;

    pipeline.stop().await;

    Ok(Report::new(
        &sale,
        args,
        load_report,
        report::Settled {
            orders: orders.0,
            confirmed_units: orders.1,
            remaining,
            drained_after,
            reconcile: String::from_utf8_lossy(&rendered).into_owned(),
            reconciled_consistent: verdict == yoink_reconciler::Verdict::Consistent,
        },
    ))
}

/// (orders, units) of `sale` in PostgreSQL.
async fn orders_of(pool: &deadpool_postgres::Pool, sale: &SaleId) -> Result<(i64, i64), DemoError> {
    let row = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

fn progress_bar(args: &DemoArgs) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.requests);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn live_line(progress: &Progress, started: Instant, stock: i64, orders: i64) -> String {
    let sent = progress.sent.load(Ordering::Relaxed);
    let accepted = progress.accepted.load(Ordering::Relaxed);
    let rate = sent as f64 / started.elapsed().as_secs_f64().max(0.001);
    format!(
        "| 202 {accepted} 409 {} 503 {} other {} | {rate:.0} req/s | stock {stock} | orders {orders} (lag {})",
        progress.sold_out.load(Ordering::Relaxed),
        progress.unavailable.load(Ordering::Relaxed),
        progress.other.load(Ordering::Relaxed),
        accepted as i64 - orders.max(0),
    )
}

fn say(args: &DemoArgs, line: &str) {
    if !args.quiet {
        println!("{line}");
    }
}
