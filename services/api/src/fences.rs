//! This API instance's memory of where each sale's Redis state has been: the floor it
//! passes to every reserve call, so a Redis that went back in time (restart from an old
//! snapshot, restore, failover to a lagging replica, FLUSHALL) suspends the sale on the
//! first buy instead of selling units PostgreSQL already sold.
//!
//! The floor of a sale is the highest of: every position a reserve reply carried, and
//! PostgreSQL's floor (refreshed every second, so a freshly started instance knows it
//! too). Positions Redis handed out are flushed to PostgreSQL, so reservations answered
//! 202 and lost with Redis before any projector saw them are counted, not silent.
//! A floor only ever rises; nothing here touches the `/buy` path beyond two short
//! lock sections.
//!
//! An archived sale (`yoink sale archive`) has no floor: its Redis state was removed on
//! purpose, and checking it against a floor would suspend it (a key under its emptied
//! tag) for a projector to rebuild. Archives are read from PostgreSQL on each refresh,
//! and `/buy` answers `sale_closed` for them without asking Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use yoink_core::scripts::{self, Fence};
use yoink_core::{Position, SaleId, archive, epochs, telemetry};

use crate::state::AppState;

#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// Highest position seen anywhere (Redis replies, PostgreSQL).
    floor: Position,
    /// Highest position Redis itself handed to this instance.
    seen: Position,
    /// `seen` as last written to PostgreSQL.
    flushed: Position,
}

/// Floors per sale (only sales that exist: entries come from successful reserve
/// replies and from PostgreSQL).
#[derive(Debug, Default)]
pub struct Fences {
    watched: Mutex<Watched>,
    /// The newest `archived_at` read (epoch ms): the next refresh reads from there.
    archives_read_ms: AtomicI64,
}

/// Re-read this much before the newest archive seen: `archived_at` is its
/// transaction's start, so an archive may commit after a later one was read.
const ARCHIVE_OVERLAP_MS: i64 = 60_000;

/// Behind one lock, so `/buy` learns both in one section.
#[derive(Debug, Default)]
struct Watched {
    known: HashMap<SaleId, Known>,
    archived: HashSet<SaleId>,
}

impl Fences {
    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        // A panic while holding this lock cannot leave a floor half-written (each
        // update is one assignment), so a poisoned map is still right.
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The floor of `sale` (0.0 when archived or unknown).
    #[cfg(test)]
    fn floor(&self, sale: &SaleId) -> Position {
        self.watched()
            .known
            .get(sale)
            .map_or(Position::ZERO, |k| k.floor)
    }

    /// The floor for a reserve call, or `None` when the sale was archived (no reserve
    /// call at all: Redis holds nothing of it and must not get anything back). One
    /// lock section.
    pub fn floor_unless_archived(&self, sale: &SaleId) -> Option<Position> {
        let watched = self.watched();
        if watched.archived.contains(sale) {
            return None;
        }
        Some(watched.known.get(sale).map_or(Position::ZERO, |k| k.floor))
    }

    /// These sales were archived: their floors are forgotten, for good.
    fn archived(&self, sales: &[(SaleId, i64)]) {
        if let Some(newest) = sales.iter().map(|(_, at)| *at).max() {
            self.archives_read_ms.fetch_max(newest, Ordering::Relaxed);
        }
        let mut watched = self.watched();
        for (sale, _) in sales {
            watched.known.remove(sale);
            watched.archived.insert(sale.clone());
        }
    }

    /// Redis answered with `position` for `sale`: it has been there. True the first
    /// time this instance hears of `sale`.
    pub fn saw(&self, sale: &SaleId, position: Position) -> bool {
        let mut watched = self.watched();
        let known = &mut watched.known;
        if let Some(k) = known.get_mut(sale) {
            k.seen = k.seen.max(position);
            k.floor = k.floor.max(position);
            return false;
        }
        known.insert(
            sale.clone(),
            Known {
                floor: position,
                seen: position,
                flushed: Position::ZERO,
            },
        );
        true
    }

    /// PostgreSQL says Redis reached `floor` for `sale`.
    fn raise(&self, sale: SaleId, floor: Position) {
        let mut watched = self.watched();
        if watched.archived.contains(&sale) {
            return;
        }
        let k = watched.known.entry(sale).or_default();
        k.floor = k.floor.max(floor);
    }

    fn unflushed(&self) -> Vec<(SaleId, Position)> {
        self.watched()
            .known
            .iter()
            .filter(|(_, k)| k.seen > k.flushed)
            .map(|(s, k)| (s.clone(), k.seen))
            .collect()
    }

    fn flushed(&self, written: &[(SaleId, Position)]) {
        let mut watched = self.watched();
        let known = &mut watched.known;
        for (sale, position) in written {
            if let Some(k) = known.get_mut(sale) {
                k.flushed = k.flushed.max(*position);
            }
        }
    }

    fn floors(&self) -> Vec<(SaleId, Position)> {
        self.watched()
            .known
            .iter()
            .map(|(s, k)| (s.clone(), k.floor))
            .collect()
    }
}

/// Raises the floors from PostgreSQL and flushes the positions Redis handed out; the
/// sales read on the way keep the sale index complete (`sale_index`).
pub async fn refresh(state: &AppState) -> Result<(), String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    // Archives first: a floor of an archived sale is never raised again.
    let since = state.fences.archives_read_ms.load(Ordering::Relaxed) - ARCHIVE_OVERLAP_MS;
    let archived = archive::archived_since(&client, since.max(0))
        .await
        .map_err(|e| e.to_string())?;
    state.fences.archived(&archived);
    let floors = epochs::active_floors(&client)
        .await
        .map_err(|e| e.to_string())?;
    state.sale_index.learn(floors.iter().map(|(sale, _)| sale));
    for (sale, floor) in floors {
        state.fences.raise(sale, floor);
    }
    state
        .sale_index
        .load_all(&client)
        .await
        .map_err(|e| e.to_string())?;
    let issued = state.fences.unflushed();
    epochs::record_issued(&client, &issued)
        .await
        .map_err(|e| e.to_string())?;
    state.fences.flushed(&issued);
    Ok(())
}

/// Every `every`: `refresh`, then check each known sale's Redis against its floor
/// (suspending a sale whose Redis went back even when nobody is buying). Runs until
/// `stop` turns true; a store that is down only skips its part of a round.
pub async fn watch(state: AppState, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut postgres_down = false;
    loop {
        match refresh(&state).await {
            Ok(()) if postgres_down => {
                postgres_down = false;
                tracing::info!("Sale floors are read from PostgreSQL again.");
            }
            Err(err) if !postgres_down => {
                postgres_down = true;
                tracing::warn!(error = %err, "Cannot read sale floors from PostgreSQL; using what this instance saw.");
            }
            _ => {}
        }
        check_redis(&state).await;
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            _ = stop.changed() => return,
        }
    }
}

async fn check_redis(state: &AppState) {
    for (sale, floor) in state.fences.floors() {
        let mut redis = state.redis.clone();
        let checked = tokio::time::timeout(
            state.redis_timeout,
            scripts::fence(&mut redis, &state.keys, &sale, floor, "api", false),
        )
        .await;
        if let Ok(Ok(Fence::Suspended {
            now: true, reason, ..
        })) = checked
        {
            telemetry::rollback_detected(&sale, "api");
            tracing::error!(sale_id = %sale, reason = %reason, "Redis went back in time: sale suspended until it is rebuilt from PostgreSQL.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(id: &str) -> SaleId {
        SaleId::parse(id).expect("valid id")
    }

    #[test]
    fn a_floor_only_rises() {
        let fences = Fences::default();
        assert_eq!(fences.floor(&sale("s")), Position::ZERO);
        fences.saw(&sale("s"), Position::new(1, 10));
        fences.saw(&sale("s"), Position::new(1, 4));
        assert_eq!(fences.floor(&sale("s")), Position::new(1, 10));
        fences.raise(sale("s"), Position::new(1, 7));
        assert_eq!(fences.floor(&sale("s")), Position::new(1, 10));
        fences.raise(sale("s"), Position::new(2, 0));
        assert_eq!(fences.floor(&sale("s")), Position::new(2, 0));
        assert_eq!(fences.floor(&sale("other")), Position::ZERO);
    }

    #[test]
    fn an_archived_sale_has_no_floor_and_never_gets_one_back() {
        let fences = Fences::default();
        fences.saw(&sale("s"), Position::new(1, 10));
        fences.archived(&[(sale("s"), 1_000)]);
        assert_eq!(fences.floor_unless_archived(&sale("s")), None);
        assert!(
            fences.floors().is_empty(),
            "never checked against Redis again"
        );
        fences.raise(sale("s"), Position::new(1, 12));
        assert_eq!(fences.floor_unless_archived(&sale("s")), None);
        assert_eq!(
            fences.floor_unless_archived(&sale("other")),
            Some(Position::ZERO)
        );
    }

    #[test]
    fn only_positions_redis_handed_out_are_flushed_and_only_once() {
        let fences = Fences::default();
        fences.raise(sale("from-pg"), Position::new(3, 0));
        fences.saw(&sale("s"), Position::new(1, 5));
        let unflushed = fences.unflushed();
        assert_eq!(unflushed, vec![(sale("s"), Position::new(1, 5))]);
        fences.flushed(&unflushed);
        assert!(fences.unflushed().is_empty());
        fences.saw(&sale("s"), Position::new(1, 6));
        assert_eq!(fences.unflushed(), vec![(sale("s"), Position::new(1, 6))]);
    }
}
