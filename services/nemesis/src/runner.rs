//! One run from start to report: the stores, the sale, the processes, the load and the
//! schedule side by side (and the planted fault, if any), then heal, drain, check and
//! `yoink reconcile`.
//!
//! It must never leave anything behind that it started: processes are stopped (and
//! killed when dropped), private stores are removed, and on given stores its database
//! and keys are removed unless the run failed or `--keep` asks otherwise (then it says
//! where they are).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use uuid::Uuid;
use yoink_core::db::with_database;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db};
use yoink_localstores::{LocalOptions, LocalStores};

use crate::faults::Injector;
use crate::history::{History, Outcome, Request};
use crate::load::{self, Load, elapsed_ms};
use crate::processes::Processes;
use crate::report::{Drain, Planted, Reconcile, Report};
use crate::schedule::Fault;
use crate::{NemesisArgs, NemesisError, Plant, Settings, StoresMode, check, now_ms};

/// How long the API gets to answer its first `/healthz`.
const API_UP_WITHIN: Duration = Duration::from_secs(30);
/// How long `yoink reconcile` may take.
const RECONCILE_WITHIN: Duration = Duration::from_secs(60);

/// Runs the whole thing.
pub async fn run(
    given: &StoreArgs,
    args: &NemesisArgs,
    settings: &Settings,
    schedule: &[Fault],
    bin: &Path,
    out: &Path,
) -> Result<Report, NemesisError> {
    let stamp = now_ms();
    let (local, mut stores) = match args.stores {
        StoresMode::Private => {
            let local = LocalStores::start_with(LocalOptions {
                persistent_redis: true,
            })
            .await?;
            let mut stores = given.clone();
            stores.redis_url = local.redis_url();
            stores.redis_cluster = false;
            stores.database_url = with_database(&local.database_url(), "yoink");
            (Some(local), stores)
        }
        StoresMode::Given => {
            let mut stores = given.clone();
            stores.database_url =
                with_database(&stores.database_url, &format!("yoink_nemesis_{stamp}"));
            (None, stores)
        }
    };
    // Its own keys, also on private stores: the check reads one sale's keys only.
    stores.key_prefix = format!("{}yoink-nemesis-{stamp}:", stores.key_prefix);
    println!(
        "Stores: Redis {} and PostgreSQL {} ({}), key prefix {}.",
        stores.redis_url_for_logs(),
        stores.database_url_for_logs(),
        if local.is_some() {
            "private, removed afterwards"
        } else {
            "yours: a database and key prefix of the run's own"
        },
        stores.key_prefix
    );
    let outcome = run_on(&stores, local, args, settings, schedule, bin, out, stamp).await;
    if args.stores == StoresMode::Given {
        let keep = args.keep || !matches!(&outcome, Ok(report) if report.ok());
        if keep {
            println!(
                "Kept: database {}, Redis keys {}*.",
                stores.database_url_for_logs(),
                stores.key_prefix
            );
        } else if let Err(err) = yoink_core::scratch::discard::<NemesisError>(&stores).await {
            eprintln!("Could not remove the run's database or keys: {err}");
        }
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_on(
    stores: &StoreArgs,
    local: Option<LocalStores>,
    args: &NemesisArgs,
    settings: &Settings,
    schedule: &[Fault],
    bin: &Path,
    out: &Path,
    stamp: u128,
) -> Result<Report, NemesisError> {
    db::ensure_database(&stores.database_url).await?;
    // A pool for the setup, one for the plant and one for the check: none holds a
    // connection while PostgreSQL is stopped and started (each would log its loss).
    let pool = db::pool(&stores.database_url, 4)?;
    db::migrate(&pool).await?;
    let keys = Keyspace::new(stores.key_prefix.clone());
    let sale = SaleId::parse(&format!("nemesis-{stamp}"))
        .map_err(|e| NemesisError::Usage(format!("sale id: {e}")))?;
    let mut redis = RedisConn::open(stores).await?;
    sales::create_sale(
        &mut redis,
        &keys,
        &pool,
        &CreateSale {
            sale_id: sale.clone(),
            terms: SaleTerms {
                initial_stock: settings.stock,
                limit_per_user: settings.limit_per_user,
                ..SaleTerms::default()
            },
        },
    )
    .await?;

    drop(pool);

    let port = free_port()?;
    let logs = out.join("logs");
    let procs = Processes::start(bin, stores, &logs, port).await?;
    let base_url = format!("http://127.0.0.1:{port}");
    wait_api_up(&base_url, port, &logs).await?;
    let mut injector = Injector::new(
        local,
        procs,
        redis.clone(),
        keys.clone(),
        sale.clone(),
        stores.clone(),
    );

    println!(
        "Sale {sale}: {} units, limit {} per buyer; {} buyers send {}/s for {} s.",
        settings.stock, settings.limit_per_user, settings.buyers, settings.rate, settings.seconds
    );
    let (history, writer) = History::create(out).await?;
    let started = Instant::now();
    let load = tokio::spawn(load::run(
        Load {
            base_url,
            sale_id: sale.to_string(),
            buyers: settings.buyers,
            rate: settings.rate,
            seconds: settings.seconds,
            seed: settings.seed,
            tag: format!("n{stamp}"),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
        },
        history,
        started,
    ));
    let plant = args.plant.map(|plant| {
        let (url, mut redis, keys, sale) = (
            stores.database_url.clone(),
            redis.clone(),
            keys.clone(),
            sale.clone(),
        );
        let at = Duration::from_millis(settings.seconds * 1_000 * 2 / 5);
        tokio::spawn(async move {
            tokio::time::sleep_until((started + at).into()).await;
            let detail = plant_fault(plant, &url, &mut redis, &keys, &sale).await;
            (elapsed_ms(started), detail)
        })
    });
    injector.run_schedule(schedule, started).await;
    let requests = load
        .await
        .map_err(|e| NemesisError::Io("the load".into(), std::io::Error::other(e.to_string())))?;
    let load_secs = started.elapsed().as_secs_f64();
    let history_path = writer.finish().await?;
    let planted = match plant {
        Some(task) => {
            let (at_ms, detail) = task.await.map_err(|e| {
                NemesisError::Io("the plant".into(), std::io::Error::other(e.to_string()))
            })?;
            Some(Planted {
                kind: settings.plant.unwrap_or("?"),
                at_ms,
                detail,
            })
        }
        None => None,
    };

    println!("Load done; healing and draining.");
    injector.heal().await?;
    let pool = db::pool(&stores.database_url, 4)?;
    let drain = drain(
        &mut injector,
        &pool,
        &requests,
        Duration::from_secs(args.drain_secs),
    )
    .await;
    crate::faults::redis_ready(&mut redis).await;
    let mut findings = check::check(
        &pool,
        &mut redis,
        &keys,
        &sale,
        settings.limit_per_user,
        &requests,
    )
    .await?;
    let reconcile = reconcile(bin, stores, &sale).await;
    injector.procs.stop_all().await;

    let mut problems = std::mem::take(&mut findings.problems);
    if !drain.drained {
        problems.push(format!(
            "drain: not drained after {} s ({} 202s without a fate, stream backlog {})",
            args.drain_secs, drain.accepted_without_fate, drain.stream_backlog
        ));
    }
    if reconcile.exit_code != Some(0) {
        problems.push(format!(
            "reconcile: {} (exit {:?})",
            reconcile.status, reconcile.exit_code
        ));
    }
    let mut faults_by_kind = BTreeMap::new();
    for record in injector.log.iter().filter(|r| r.error.is_none()) {
        *faults_by_kind
            .entry(record.kind.name().to_owned())
            .or_default() += 1;
    }
    Ok(Report {
        verdict: if problems.is_empty() { "ok" } else { "failed" },
        seed: settings.seed,
        settings: settings.clone(),
        sale_id: sale.to_string(),
        faults_by_kind,
        faults: injector.log.clone(),
        accepted: findings.accepted,
        indefinite: findings.indefinite,
        confirmed: findings.confirmed,
        released: findings.released,
        lost: findings.lost,
        duplicated: findings.duplicated,
        oversold: findings.oversold,
        findings,
        drain,
        reconcile,
        planted,
        process_starts: injector.procs.lives(),
        load_secs,
        history: history_path.display().to_string(),
        logs: logs.display().to_string(),
        problems,
    })
}

/// A free port on 127.0.0.1 for the API (bound, then released).
fn free_port() -> Result<u16, NemesisError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|err| NemesisError::Io("finding a free port".into(), err))
}

async fn wait_api_up(base_url: &str, port: u16, logs: &Path) -> Result<(), NemesisError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + API_UP_WITHIN;
    while Instant::now() < deadline {
        let answered = client.get(format!("{base_url}/healthz")).send().await;
        if answered.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(NemesisError::ApiNotUp {
        port,
        secs: API_UP_WITHIN.as_secs(),
        logs: logs.display().to_string(),
    })
}

/// Waits until every 202 has a fate, the stream is drained and the sale is not
/// suspended, up to `within`.
async fn drain(
    injector: &mut Injector,
    pool: &deadpool_postgres::Pool,
    requests: &[Request],
    within: Duration,
) -> Drain {
    let accepted: Vec<Uuid> = requests
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Ok { reservation_id } => Some(reservation_id),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    let deadline = started + within;
    loop {
        let without_fate = without_fate(pool, &accepted).await.unwrap_or(-1);
        let backlog = injector.stream_backlog().await.unwrap_or(u64::MAX);
        let meta = injector.keys.meta(&injector.sale);
        let suspended: bool = injector
            .redis
            .hexists(&meta, "suspended")
            .await
            .unwrap_or(true);
        let drained = without_fate == 0 && backlog == 0 && !suspended;
        if drained || Instant::now() >= deadline {
            let group = if drained {
                None
            } else {
                Some(injector.describe_group().await)
            };
            let stream_length = injector
                .redis
                .xlen(injector.keys.events(&injector.sale))
                .await
                .ok();
            return Drain {
                drained,
                secs: started.elapsed().as_secs_f64(),
                accepted_without_fate: without_fate,
                stream_backlog: backlog,
                group,
                stream_length,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn without_fate(pool: &deadpool_postgres::Pool, ids: &[Uuid]) -> Result<i64, NemesisError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM unnest($1::uuid[]) AS a(id)
             WHERE NOT EXISTS (SELECT 1 FROM reservation_fates f WHERE f.reservation_id = a.id)",
            &[&ids],
        )
        .await?;
    Ok(row.get(0))
}

/// `yoink reconcile --sale <sale> --json --grace 1`, as an operator would run it.
async fn reconcile(bin: &Path, stores: &StoreArgs, sale: &SaleId) -> Reconcile {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "reconcile",
        "--sale",
        sale.as_str(),
        "--json",
        "--grace",
        "1",
    ])
    .env("DATABASE_URL", &stores.database_url)
    .env("REDIS_URL", &stores.redis_url)
    .env("YOINK_KEY_PREFIX", &stores.key_prefix)
    .env("YOINK_REDIS_CLUSTER", stores.redis_cluster.to_string())
    .env("RUST_LOG", "warn")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let output = match tokio::time::timeout(RECONCILE_WITHIN, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Reconcile {
                exit_code: None,
                status: format!("could not run: {err}"),
            };
        }
        Err(_) => {
            return Reconcile {
                exit_code: None,
                status: format!("no verdict within {} s", RECONCILE_WITHIN.as_secs()),
            };
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let status = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
        .unwrap_or_else(|| {
            format!(
                "no status in its output: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        });
    Reconcile {
        exit_code: output.status.code(),
        status,
    }
}

/// Plants `plant`; says what it did (or why it could not).
async fn plant_fault(
    plant: Plant,
    database_url: &str,
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> String {
    let outcome: Result<String, NemesisError> = async {
        match plant {
            Plant::DeleteOrder => {
                let pool = db::pool(database_url, 1)?;
                let client = pool.get().await?;
                let row = client
                    .query_opt(
                        "DELETE FROM orders WHERE order_id =
                            (SELECT order_id FROM orders WHERE sale_id = $1
                             ORDER BY created_at LIMIT 1)
                         RETURNING reservation_id",
                        &[&sale.as_str()],
                    )
                    .await?;
                Ok(match row {
                    Some(row) => format!(
                        "deleted the order (its confirmed fate) of reservation {}",
                        row.get::<_, Uuid>(0)
                    ),
                    None => "no order row to delete yet".to_owned(),
                })
            }
            Plant::StealUnit => {
                crate::faults::redis_ready(redis).await;
                let left: i64 = redis.decr(keys.stock(sale), 1).await?;
                Ok(format!("took one unit from the Redis stock, {left} left"))
            }
        }
    }
    .await;
    outcome.unwrap_or_else(|err| format!("could not plant it: {err}"))
}
