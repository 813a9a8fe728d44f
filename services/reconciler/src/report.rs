//! The reconciler's arithmetic: from one Redis snapshot and one PostgreSQL snapshot of a
//! sale, the figures it reports. Pure code, no I/O, so every rule has a unit test.
//!
//! Units out of stock in Redis must be exactly the units PostgreSQL confirmed, plus the
//! units still in flight (in the stream, neither decided nor recorded as a hold), plus
//! releases PostgreSQL decided that Redis has not applied yet, plus the units of holds
//! still `held` (taken, waiting for their confirm, cancel or expiry). More out of stock
//! than that is *lost*; less is *phantom* (PostgreSQL knows units Redis does not, e.g.
//! after Redis lost data).
//!
//! A hold still `held` past its deadline plus the grace period is *overdue*: the
//! accounting balances (its units are held), but nobody is expiring holds.

use serde::Serialize;
use yoink_core::{Position, SaleId};

use crate::error::ReconcileError;

/// Redis-side figures of a sale, read atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedisSide {
    /// False when Redis has no such sale (never created, or its data was lost).
    pub present: bool,
    pub initial: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub released: i64,
    pub stream_length: i64,
    pub dead_letters: i64,
    /// Entries delivered to a projector and not acknowledged.
    pub pending: i64,
    /// Entries not delivered yet (None when Redis cannot tell).
    pub lag: Option<i64>,
    /// Units of `reserved` entries still pending or undelivered, neither decided in
    /// PostgreSQL nor recorded there as a hold.
    pub in_flight_units: i64,
    /// The sale's position: (0, 0) when Redis holds no position for it.
    pub position: Position,
    /// Buys are suspended until Redis is rebuilt from PostgreSQL.
    pub suspended: bool,
}

/// PostgreSQL-side figures of a sale.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PostgresSide {
    /// False when PostgreSQL has no such sale.
    pub present: bool,
    pub initial_stock: i64,
    /// Units in order rows.
    pub confirmed_units: i64,
    pub orders: i64,
    /// Units whose fate is `released`.
    pub released_units: i64,
    /// The highest position PostgreSQL knows Redis reached: Redis below it went back
    /// in time.
    pub floor: Position,
    /// Reservations Redis answered in an epoch that a rebuild ended and that PostgreSQL
    /// never decided: lost with Redis's memory.
    pub lost_reservations: i64,
    /// Units of holds still `held`: out of Redis stock, waiting for their confirm,
    /// cancel or expiry.
    pub held_units: i64,
    /// Holds still `held` longer than the overdue threshold past their deadline, and
    /// their units: the expiry sweep should have released them.
    pub overdue_holds: i64,
    pub overdue_hold_units: i64,
}

/// How a sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both stores agree and nothing is in flight.
    Consistent,
    /// Both stores agree once the units in flight are counted.
    InFlight,
    /// The figures disagree (or Redis is behind PostgreSQL, or rebuilding) but may
    /// still settle within the grace period: not flagged.
    Unsettled,
    /// The stores disagree, with the same values after the grace period.
    Diverged,
    /// Redis went back behind PostgreSQL and the sale is still suspended after the
    /// grace period: no projector rebuilt it (`--repair --yes` does).
    Recovering,
    /// Holds still `held` past their deadline plus the grace period, with the figures
    /// balanced otherwise: no projector is expiring holds. Flagged; not repaired here
    /// (expiring is the projectors' job: start `yoink project`).
    HoldsOverdue,
    /// Redis answered reservations it lost before PostgreSQL saw them. Always flagged.
    DataLost,
    /// More units confirmed than the sale ever had. Always flagged.
    Oversold,
    /// Archived (`yoink sale archive`): checked from PostgreSQL alone, and its books
    /// balance (counters equal the fates, no hold waiting, nothing lost, no Redis key
    /// left).
    Archived,
    /// Archived, and its books do not balance (the report says why). Flagged; never
    /// repaired here: a repair would rebuild its Redis state. Keys left under its tag
    /// go with `yoink sale archive --id ID --yes` again.
    ArchiveUnbalanced,
}

impl Status {
    /// `--repair` has a plan for it (re-project, or rebuild Redis).
    pub fn is_repairable(self) -> bool {
        matches!(self, Status::Diverged | Status::Recovering)
    }

    pub fn is_flagged(self) -> bool {
        matches!(
            self,
            Status::Diverged
                | Status::Recovering
                | Status::HoldsOverdue
                | Status::DataLost
                | Status::Oversold
                | Status::ArchiveUnbalanced
        )
    }
}

/// The figures that must stay the same over the grace period for a divergence to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub lost_units: i64,
    pub phantom_units: i64,
    /// `initial − remaining − reserved + released` in Redis; 0 when Redis is consistent.
    pub redis_self_diff: i64,
}

impl Divergence {
    pub fn is_zero(&self) -> bool {
        self.lost_units == 0 && self.phantom_units == 0 && self.redis_self_diff == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaleReport {
    pub sale_id: SaleId,
    pub status: Status,
    /// The sale's stock by definition (PostgreSQL's, else Redis's).
    pub initial_stock: i64,
    /// confirmed − initial stock; > 0 is critical.
    pub oversold_units: i64,
    /// Units reserved in the stream and not decided in PostgreSQL yet.
    pub in_flight_units: i64,
    /// Units released in PostgreSQL not yet back in Redis stock.
    pub pending_release_units: i64,
    /// Units of holds still `held` in PostgreSQL (out of stock, accounted for).
    pub held_units: i64,
    /// Holds (and their units) still `held` past their deadline plus the grace period.
    pub overdue_holds: i64,
    pub overdue_hold_units: i64,
    #[serde(flatten)]
    pub divergence: Divergence,
    pub redis: RedisSide,
    pub postgres: PostgresSide,
    /// An archived sale: what PostgreSQL holds of it (its Redis side is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<ArchivedBooks>,
}

/// An archived sale's books, from PostgreSQL alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchivedBooks {
    /// `sales.confirmed_units` and `sales.released_units`, the counters kept with each
    /// decision: they must equal the sums of the fates (`postgres.confirmed_units`,
    /// `postgres.released_units`).
    pub confirmed_counter: i64,
    pub released_counter: i64,
    /// Units unsold when it was archived: initial − confirmed.
    pub remaining: i64,
    /// Keys of the sale still in Redis (a run stopped half-way, or a stray
    /// suspension), of those `keys.rs` names: `yoink sale archive --yes` again removes
    /// them (and any other under its tag).
    pub redis_keys_left: u64,
    /// Why the books do not balance (empty: they do).
    pub issues: Vec<String>,
}

impl SaleReport {
    /// An archived sale, judged from PostgreSQL alone: `Archived` when its books
    /// balance, `ArchiveUnbalanced` (flagged, not repairable) otherwise, `Oversold`
    /// above all.
    pub fn archived(
        sale_id: &SaleId,
        redis: RedisSide,
        postgres: PostgresSide,
        mut books: ArchivedBooks,
    ) -> Self {
        if books.confirmed_counter != postgres.confirmed_units {
            books.issues.push(format!(
                "confirmed_units counter {} but orders hold {} units",
                books.confirmed_counter, postgres.confirmed_units
            ));
        }
        if books.released_counter != postgres.released_units {
            books.issues.push(format!(
                "released_units counter {} but released fates hold {} units",
                books.released_counter, postgres.released_units
            ));
        }
        if postgres.held_units > 0 {
            books
                .issues
                .push(format!("{} units still in holds", postgres.held_units));
        }
        if postgres.lost_reservations > 0 {
            books.issues.push(format!(
                "{} reservations were lost with Redis",
                postgres.lost_reservations
            ));
        }
        if books.redis_keys_left > 0 {
            books.issues.push(format!(
                "{} Redis keys left under its tag",
                books.redis_keys_left
            ));
        }
        let oversold_units = (postgres.confirmed_units - postgres.initial_stock).max(0);
        let status = if oversold_units > 0 {
            Status::Oversold
        } else if books.issues.is_empty() {
            Status::Archived
        } else {
            Status::ArchiveUnbalanced
        };
        Self {
            sale_id: sale_id.clone(),
            status,
            initial_stock: postgres.initial_stock,
            oversold_units,
            in_flight_units: 0,
            pending_release_units: 0,
            held_units: postgres.held_units,
            overdue_holds: postgres.overdue_holds,
            overdue_hold_units: postgres.overdue_hold_units,
            divergence: Divergence {
                lost_units: 0,
                phantom_units: 0,
                redis_self_diff: 0,
            },
            redis,
            postgres,
            archived: Some(books),
        }
    }
}

impl SaleReport {
    /// The figures of one moment. `status` is `Consistent`, `InFlight`,
    /// `HoldsOverdue`, `Oversold`, `DataLost` or, when the stores disagree, `Unsettled`
    /// until `settle` confirms it.
    ///
    /// Precedence, most severe first: `Oversold`, `DataLost`, then a disagreement
    /// (`Unsettled`, which `settle` turns into `Diverged` or `Recovering`, or into
    /// `HoldsOverdue` when it moved and holds are overdue), then `HoldsOverdue`, then
    /// `InFlight`. Overdue holds alone never hide a divergence: they are accounted
    /// for (still held), so a disagreement is something else, and worse.
    pub fn compute(sale_id: &SaleId, redis: RedisSide, postgres: PostgresSide) -> Self {
        let initial_stock = if postgres.present {
            postgres.initial_stock
        } else {
            redis.initial
        };
        let pending_release = (postgres.released_units - redis.released).max(0);
        let out_of_stock = redis.initial - redis.remaining;
        let accounted = postgres.confirmed_units
            + redis.in_flight_units
            + pending_release
            + postgres.held_units;
        let diff = out_of_stock - accounted;
        let divergence = Divergence {
            lost_units: diff.max(0),
            phantom_units: (-diff).max(0),
            redis_self_diff: redis.initial - redis.remaining - redis.reserved + redis.released,
        };
        let oversold_units = (postgres.confirmed_units - initial_stock).max(0);
        let status = if oversold_units > 0 {
            Status::Oversold
        } else if postgres.lost_reservations > 0 {
            Status::DataLost
        } else if !divergence.is_zero() || redis.is_behind(&postgres) || pending_release > 0 {
            // A release PostgreSQL decided and Redis has not applied is normally a
            // dead letter between its two steps (milliseconds); one that holds still
            // was lost (its release script failed and nothing retries it).
            Status::Unsettled
        } else if postgres.overdue_holds > 0 {
            Status::HoldsOverdue
        } else if redis.in_flight_units > 0 {
            Status::InFlight
        } else {
            Status::Consistent
        };
        Self {
            sale_id: sale_id.clone(),
            status,
            initial_stock,
            oversold_units,
            in_flight_units: redis.in_flight_units,
            pending_release_units: pending_release,
            held_units: postgres.held_units,
            overdue_holds: postgres.overdue_holds,
            overdue_hold_units: postgres.overdue_hold_units,
            divergence,
            redis,
            postgres,
            archived: None,
        }
    }

    /// Called with the same sale measured `grace` later: a sale still suspended (or
    /// behind PostgreSQL) is `Recovering`; a divergence (or a release not applied) that
    /// stayed the same is confirmed (`Diverged`); one that moved stays `Unsettled`
    /// (`HoldsOverdue` if holds are overdue meanwhile: see `unconfirmed_status`).
    pub fn settle(mut self, earlier: &SaleReport) -> Self {
        if self.status == Status::Unsettled {
            self.status = if self.redis.is_behind(&self.postgres) || self.held_still_since(earlier)
            {
                self.held_status()
            } else {
                self.unconfirmed_status()
            };
        }
        self
    }

    /// What an unsettled sale reports while its disagreement is not confirmed:
    /// `HoldsOverdue` when holds are overdue (their own grace already passed, so they
    /// are flagged now, whatever the disagreement turns out to be), else `Unsettled`.
    pub fn unconfirmed_status(&self) -> Status {
        if self.overdue_holds > 0 {
            Status::HoldsOverdue
        } else {
            Status::Unsettled
        }
    }

    /// The figures that must not move for a divergence to count are those of `earlier`.
    pub fn held_still_since(&self, earlier: &SaleReport) -> bool {
        self.divergence == earlier.divergence
            && self.pending_release_units == earlier.pending_release_units
    }

    /// What an unsettled sale is once it held for the grace period.
    pub fn held_status(&self) -> Status {
        if self.redis.is_behind(&self.postgres) {
            Status::Recovering
        } else {
            Status::Diverged
        }
    }
}

impl RedisSide {
    /// Redis is suspended, or below a position PostgreSQL knows it reached.
    pub fn is_behind(&self, postgres: &PostgresSide) -> bool {
        self.suspended || self.position < postgres.floor
    }
}

/// A readable table, or one JSON object per line.
pub fn render(
    out: &mut impl std::io::Write,
    reports: &[SaleReport],
    json: bool,
) -> Result<(), ReconcileError> {
    if json {
        for r in reports {
            let line = serde_json::to_string(r)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
        "SALE",
        "STATUS",
        "INITIAL",
        "REMAIN",
        "CONFIRM",
        "RELEASE",
        "HELD",
        "INFLIGHT",
        "LOST",
        "PHANTOM",
        "OVERSLD",
        "PENDING",
        "DEAD"
    )?;
    for r in reports {
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(books) = &r.archived {
            writeln!(
                out,
                "{:<24} {:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
                r.sale_id,
                status,
                r.initial_stock,
                books.remaining,
                r.postgres.confirmed_units,
                r.postgres.released_units,
                r.held_units,
                0,
                0,
                0,
                r.oversold_units,
                "-",
                "-"
            )?;
            for issue in &books.issues {
                writeln!(out, "  ! archived sale: {issue}")?;
            }
            continue;
        }
        writeln!(
            out,
            "{:<24} {:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
            r.sale_id,
            status,
            r.initial_stock,
            r.redis.remaining,
            r.postgres.confirmed_units,
            r.postgres.released_units,
            r.held_units,
            r.in_flight_units,
            r.divergence.lost_units,
            r.divergence.phantom_units,
            r.oversold_units,
            r.redis.pending,
            r.redis.dead_letters
        )?;
        if r.redis.is_behind(&r.postgres) {
            writeln!(
                out,
                "  ! Redis went back behind PostgreSQL (Redis at {}, PostgreSQL saw {}): buys are suspended until it is rebuilt",
                r.redis.position, r.postgres.floor
            )?;
        }
        if r.postgres.lost_reservations > 0 {
            writeln!(
                out,
                "  ! {} reservation(s) answered 202 were lost with Redis before PostgreSQL saw them",
                r.postgres.lost_reservations
            )?;
        }
        if r.overdue_holds > 0 {
            writeln!(
                out,
                "  ! {} hold(s) ({} units) still held past their deadline plus the grace period: no projector is expiring holds: start `yoink project`",
                r.overdue_holds, r.overdue_hold_units
            )?;
        }
        if r.divergence.redis_self_diff != 0 {
            writeln!(
                out,
                "  ! Redis inconsistent: initial - remaining - reserved + released = {}",
                r.divergence.redis_self_diff
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(
        initial: i64,
        remaining: i64,
        reserved: i64,
        released: i64,
        in_flight: i64,
    ) -> RedisSide {
        RedisSide {
            present: true,
            initial,
            remaining,
            reserved,
            released,
            in_flight_units: in_flight,
            position: Position::new(1, reserved),
            ..RedisSide::default()
        }
    }

    fn sale() -> SaleId {
        SaleId::parse("s").expect("valid id")
    }

    fn pg(initial: i64, confirmed: i64, released: i64) -> PostgresSide {
        PostgresSide {
            present: true,
            initial_stock: initial,
            confirmed_units: confirmed,
            orders: confirmed,
            released_units: released,
            floor: Position::new(1, 0),
            lost_reservations: 0,
            held_units: 0,
            overdue_holds: 0,
            overdue_hold_units: 0,
        }
    }

    /// `pg` with `held` units in holds still `held`, `overdue` of them (one unit each)
    /// past their deadline plus the grace period.
    fn pg_holds(
        initial: i64,
        confirmed: i64,
        released: i64,
        held: i64,
        overdue: i64,
    ) -> PostgresSide {
        PostgresSide {
            held_units: held,
            overdue_holds: overdue,
            overdue_hold_units: overdue,
            ..pg(initial, confirmed, released)
        }
    }

    #[test]
    fn an_archived_sale_balances_from_postgresql_alone() {
        let books = |confirmed, released, keys| ArchivedBooks {
            confirmed_counter: confirmed,
            released_counter: released,
            remaining: 0,
            redis_keys_left: keys,
            issues: Vec::new(),
        };
        let gone = RedisSide::default();
        let r = SaleReport::archived(&sale(), gone.clone(), pg(500, 480, 20), books(480, 20, 0));
        assert_eq!(r.status, Status::Archived);
        assert!(!r.status.is_flagged() && !r.status.is_repairable());
        let r = SaleReport::archived(&sale(), gone.clone(), pg(500, 480, 20), books(481, 20, 0));
        assert_eq!(r.status, Status::ArchiveUnbalanced);
        assert!(r.status.is_flagged() && !r.status.is_repairable());
        let r = SaleReport::archived(&sale(), gone, pg(500, 480, 20), books(480, 20, 2));
        assert_eq!(r.status, Status::ArchiveUnbalanced);
        assert!(r.archived.expect("books").issues[0].contains("2 Redis keys"));
    }

    #[test]
    fn a_drained_sale_is_consistent() {
        let r = SaleReport::compute(&sale(), redis(500, 0, 500, 0, 0), pg(500, 500, 0));
        assert_eq!(r.status, Status::Consistent);
        assert!(r.divergence.is_zero());
    }

    #[test]
    fn a_backlog_is_in_flight_not_divergence() {
        let r = SaleReport::compute(&sale(), redis(500, 0, 500, 0, 300), pg(500, 200, 0));
        assert_eq!(r.status, Status::InFlight);
        assert_eq!(r.in_flight_units, 300);
    }

    #[test]
    fn a_released_unit_back_on_sale_balances() {
        // 10 taken, 3 released (back in stock), 7 confirmed.
        let r = SaleReport::compute(&sale(), redis(10, 3, 10, 3, 0), pg(10, 7, 3));
        assert_eq!(r.status, Status::Consistent, "{r:?}");
        // PostgreSQL released 3 that Redis has not given back yet: a dead letter
        // between its two steps, or one whose release script failed for good.
        let first = SaleReport::compute(&sale(), redis(10, 0, 10, 0, 0), pg(10, 7, 3));
        assert_eq!(first.status, Status::Unsettled);
        assert_eq!(first.pending_release_units, 3);
        assert!(first.divergence.is_zero(), "the units are accounted for");
        let still = SaleReport::compute(&sale(), redis(10, 0, 10, 0, 0), pg(10, 7, 3));
        let settled = still.settle(&first);
        assert_eq!(settled.status, Status::Diverged, "held still: flagged");
        assert!(settled.status.is_repairable());
        let applied = SaleReport::compute(&sale(), redis(10, 3, 10, 3, 0), pg(10, 7, 3));
        assert_eq!(applied.settle(&first).status, Status::Consistent);
    }

    #[test]
    fn a_decrement_without_an_event_is_one_lost_unit() {
        let r = SaleReport::compute(&sale(), redis(500, 499 - 100, 100, 0, 0), pg(500, 100, 0));
        assert_eq!(r.divergence.lost_units, 1);
        assert_eq!(r.divergence.redis_self_diff, 1);
        assert_eq!(r.status, Status::Unsettled);
    }

    #[test]
    fn a_deleted_order_is_lost_units() {
        let r = SaleReport::compute(&sale(), redis(500, 0, 500, 0, 0), pg(500, 498, 0));
        assert_eq!(r.divergence.lost_units, 2);
        assert_eq!(r.divergence.phantom_units, 0);
    }

    #[test]
    fn redis_that_lost_its_data_shows_phantom_units() {
        let r = SaleReport::compute(&sale(), RedisSide::default(), pg(500, 120, 0));
        assert_eq!(r.divergence.phantom_units, 120);
        assert_eq!(r.divergence.lost_units, 0);
        assert_eq!(r.initial_stock, 500, "PostgreSQL's definition wins");
    }

    #[test]
    fn more_confirmed_than_stocked_is_oversold_and_always_flagged() {
        let r = SaleReport::compute(&sale(), redis(10, 0, 10, 0, 0), pg(10, 12, 0));
        assert_eq!(r.oversold_units, 2);
        assert_eq!(r.status, Status::Oversold);
        assert!(r.status.is_flagged());
    }

    #[test]
    fn redis_behind_postgres_is_flagged_only_if_nobody_rebuilds_it_within_the_grace() {
        let mut behind_pg = pg(500, 120, 0);
        behind_pg.floor = Position::new(1, 120);
        let rolled_back = redis(500, 440, 60, 0, 0);
        let first = SaleReport::compute(&sale(), rolled_back.clone(), behind_pg.clone());
        assert_eq!(first.status, Status::Unsettled);
        let still = SaleReport::compute(&sale(), rolled_back, behind_pg.clone());
        assert_eq!(still.settle(&first).status, Status::Recovering);
        assert!(Status::Recovering.is_flagged());
        // Rebuilt meanwhile: a new epoch, the stock PostgreSQL's ledger gives.
        let mut rebuilt = redis(500, 380, 120, 0, 0);
        rebuilt.position = Position::new(2, 0);
        let after = SaleReport::compute(&sale(), rebuilt, behind_pg);
        assert_eq!(after.status, Status::Consistent);
    }

    #[test]
    fn reservations_lost_with_redis_are_always_flagged() {
        let mut lost = pg(500, 100, 0);
        lost.lost_reservations = 7;
        let r = SaleReport::compute(&sale(), redis(500, 400, 100, 0, 0), lost);
        assert_eq!(r.status, Status::DataLost);
        assert!(r.status.is_flagged());
    }

    #[test]
    fn a_divergence_counts_only_when_it_holds_still() {
        let first = SaleReport::compute(&sale(), redis(500, 399, 100, 0, 0), pg(500, 100, 0));
        let same = SaleReport::compute(&sale(), redis(500, 399, 100, 0, 0), pg(500, 100, 0));
        assert_eq!(same.settle(&first).status, Status::Diverged);
        let moved = SaleReport::compute(&sale(), redis(500, 398, 101, 0, 0), pg(500, 100, 0));
        assert_eq!(moved.settle(&first).status, Status::Unsettled);
    }

    #[test]
    fn held_units_are_accounted_for_not_lost() {
        // 6 units taken: 2 confirmed, 4 held for payment.
        let r = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), pg_holds(10, 2, 0, 4, 0));
        assert_eq!(r.status, Status::Consistent, "{r:?}");
        assert_eq!(r.held_units, 4);
        assert!(r.divergence.is_zero());
        // The same Redis, had the holds not been counted: 4 lost units.
        let uncounted = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), pg(10, 2, 0));
        assert_eq!(uncounted.divergence.lost_units, 4);
    }

    #[test]
    fn holds_and_a_backlog_together_are_in_flight() {
        // 7 taken: 2 confirmed, 4 held, 1 still in the stream (not recorded yet).
        let r = SaleReport::compute(&sale(), redis(10, 3, 7, 0, 1), pg_holds(10, 2, 0, 4, 0));
        assert_eq!(r.status, Status::InFlight, "{r:?}");
        assert_eq!(r.in_flight_units, 1);
        assert_eq!(r.held_units, 4);
    }

    #[test]
    fn an_expired_hold_balances_before_and_after_redis_gives_its_units_back() {
        // 6 taken: 2 confirmed, 2 held, 2 expired in PostgreSQL.
        let before = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), pg_holds(10, 2, 2, 2, 0));
        assert!(before.divergence.is_zero(), "{before:?}");
        assert_eq!(before.pending_release_units, 2);
        assert_eq!(
            before.status,
            Status::Unsettled,
            "a release not applied yet"
        );
        let after = SaleReport::compute(&sale(), redis(10, 6, 6, 2, 0), pg_holds(10, 2, 2, 2, 0));
        assert_eq!(after.status, Status::Consistent, "{after:?}");
        assert_eq!(after.settle(&before).status, Status::Consistent);
    }

    #[test]
    fn holds_left_past_their_deadline_are_flagged_on_their_own() {
        let r = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), pg_holds(10, 2, 0, 4, 3));
        assert_eq!(r.status, Status::HoldsOverdue, "{r:?}");
        assert!(
            r.divergence.is_zero(),
            "overdue holds are still accounted for"
        );
        assert_eq!((r.overdue_holds, r.overdue_hold_units), (3, 3));
        assert!(r.status.is_flagged());
        assert!(!r.status.is_repairable(), "expiring is the projectors' job");
        // Also with a backlog in flight: overdue is the flag.
        let busy = SaleReport::compute(&sale(), redis(10, 3, 7, 0, 1), pg_holds(10, 2, 0, 4, 3));
        assert_eq!(busy.status, Status::HoldsOverdue);
    }

    #[test]
    fn oversold_data_lost_diverged_and_recovering_win_over_overdue_holds() {
        let oversold =
            SaleReport::compute(&sale(), redis(10, 0, 10, 0, 0), pg_holds(10, 12, 0, 1, 1));
        assert_eq!(oversold.status, Status::Oversold);

        let mut lost = pg_holds(10, 2, 0, 4, 1);
        lost.lost_reservations = 1;
        let data_lost = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), lost);
        assert_eq!(data_lost.status, Status::DataLost);

        // One unit taken without an event, and an overdue hold: held still, diverged.
        let first = SaleReport::compute(&sale(), redis(10, 3, 6, 0, 0), pg_holds(10, 2, 0, 4, 1));
        assert_eq!(
            first.status,
            Status::Unsettled,
            "checked again after the grace"
        );
        let same = SaleReport::compute(&sale(), redis(10, 3, 6, 0, 0), pg_holds(10, 2, 0, 4, 1));
        assert_eq!(same.settle(&first).status, Status::Diverged);
        // It moved meanwhile: not confirmed, but the overdue holds are flagged anyway.
        let moved = SaleReport::compute(&sale(), redis(10, 2, 7, 0, 0), pg_holds(10, 2, 0, 4, 1));
        assert_eq!(moved.settle(&first).status, Status::HoldsOverdue);
        let moved_no_holds = SaleReport::compute(&sale(), redis(10, 2, 7, 0, 0), pg(10, 6, 0));
        assert_eq!(moved_no_holds.settle(&first).status, Status::Unsettled);

        let mut behind = pg_holds(10, 2, 0, 4, 1);
        behind.floor = Position::new(1, 100);
        let first = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), behind.clone());
        let still = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), behind);
        assert_eq!(still.settle(&first).status, Status::Recovering);
    }

    #[test]
    fn the_report_shows_held_units_and_overdue_holds() {
        let r = SaleReport::compute(&sale(), redis(10, 4, 6, 0, 0), pg_holds(10, 2, 0, 4, 3));
        let mut json = Vec::new();
        render(&mut json, std::slice::from_ref(&r), true).expect("render");
        let line: serde_json::Value = serde_json::from_slice(&json).expect("one JSON object");
        assert_eq!(line["status"], "holds_overdue");
        assert_eq!(line["held_units"], 4);
        assert_eq!(line["overdue_holds"], 3);
        assert_eq!(line["overdue_hold_units"], 3);
        assert_eq!(line["postgres"]["held_units"], 4);

        let mut text = Vec::new();
        render(&mut text, &[r], false).expect("render");
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(text.contains("HELD"), "{text}");
        assert!(text.contains("holds_overdue"), "{text}");
        assert!(
            text.contains("3 hold(s) (3 units) still held past their deadline"),
            "{text}"
        );
        assert!(text.contains("start `yoink project`"), "{text}");
    }
}
