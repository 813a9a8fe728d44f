//! The reconciler: compares each sale's Redis state with PostgreSQL's ledger and flags
//! oversell (always), divergence (lost or phantom units that hold still for the grace
//! period) and holds nobody expired (still `held` the grace period past their
//! deadline). Read-only unless `--repair --yes` (and except that a sale found with
//! Redis behind PostgreSQL is suspended); safe to run during a live sale.
//!
//! This file holds the settings and the two ways to run: once (`run_once`) and
//! `--watch`. Reading the stores is `stores`/`snapshot`, the arithmetic and its
//! rendering `report`, the fixes `repair`.

pub mod archived;
pub mod error;
pub mod exported;
pub mod memory;
pub mod repair;
pub mod report;
pub mod snapshot;
mod stores;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use yoink_core::{SaleId, StoreArgs, telemetry};

use crate::error::ReconcileError;
pub use crate::report::render;
use crate::report::{SaleReport, Status};
use crate::stores::Stores;

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
    /// Seconds a divergence must hold still, with the same values, to be flagged; also
    /// how long past its deadline a hold may stay held before it is flagged overdue
    /// (at least 1).
    #[arg(long, env = "YOINK_RECONCILE_GRACE", default_value_t = 5)]
    pub grace: u64,
    /// Plan repairs for diverged sales (prints the plan; applies it only with --yes).
    #[arg(long, env = "YOINK_RECONCILE_REPAIR")]
    pub repair: bool,
    /// Apply the repair plan. Deliberately a flag only, never read from the
    /// environment: a change to the stores is confirmed by whoever types the command.
    #[arg(long, requires = "repair")]
    pub yes: bool,
    /// With --watch: archive a sale SECS seconds after its end, once a pass finds it
    /// consistent (the checks of `yoink sale archive` run again first; then
    /// PostgreSQL records it archived and every Redis key of it goes).
    #[arg(
        long,
        value_name = "SECS",
        env = "YOINK_ARCHIVE_AFTER_SECS",
        requires = "watch"
    )]
    pub archive_after: Option<u64>,
    /// Where `--watch` serves /metrics.
    #[arg(
        long,
        env = "YOINK_RECONCILE_METRICS_LISTEN",
        default_value = "127.0.0.1:9102"
    )]
    pub metrics_listen: SocketAddr,
}

impl ReconcileArgs {
    /// Range checks, with the flag to change.
    pub fn check(&self) -> Result<(), String> {
        if self.watch == Some(0) {
            return Err("--watch must be at least 1 (seconds between passes)".into());
        }
        if self.grace > 3_600 {
            return Err("--grace must be at most 3600 seconds".into());
        }
        Ok(())
    }

    /// How long past its deadline a hold may stay `held` before it counts as overdue:
    /// the grace period, at least `MIN_OVERDUE_SECS`.
    ///
    /// Why the grace: it is already the operator's word for "how long may the stores
    /// disagree before someone is woken", and an overdue hold is the same kind of
    /// lateness (a healthy projector sweeps every ~200 ms, so a hold is released well
    /// within the default 5 s; one still held after that means no projector is
    /// sweeping the sale, or it cannot reach a store). The deadline is in PostgreSQL,
    /// so the lateness is measured there in one read: unlike a divergence, no second
    /// look after the grace is needed. Why the floor: `--grace 0` would flag every hold
    /// the sweep has simply not reached yet (it runs every ~200 ms, then commits).
    pub fn overdue_after(&self) -> Duration {
        Duration::from_secs(self.grace.max(MIN_OVERDUE_SECS))
    }
}

/// The least `overdue_after`, whatever `--grace` says: several expiry sweeps' time.
pub const MIN_OVERDUE_SECS: u64 = 1;

/// The outcome of a run, as an exit code: 0 consistent (in flight counts as consistent),
/// 1 flagged: at least one sale diverged, oversold, recovering, lost data or has holds
/// overdue (`Status::is_flagged`). Runs that cannot finish exit with
/// `error::exit` codes instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Consistent,
    Flagged,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Consistent => error::exit::CONSISTENT,
            Verdict::Flagged => error::exit::FLAGGED,
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
/// Units of holds still `held` in PostgreSQL (taken, waiting for a decision).
pub const HELD_UNITS: &str = "yoink_reconcile_held_units";
/// Holds still `held` past their deadline plus the grace period: no projector expires
/// them.
pub const OVERDUE_HOLDS: &str = "yoink_reconcile_overdue_holds";

/// One check of every selected sale (with the grace re-check), optionally repaired.
pub async fn run_once(
    stores: &StoreArgs,
    args: &ReconcileArgs,
    out: &mut impl std::io::Write,
) -> Result<Verdict, ReconcileError> {
    let mut s = Stores::open(stores, args.overdue_after()).await?;
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
        repair::run(&mut s, &mut reports, args.yes, out).await?;
    }

    let reports: Vec<SaleReport> = reports.into_iter().map(|(r, _)| r).collect();
    render(out, &reports, args.json)?;
    Ok(if reports.iter().any(|r| r.status.is_flagged()) {
        Verdict::Flagged
    } else {
        Verdict::Consistent
    })
}

/// `--watch`: checks every `every`, exports gauges on `metrics_listen`, forever (until
/// `shutdown`). A divergence is flagged once it held the same values for `grace`.
///
/// An archived sale whose books balance is checked once per watch, not on every pass:
/// nothing writes to it any more, and a shop that archives a sale a day would otherwise
/// recount every order it ever sold, every pass. `yoink reconcile --all` (one shot) and
/// `--sale ID` (also with `--watch`) still check it every time.
pub async fn watch(
    stores: &StoreArgs,
    args: &ReconcileArgs,
    every: Duration,
    sd_dir: Option<&std::path::Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReconcileError> {
    let listener = telemetry::bind_metrics(&args.metrics_listen.to_string(), "reconciler")
        .await?
        .ok_or_else(|| ReconcileError::BadFlag("--watch needs a --metrics-listen address"))?;
    let _published = match (sd_dir, listener.local_addr()) {
        (Some(dir), Ok(addr)) => Some(
            telemetry::ScrapeTarget::publish(dir, "reconciler", addr)
                .map_err(ReconcileError::Publish)?,
        ),
        _ => None,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(telemetry::serve_metrics(listener, async move {
        let _ = stop_rx.changed().await;
    }));
    let _ = telemetry::prometheus();
    exported::describe();
    exported::register();
    telemetry::watch_runtime();
    let grace = Duration::from_secs(args.grace);
    let mut first_seen: HashMap<SaleId, (SaleReport, Instant)> = HashMap::new();
    let mut archived_balanced: HashSet<SaleId> = HashSet::new();
    let mut stores_open: Option<Stores> = None;
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let tick = async {
            if stores_open.is_none() {
                stores_open = Some(Stores::open(stores, args.overdue_after()).await?);
            }
            let s = stores_open.as_mut().expect("opened above");
            let mut reports = Vec::new();
            for sale in s.sales(args).await? {
                if archived_balanced.contains(&sale) {
                    continue;
                }
                let (mut report, _) = s.measure(&sale).await?;
                match memory::sale_bytes(&mut s.redis, &s.keys, &sale).await {
                    Ok(bytes) => exported::redis_memory(&sale, bytes),
                    // A Redis that refuses MEMORY (some managed ones rename it) costs
                    // this gauge only, never the pass.
                    Err(err) => {
                        tracing::debug!(sale_id = %sale, error = %err, "MEMORY USAGE failed: no memory figure for the sale this pass.");
                    }
                }
                if report.status == Status::Archived && args.sale.is_none() {
                    tracing::info!(sale_id = %sale, "Archived sale balances in PostgreSQL; this watch checks it no more (yoink reconcile --sale does).");
                    archived_balanced.insert(sale.clone());
                }
                if report.status == Status::Unsettled {
                    let entry = first_seen
                        .entry(report.sale_id.clone())
                        .or_insert((report.clone(), Instant::now()));
                    if !report.held_still_since(&entry.0) {
                        *entry = (report.clone(), Instant::now());
                    }
                    report.status = if entry.1.elapsed() >= grace {
                        report.held_status()
                    } else {
                        report.unconfirmed_status()
                    };
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
                if failing {
                    tracing::info!("Reconcile passes succeed again.");
                    failing = false;
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                metrics::gauge!(LAST_SUCCESS).set(now);
                let mut stdout = std::io::stdout();
                render(&mut stdout, &reports, args.json)?;
                if let (Some(after), Some(s)) = (args.archive_after, stores_open.as_ref()) {
                    archive_due(stores, s, &reports, after).await;
                }
            }
            Err(err) => {
                exported::pass_failed(&err);
                // Keep watching: the staleness of the last-success gauge is the alert, and
                // an outage is logged once, not once per pass.
                if !failing {
                    tracing::warn!(error = %err, "Reconcile pass failed; retrying every pass.");
                }
                failing = true;
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

/// `--archive-after`: archives each sale this pass found consistent that ended at
/// least `after` seconds ago and is not archived yet. A refusal or a failure is logged
/// and tried again on a later pass; it never stops the watch.
async fn archive_due(stores: &StoreArgs, s: &Stores, reports: &[SaleReport], after: u64) {
    let due = async {
        let rows = s
            .pool
            .get()
            .await?
            .query(
                "SELECT sale_id FROM sales
                 WHERE archived_at IS NULL AND ends_at <= now() - make_interval(secs => $1)",
                &[&(after as f64)],
            )
            .await?;
        Ok::<Vec<String>, ReconcileError>(rows.iter().map(|r| r.get(0)).collect())
    };
    let due = match due.await {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "Cannot list the sales due for archiving.");
            return;
        }
    };
    let due: Vec<SaleId> = reports
        .iter()
        .filter(|r| r.status == Status::Consistent && due.contains(&r.sale_id.to_string()))
        .map(|r| r.sale_id.clone())
        .collect();
    // Side by side, so sales that ended together wait out one settle, not one each.
    futures::stream::iter(due)
        .map(|sale| archive_one(stores, sale, after))
        .buffer_unordered(ARCHIVES_AT_ONCE)
        .collect::<Vec<()>>()
        .await;
}

/// Most sales `--archive-after` archives at once (each with its own connections).
const ARCHIVES_AT_ONCE: usize = 8;

async fn archive_one(stores: &StoreArgs, sale: SaleId, after: u64) {
    let args = archived::ArchiveArgs {
        id: sale.to_string(),
        yes: true,
        settle_ms: 3_000,
    };
    let mut said = Vec::new();
    match archived::archive(stores, &args, &mut said).await {
        Ok(0) => {
            exported::archived(&sale);
            tracing::info!(sale_id = %sale, after_secs = after, "Archived the sale (--archive-after).");
        }
        Ok(_) => {
            tracing::warn!(sale_id = %sale, plan = %String::from_utf8_lossy(&said), "Archive left Redis keys; trying again next pass.");
        }
        Err(err) => {
            tracing::info!(sale_id = %sale, error = %err, "Not archived yet (--archive-after).");
        }
    }
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
    metrics::gauge!(HELD_UNITS, "sale" => sale.clone()).set(report.held_units as f64);
    metrics::gauge!(OVERDUE_HOLDS, "sale" => sale.clone()).set(report.overdue_holds as f64);
    metrics::gauge!(IN_FLIGHT, "sale" => sale).set(report.in_flight_units as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(grace: u64) -> ReconcileArgs {
        ReconcileArgs {
            sale: None,
            all: true,
            json: false,
            watch: None,
            grace,
            repair: false,
            yes: false,
            archive_after: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    #[test]
    fn a_hold_is_overdue_after_the_grace_but_never_before_the_sweep_had_a_chance() {
        assert_eq!(args(5).overdue_after(), Duration::from_secs(5));
        assert_eq!(args(30).overdue_after(), Duration::from_secs(30));
        assert_eq!(
            args(0).overdue_after(),
            Duration::from_secs(MIN_OVERDUE_SECS)
        );
    }
}
