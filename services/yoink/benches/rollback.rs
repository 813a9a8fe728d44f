//! The rollback window: Redis restarted from an older snapshot in the middle of a sale
//! under steady load. How many buys does the Redis that went back accept before the
//! sale is suspended, and how long until the sale sells again (rebuilt from
//! PostgreSQL)? Private Redis and PostgreSQL, the real API and projector in-process.
//!
//!   cargo bench -p yoink --bench rollback          (RUNS=5 per variant, BUYERS=200)
//!
//! Variants: `same-api`, the API that served before the rollback keeps serving (it
//! remembers the positions it saw); `fresh-api`, an API instance started after Redis
//! came back (it knows only PostgreSQL's floor). Prints one line per run and the
//! medians. Target: fewer than 100 buys accepted blind (buyers whose 202 PostgreSQL may
//! then have to take back), and the sale selling again within a few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;
use yoink_testkit::{AppOptions, PrivatePostgres, PrivateRedis, spawn_app_with};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    SameApi,
    FreshApi,
}

/// One answer seen by the load generator.
struct Answer {
    at: Instant,
    status: u16,
    error: Option<String>,
    reservation: Option<Uuid>,
}

struct Figures {
    /// 202s answered after Redis came back whose reservation the old Redis took.
    accepted_blind: usize,
    /// 503 sale_recovering answers.
    refused: usize,
    /// From Redis coming back to the first 202 of the rebuilt sale.
    resumed_after: Duration,
    /// Server side: suspension to resumption (sale_epochs).
    suspended_for: Duration,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let runs = env("RUNS", 5);
    let buyers = env("BUYERS", 200);
    let pg = PrivatePostgres::start().await;
    println!(
        "rollback window: {runs} runs per variant, {buyers} concurrent buyers, private Redis and PostgreSQL"
    );
    for variant in [Variant::SameApi, Variant::FreshApi] {
        let mut all = Vec::new();
        for run in 1..=runs {
            let f = one_run(&pg, variant, buyers).await;
            println!(
                "{variant:?} run {run}: accepted blind {}, refused (503 sale_recovering) {}, first 202 after Redis came back {:.3} s, suspended for {:.3} s",
                f.accepted_blind,
                f.refused,
                f.resumed_after.as_secs_f64(),
                f.suspended_for.as_secs_f64()
            );
            all.push(f);
        }
        println!(
            "{variant:?} medians: accepted blind {}, first 202 after Redis came back {:.3} s, suspended for {:.3} s (max blind {})",
            median(all.iter().map(|f| f.accepted_blind as f64).collect()),
            median(all.iter().map(|f| f.resumed_after.as_secs_f64()).collect()),
            median(all.iter().map(|f| f.suspended_for.as_secs_f64()).collect()),
            all.iter().map(|f| f.accepted_blind).max().unwrap_or(0)
        );
    }
    println!(
        "machine: {} cores; load generator, servers and Yoink share them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

async fn one_run(pg: &PrivatePostgres, variant: Variant, buyers: usize) -> Figures {
    let mut redis = PrivateRedis::start_persistent(&[]).await;
    let mut app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        postgres_server_url: Some(pg.url()),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("window", 100_000_000, 0).await;
    let projector = app.projector("bench");

    let base = Arc::new(RwLock::new(app.base.clone()));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(buyers)
        .build()
        .expect("HTTP client");
    let load: Vec<_> = (0..buyers)
        .map(|b| {
            let (base, answers, stop, http) =
                (base.clone(), answers.clone(), stop.clone(), http.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let url = format!("{}/buy", base.read().await);
                    let sent = http
                        .post(url)
                        .json(&json!({ "sale_id": "window", "user_id": format!("b{b}-{n}") }))
                        .send()
                        .await;
                    let Ok(response) = sent else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    answers.lock().await.push(Answer {
                        at: Instant::now(),
                        status,
                        error: body["error"].as_str().map(str::to_owned),
                        reservation: body["reservation_id"].as_str().and_then(|s| s.parse().ok()),
                    });
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut conn = app.redis.clone();
    let _: () = redis::cmd("SAVE")
        .query_async(&mut conn)
        .await
        .expect("SAVE");
    tokio::time::sleep(Duration::from_secs(1)).await;
    if variant == Variant::FreshApi {
        app.stop().await;
    }
    redis.stop();
    redis.start_again().await;
    let back = Instant::now();
    let fresh = if variant == Variant::FreshApi {
        let (stop_fresh, server, url) = fresh_api(&app.stores).await;
        *base.write().await = url;
        Some((stop_fresh, server))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    assert!(app.wait_drained(&sale, Duration::from_secs(60)).await);
    projector.stop().await;
    if let Some((stop_fresh, server)) = fresh {
        let _ = stop_fresh.send(());
        let _ = server.await;
    }

    let answers = answers.lock().await;
    let after: Vec<&Answer> = answers.iter().filter(|a| a.at > back).collect();
    let ids: Vec<Uuid> = after
        .iter()
        .filter(|a| a.status == 202)
        .filter_map(|a| a.reservation)
        .collect();
    let pool = app.db.pool();
    let client = pool.get().await.expect("db");
    let blind: i64 = client
        .query_one(
            "SELECT count(*) FROM reservation_fates WHERE reservation_id = ANY($1) AND epoch = 1",
            &[&ids],
        )
        .await
        .expect("count")
        .get(0);
    let first_new = client
        .query(
            "SELECT reservation_id FROM reservation_fates WHERE reservation_id = ANY($1) AND epoch >= 2",
            &[&ids],
        )
        .await
        .expect("rebuilt reservations")
        .iter()
        .map(|r| r.get::<_, Uuid>(0))
        .collect::<std::collections::HashSet<_>>();
    let resumed_at = after
        .iter()
        .filter(|a| a.reservation.is_some_and(|id| first_new.contains(&id)))
        .map(|a| a.at)
        .min()
        .unwrap_or(back);
    let suspended_ms: f64 = client
        .query_one(
            "SELECT coalesce(extract(epoch FROM opened_at - suspended_at) * 1000, -1)::float8
             FROM sale_epochs WHERE sale_id = 'window' AND epoch = 2",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1.0);
    Figures {
        accepted_blind: blind as usize,
        refused: after
            .iter()
            .filter(|a| a.error.as_deref() == Some("sale_recovering"))
            .count(),
        resumed_after: resumed_at - back,
        suspended_for: Duration::from_secs_f64(suspended_ms.max(0.0) / 1000.0),
    }
}

/// A second API instance on the same stores, started now (it knows only PostgreSQL).
async fn fresh_api(
    stores: &yoink_core::StoreArgs,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    String,
) {
    let args = yoink_api::ApiArgs::local();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let state = yoink_api::state(stores, &args).await.expect("state");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(yoink_api::run(listener, state, args, async {
        let _ = rx.await;
    }));
    (tx, server, url)
}
