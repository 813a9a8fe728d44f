//! `--repair`: plans (and with `--yes` applies) the fixes for a diverged sale.
//!
//! 1. Re-project reservations that are in the stream but missing in PostgreSQL (no
//!    order, not released, not a hold still `held`), through the projector's own
//!    idempotent writer (`ledger::project`: a reservation of a sale with holds is
//!    recorded as a hold again, never made an order nobody paid for).
//! 2. When Redis is still off (it lost data, went back in time, or units were taken
//!    without an event), suspend the sale and rebuild Redis from PostgreSQL's ledger
//!    with the projectors' own rebuild (`yoink_core::rebuild`): the reservations
//!    in flight are decided first, then stock, counters, buyer counts, reservation
//!    records and Idempotency-Keys are swapped in with a compare-and-set.
//!
//! Never deletes an order, never touches a sale whose figures are still moving. Holds
//! overdue are not repaired here: expiring them is the projectors' job (the plan says
//! to start `yoink project`).

use std::collections::HashSet;
use std::fmt;

use deadpool_postgres::Pool;
use uuid::Uuid;
use yoink_core::events::{Reserved, SaleEvent};
use yoink_core::holds;
use yoink_core::ledger;
use yoink_core::rebuild::{self, Outcome};
use yoink_core::scripts;
use yoink_core::stream::{self, read_range};
use yoink_core::{Keyspace, Position, RedisConn, SaleId};

use crate::error::ReconcileError;
use crate::report::{SaleReport, Status};
use crate::snapshot::RedisSnapshot;
use crate::stores::Stores;

pub const REPAIRS: &str = "yoink_reconcile_repairs_total";

/// One fix, printed as the plan and applied with `--yes`.
#[derive(Debug, Clone)]
pub enum Action {
    /// Reservations in the stream with no order, no release and no hold waiting in
    /// PostgreSQL.
    Reproject {
        sale: SaleId,
        entries: Vec<(String, Reserved)>,
    },
    /// Suspend the sale and rebuild its Redis state from PostgreSQL's ledger.
    RebuildRedis {
        sale: SaleId,
        remaining_now: i64,
        /// Stock after the rebuild, before the reservations in flight are decided
        /// (each one decided `released` gives its units back on top).
        remaining_after: i64,
        in_flight: usize,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Reproject { sale, entries } => {
                let units: i64 = entries.iter().map(|(_, r)| r.quantity).sum();
                write!(
                    f,
                    "sale {sale}: re-project {} reservation(s) ({units} units) from the stream into PostgreSQL",
                    entries.len()
                )
            }
            Action::RebuildRedis {
                sale,
                remaining_now,
                remaining_after,
                in_flight,
            } => write!(
                f,
                "sale {sale}: suspend buys, decide {in_flight} reservation(s) in flight, rebuild Redis from PostgreSQL: remaining {remaining_now} -> {remaining_after}"
            ),
        }
    }
}

/// Reservations of the stream that PostgreSQL has neither ordered, released nor
/// recorded as a hold still waiting, and that are not in flight (the projectors will
/// handle those).
pub async fn plan_reproject(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
    sale: &SaleId,
    snapshot: &RedisSnapshot,
) -> Result<Option<Action>, ReconcileError> {
    if snapshot.last_entry_id == "0-0" {
        return Ok(None);
    }
    let in_flight: HashSet<&str> = snapshot
        .in_flight
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    let mut reserved = Vec::new();
    for entry in read_range(redis, &keys.events(sale), "-", &snapshot.last_entry_id).await? {
        if in_flight.contains(entry.id.as_str()) {
            continue;
        }
        if let Ok(SaleEvent::Reserved(r)) = SaleEvent::from_fields(&stream::fields(&entry)) {
            reserved.push((entry.id.clone(), r));
        }
    }
    if reserved.is_empty() {
        return Ok(None);
    }
    let ids: Vec<Uuid> = reserved
        .iter()
        .map(|(_, r)| r.reservation_id.as_uuid())
        .collect();
    let client = pool.get().await?;
    let settled: HashSet<Uuid> = client
        .query(
            // Decided (an order is a confirmed fate), or a hold still waiting.
            "SELECT reservation_id FROM reservation_fates WHERE reservation_id = ANY($1)
             UNION
             SELECT reservation_id FROM holds
             WHERE reservation_id = ANY($1) AND state = 'held'",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    reserved.retain(|(_, r)| !settled.contains(&r.reservation_id.as_uuid()));
    Ok((!reserved.is_empty()).then(|| Action::Reproject {
        sale: sale.clone(),
        entries: reserved,
    }))
}

/// A rebuild of Redis from PostgreSQL's ledger, with the stock it would leave.
pub async fn plan_rebuild(
    pool: &Pool,
    sale: &SaleId,
    snapshot: &RedisSnapshot,
    report: &SaleReport,
) -> Result<Option<Action>, ReconcileError> {
    let client = pool.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT initial_stock, confirmed_units FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?
    else {
        tracing::warn!(sale_id = %sale, "PostgreSQL does not know this sale; cannot rebuild Redis from it.");
        return Ok(None);
    };
    let (initial, confirmed): (i64, i64) = (row.get(0), row.get(1));
    // Held units stay off sale through a rebuild, as the rebuild itself counts them.
    let held = holds::held_units(&client, sale).await?;
    let in_flight: i64 = snapshot.in_flight.iter().map(|(_, r)| r.quantity).sum();
    Ok(Some(Action::RebuildRedis {
        sale: sale.clone(),
        remaining_now: report.redis.remaining,
        remaining_after: (initial - confirmed - held - in_flight).max(0),
        in_flight: snapshot.in_flight.len(),
    }))
}

/// Applies one action; logs it and counts it.
pub async fn apply(
    action: &Action,
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &Pool,
) -> Result<(), ReconcileError> {
    match action {
        Action::Reproject { sale, entries } => {
            let batch: Vec<(&str, &Reserved)> =
                entries.iter().map(|(id, r)| (id.as_str(), r)).collect();
            // Reservations with no fate at all (an order is a confirmed fate, so a
            // lost order is a lost fate): the projector's own writer (orders, or holds
            // on a sale with holds: they wait for their confirm or expiry).
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // A fate deleted by hand took its units out of no counter: count the
            // sale's orders first, so the re-projected ones are counted once (and the
            // no-oversell CHECK judges the true total).
            tx.execute(
                "UPDATE sales SET confirmed_units =
                     (SELECT coalesce(sum(quantity), 0) FROM orders WHERE sale_id = $1)
                 WHERE sale_id = $1",
                &[&sale.as_str()],
            )
            .await?;
            let (orders, recorded_holds) = ledger::project_in(&tx, &batch).await?;
            tx.commit().await?;
            let created = orders + recorded_holds;
            metrics::counter!(REPAIRS, "kind" => "reproject").increment(created);
            tracing::warn!(sale_id = %sale, created, "Repair: re-projected reservations.");
        }
        Action::RebuildRedis { sale, .. } => {
            scripts::fence(
                redis,
                keys,
                sale,
                Position::ZERO,
                "reconcile --repair",
                true,
            )
            .await?;
            match rebuild::recover(redis, keys, pool, sale, "reconcile --repair")
                .await
                .map_err(|source| ReconcileError::Rebuild {
                    sale: sale.clone(),
                    source,
                })? {
                Outcome::Recovered(r) => {
                    metrics::counter!(REPAIRS, "kind" => "rebuild_redis").increment(1);
                    tracing::warn!(sale_id = %sale, epoch = r.epoch, stock = r.stock, "Repair: rebuilt Redis from PostgreSQL.");
                }
                Outcome::NotSuspended => {}
                Outcome::Busy => return Err(ReconcileError::RebuildBusy(sale.clone())),
            }
        }
    }
    Ok(())
}

/// `--repair`: plans the fixes for every repairable sale and, with `yes`, applies them
/// (re-projection first, then a rebuild of whatever still diverges), then measures
/// again so `reports` say what the repairs left.
pub(crate) async fn run(
    s: &mut Stores,
    reports: &mut [(SaleReport, RedisSnapshot)],
    yes: bool,
    out: &mut impl std::io::Write,
) -> Result<(), ReconcileError> {
    let mut plan = Vec::new();
    for (report, snap) in reports.iter() {
        if !report.status.is_repairable() {
            continue;
        }
        if report.divergence.lost_units > 0
            && let Some(action) =
                plan_reproject(&mut s.redis, &s.keys, &s.pool, &report.sale_id, snap).await?
        {
            plan.push(action);
        }
    }
    write_plan(out, "Repair plan (re-project)", &plan, yes)?;
    for (report, _) in reports.iter() {
        if report.status == Status::HoldsOverdue {
            writeln!(
                out,
                "sale {}: {} hold(s) overdue: not repaired here: no projector is expiring holds: start `yoink project`",
                report.sale_id, report.overdue_holds
            )?;
        }
    }
    if yes {
        for action in &plan {
            apply(action, &mut s.redis, &s.keys, &s.pool).await?;
        }
        // Whatever still diverges after re-projection is Redis being off: rebuild it.
        let mut rebuild = Vec::new();
        for (report, _) in reports.iter_mut() {
            if !report.status.is_repairable() {
                continue;
            }
            let (now, snap) = s.measure(&report.sale_id).await?;
            if now.status == Status::Unsettled
                && let Some(action) = plan_rebuild(&s.pool, &report.sale_id, &snap, &now).await?
            {
                rebuild.push(action);
            }
        }
        write_plan(out, "Repair plan (rebuild Redis)", &rebuild, true)?;
        for action in &rebuild {
            apply(action, &mut s.redis, &s.keys, &s.pool).await?;
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
        for (report, snap) in reports.iter() {
            if !report.status.is_repairable() || report.divergence.lost_units > 0 {
                continue;
            }
            if let Some(action) = plan_rebuild(&s.pool, &report.sale_id, snap, report).await? {
                writeln!(out, "  (after re-projection, if still off) {action}")?;
            }
        }
    }

    Ok(())
}

fn write_plan(
    out: &mut impl std::io::Write,
    title: &str,
    plan: &[Action],
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
    writeln!(out, "{title} ({mode}):")?;
    for action in plan {
        writeln!(out, "  {action}")?;
    }
    Ok(())
}
