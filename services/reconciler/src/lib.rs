//! The reconciler: compares each sale's Redis state with PostgreSQL's ledger and flags
//! oversell (always) and divergence (lost or phantom units that hold still for the
//! grace period). Read-only unless `--repair --yes`; safe to run during a live sale.

pub mod error;
pub mod repair;
pub mod report;
pub mod snapshot;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use yoink_core::scripts::{self, Fence};
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db, telemetry};

use crate::error::ReconcileError;
use crate::report::{Divergence, SaleReport, Status};

/// `yoink reconcile` settings.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").args(["sale", "all"])))]
pub struct ReconcileArgs {
    /// Check one sale.
    #[arg(long, env = "YOINK_RECONCILE_SALE")]
    pub sale: Option<String>,
    /// Check every sale either store knows (the default).
    #[arg(long, env = "YOINK_RECONCILE_ALL")]
    pub all: bool,
    /// One JSON object per sale, one per line.
    #[arg(long, env = "YOINK_RECONCILE_JSON")]
    pub json: bool,
    /// Run forever, checking every SECS seconds and exporting gauges.
    #[arg(long, value_name = "SECS", env = "YOINK_RECONCILE_WATCH")]
    pub watch: Option<u64>,
    /// Seconds a divergence must hold still, with the same values, to be flagged.
    #[arg(long, env = "YOINK_RECONCILE_GRACE", default_value_t = 5)]
    pub grace: u64,
    /// Plan repairs for diverged sales (prints the plan; applies it only with --yes).
    #[arg(long, env = "YOINK_RECONCILE_REPAIR")]
    pub repair: bool,
    /// Apply the repair plan. Deliberately a flag only, never read from the
    /// environment: a change to the stores is confirmed by whoever types the command.
    #[arg(long, requires = "repair")]
    pub yes: bool,
    /// Where `--watch` serves /metrics.
    #[arg(
        long,
        env = "YOINK_RECONCILE_METRICS_LISTEN",
        default_value = "127.0.0.1:9102"
    )]
    pub metrics_listen: SocketAddr,
}

/// The outcome of a run, as an exit code: 0 consistent, 1 diverged or oversold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Consistent,
    Flagged,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Consistent => 0,
            Verdict::Flagged => 1,
        }
    }
}

pub const DIVERGENCE: &str = "yoink_reconcile_divergence_units";
pub const OVERSOLD: &str = "yoink_reconcile_oversold_units";
pub const IN_FLIGHT: &str = "yoink_reconcile_in_flight_units";
pub const LAST_SUCCESS: &str = "yoink_reconcile_last_success_timestamp_seconds";
/// Reservations answered 202 and lost with Redis before PostgreSQL saw them.
pub const LOST_RESERVATIONS: &str = "yoink_reconcile_lost_reservations";
/// 1 while a sale's Redis is behind PostgreSQL (suspended) past the grace period.
pub const RECOVERING: &str = "yoink_reconcile_recovering";

struct Stores {
    redis: RedisConn,
    pool: Pool,
    keys: Keyspace,
}

impl Stores {
    /// Opens both stores and proves each answers, so an outage is one clear message.
    async fn open(args: &StoreArgs) -> Result<Self, ReconcileError> {
        let mut redis = RedisConn::open(args).await?;
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        let pool = db::pool(&args.database_url, 4)?;
        pool.get()
            .await
            .map_err(|e| ReconcileError::Db(db::DbError::Pool(e)))?
            .simple_query("SELECT 1")
            .await?;
        Ok(Self {
            redis,
            pool,
            keys: Keyspace::new(args.key_prefix.clone()),
        })
    }

    async fn sales(&mut self, args: &ReconcileArgs) -> Result<Vec<SaleId>, ReconcileError> {
        match &args.sale {
            Some(raw) => Ok(vec![SaleId::parse(raw).map_err(|e| {
                ReconcileError::Unexpected(format!("--sale {raw:?}: {e}"))
            })?]),
            None => snapshot::all_sales(&mut self.redis, &self.keys, &self.pool).await,
        }
    }

    async fn measure(
        &mut self,
        sale: &SaleId,
    ) -> Result<(SaleReport, snapshot::RedisSnapshot), ReconcileError> {
        let mut redis_snapshot =
            snapshot::redis_snapshot(&mut self.redis, &self.keys, sale).await?;
        let postgres = snapshot::postgres_side(&self.pool, sale, &mut redis_snapshot).await?;
        if redis_snapshot.side.position < postgres.floor && !redis_snapshot.side.suspended {
            // Redis went back in time: suspend the sale before it sells a unit
            // PostgreSQL already sold (a projector then rebuilds it).
            if let Fence::Suspended { now, reason, .. } = scripts::fence(
                &mut self.redis,
                &self.keys,
                sale,
                postgres.floor,
                "reconciler",
                false,
            )
            .await?
            {
                redis_snapshot.side.suspended = true;
                if now {
                    telemetry::rollback_detected(sale, "reconciler");
                    tracing::error!(sale_id = %sale, reason = %reason, "Redis went back behind PostgreSQL: sale suspended.");
                }
            }
        }
        let report = SaleReport::compute(sale, redis_snapshot.side.clone(), postgres);
        Ok((report, redis_snapshot))
    }
}

/// One check of every selected sale (with the grace re-check), optionally repaired.
pub async fn run_once(
    stores: &StoreArgs,
    args: &ReconcileArgs,
    out: &mut impl std::io::Write,
) -> Result<Verdict, ReconcileError> {
    let mut s = Stores::open(stores).await?;
    let sales = s.sales(args).await?;
    let mut reports = Vec::with_capacity(sales.len());
    for sale in &sales {
        reports.push(s.measure(sale).await?);
    }
    if reports.iter().any(|(r, _)| r.status == Status::Unsettled) {
        tokio::time::sleep(Duration::from_secs(args.grace)).await;
        for (report, snap) in reports.iter_mut() {
            if report.status == Status::Unsettled {
                let (again, again_snap) = s.measure(&report.sale_id).await?;
                *report = again.settle(report);
                *snap = again_snap;
            }
        }
    }

    if args.repair {
        let mut plan = Vec::new();
        for (report, snap) in &reports {
            if !report.status.is_repairable() {
                continue;
            }
            if report.divergence.lost_units > 0
                && let Some(action) =
                    repair::plan_reproject(&mut s.redis, &s.keys, &s.pool, &report.sale_id, snap)
                        .await?
            {
                plan.push(action);
            }
        }
        write_plan(out, "Repair plan (re-project)", &plan, args.yes)?;
        if args.yes {
            for action in &plan {
                repair::apply(action, &mut s.redis, &s.keys, &s.pool).await?;
            }
            // Whatever still diverges after re-projection is Redis being off: rebuild it.
            let mut rebuild = Vec::new();
            for (report, _) in reports.iter_mut() {
                if !report.status.is_repairable() {
                    continue;
                }
                let (now, snap) = s.measure(&report.sale_id).await?;
                if now.status == Status::Unsettled
                    && let Some(action) =
                        repair::plan_rebuild(&s.pool, &report.sale_id, &snap, &now).await?
                {
                    rebuild.push(action);
                }
            }
            write_plan(out, "Repair plan (rebuild Redis)", &rebuild, true)?;
            for action in &rebuild {
                repair::apply(action, &mut s.redis, &s.keys, &s.pool).await?;
            }
            // Report the state the repairs left.
            for (report, snap) in reports.iter_mut() {
                let (now, now_snap) = s.measure(&report.sale_id).await?;
                *report = if now.status == Status::Unsettled {
                    now.clone().settle(&now)
                } else {
                    now
                };
                *snap = now_snap;
            }
        } else {
            for (report, snap) in &reports {
                if !report.status.is_repairable() || report.divergence.lost_units > 0 {
                    continue;
                }
                if let Some(action) =
                    repair::plan_rebuild(&s.pool, &report.sale_id, snap, report).await?
                {
                    writeln!(out, "  (after re-projection, if still off) {action}")
                        .map_err(io_error)?;
                }
            }
        }
    }

    let reports: Vec<SaleReport> = reports.into_iter().map(|(r, _)| r).collect();
    render(out, &reports, args.json)?;
    Ok(if reports.iter().any(|r| r.status.is_flagged()) {
        Verdict::Flagged
    } else {
        Verdict::Consistent
    })
}

fn io_error(err: std::io::Error) -> ReconcileError {
    ReconcileError::Unexpected(format!("writing output: {err}"))
}

fn write_plan(
    out: &mut impl std::io::Write,
    title: &str,
    plan: &[repair::Action],
    applying: bool,
) -> Result<(), ReconcileError> {
    if plan.is_empty() {
        return Ok(());
    }
    let mode = if applying {
        "applying"
    } else {
        "dry run: add --yes to apply"
    };
    writeln!(out, "{title} ({mode}):").map_err(io_error)?;
    for action in plan {
        writeln!(out, "  {action}").map_err(io_error)?;
    }
    Ok(())
}

/// A readable table, or one JSON object per line.
pub fn render(
    out: &mut impl std::io::Write,
    reports: &[SaleReport],
    json: bool,
) -> Result<(), ReconcileError> {
    if json {
        for r in reports {
            let line =
                serde_json::to_string(r).map_err(|e| ReconcileError::Unexpected(e.to_string()))?;
            writeln!(out, "{line}").map_err(io_error)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
        "SALE",
        "STATUS",
        "INITIAL",
        "REMAIN",
        "CONFIRM",
        "RELEASE",
        "INFLIGHT",
        "LOST",
        "PHANTOM",
        "OVERSLD",
        "PENDING",
        "DEAD"
    )
    .map_err(io_error)?;
    for r in reports {
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<24} {:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
            r.sale_id,
            status,
            r.initial_stock,
            r.redis.remaining,
            r.postgres.confirmed_units,
            r.postgres.released_units,
            r.in_flight_units,
            r.divergence.lost_units,
            r.divergence.phantom_units,
            r.oversold_units,
            r.redis.pending,
            r.redis.dead_letters
        )
        .map_err(io_error)?;
        if r.redis.is_behind(&r.postgres) {
            writeln!(
                out,
                "  ! Redis went back behind PostgreSQL (Redis at {}, PostgreSQL saw {}): buys are suspended until it is rebuilt",
                r.redis.position, r.postgres.floor
            )
            .map_err(io_error)?;
        }
        if r.postgres.lost_reservations > 0 {
            writeln!(
                out,
                "  ! {} reservation(s) answered 202 were lost with Redis before PostgreSQL saw them",
                r.postgres.lost_reservations
            )
            .map_err(io_error)?;
        }
        if r.divergence.redis_self_diff != 0 {
            writeln!(
                out,
                "  ! Redis inconsistent: initial - remaining - reserved + released = {}",
                r.divergence.redis_self_diff
            )
            .map_err(io_error)?;
        }
    }
    Ok(())
}

/// `--watch`: checks every `every`, exports gauges on `metrics_listen`, forever (until
/// `shutdown`). A divergence is flagged once it held the same values for `grace`.
pub async fn watch(
    stores: &StoreArgs,
    args: &ReconcileArgs,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReconcileError> {
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| ReconcileError::Unexpected(format!("binding {}: {e}", args.metrics_listen)))?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(telemetry::serve_metrics(listener, async move {
        let _ = stop_rx.changed().await;
    }));
    let grace = Duration::from_secs(args.grace);
    let mut first_seen: HashMap<SaleId, (Divergence, Instant)> = HashMap::new();
    let mut stores_open: Option<Stores> = None;
    tokio::pin!(shutdown);
    loop {
        let tick = async {
            if stores_open.is_none() {
                stores_open = Some(Stores::open(stores).await?);
            }
            let s = stores_open.as_mut().expect("opened above");
            let mut reports = Vec::new();
            for sale in s.sales(args).await? {
                let (mut report, _) = s.measure(&sale).await?;
                if report.status == Status::Unsettled {
                    let entry = first_seen
                        .entry(report.sale_id.clone())
                        .or_insert((report.divergence, Instant::now()));
                    if entry.0 != report.divergence {
                        *entry = (report.divergence, Instant::now());
                    }
                    if entry.1.elapsed() >= grace {
                        report.status = report.held_status();
                    }
                } else {
                    first_seen.remove(&report.sale_id);
                }
                export(&report);
                reports.push(report);
            }
            Ok::<_, ReconcileError>(reports)
        };
        match tick.await {
            Ok(reports) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                metrics::gauge!(LAST_SUCCESS).set(now);
                let mut stdout = std::io::stdout();
                render(&mut stdout, &reports, args.json)?;
            }
            Err(err) => {
                // Keep watching: the staleness of the last-success gauge is the alert.
                tracing::error!(error = %err, "Reconcile pass failed.");
                stores_open = None;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

fn export(report: &SaleReport) {
    let sale = report.sale_id.to_string();
    let flagged = report.status == Status::Diverged;
    let settled = |units: i64| if flagged { units as f64 } else { 0.0 };
    metrics::gauge!(DIVERGENCE, "sale" => sale.clone(), "kind" => "lost")
        .set(settled(report.divergence.lost_units));
    metrics::gauge!(DIVERGENCE, "sale" => sale.clone(), "kind" => "phantom")
        .set(settled(report.divergence.phantom_units));
    metrics::gauge!(OVERSOLD, "sale" => sale.clone()).set(report.oversold_units as f64);
    metrics::gauge!(LOST_RESERVATIONS, "sale" => sale.clone())
        .set(report.postgres.lost_reservations as f64);
    metrics::gauge!(RECOVERING, "sale" => sale.clone())
        .set(f64::from(u8::from(report.status == Status::Recovering)));
    metrics::gauge!(IN_FLIGHT, "sale" => sale).set(report.in_flight_units as f64);
}
