//! `yoink dlq replay`: project a dead letter again once its cause is fixed, with the
//! ledger the projectors use, so a reservation becomes at most one order however often
//! it is replayed.
//!
//! Per entry, two steps, in this order:
//! 1. `decide`: read PostgreSQL's fate; unless it is final, count the attempt in Redis
//!    (`{sale:ID}:dead:replays`, before the attempt, so a crash mid-attempt still
//!    counts), then project the entry in one PostgreSQL transaction.
//! 2. `settle`: only after that commit, remove a resolved entry's copies from the dead
//!    stream and its counter.
//!
//! A kill between the two leaves the entry in the dead stream with its order written;
//! the next replay finds the order (`already_confirmed`) and removes it: resumable,
//! never doubled. Never project a reservation PostgreSQL released (it cannot become an
//! order), nor one whose units Redis does not hold taken (an order for units back on
//! sale would sell them twice), nor anything while the sale is suspended.

use std::collections::{BTreeMap, HashMap};

use redis::AsyncCommands;
use serde::Serialize;
use yoink_core::events::{Reserved, SaleEvent};
use yoink_core::scripts::ReservationRecord;
use yoink_core::{ReservationId, SaleId, holds, ledger};

use crate::Dlq;
use crate::entry::{DeadLetter, EntryRef, EventReader};
use crate::error::{DlqError, exit};
use crate::fate::{self, Fate};
use crate::scan::{self, Pager};

/// What replaying one dead letter did (or, with `--dry-run`, would do). A closed set:
/// scripts branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Projected now: the order is written (a hold: recorded, waiting for its confirm).
    /// Removed from the dead stream.
    Projected,
    /// PostgreSQL already has it (an order; a hold recorded): nothing written. Removed
    /// from the dead stream.
    AlreadyConfirmed,
    /// Refused: PostgreSQL released the reservation, for good (its units went back on
    /// sale); it cannot become an order. Stays until purged.
    ReleasedFinal,
    /// Tried, and failed again (the entry still does not read, PostgreSQL refused it
    /// again, or Redis does not hold its units); its replay count went up. Stays.
    StillFailing,
    /// Not tried: replayed `--max-replays` times already. Stays.
    LoopGuard,
    /// A dead-lettered event that is not a reservation (`released`, `confirmed`,
    /// `extended`): written after PostgreSQL decided, nothing to project. Stays until
    /// purged.
    NotAReservation,
}

impl Outcome {
    /// PostgreSQL holds what the entry stands for: its copies leave the dead stream.
    pub fn is_resolved(self) -> bool {
        matches!(self, Outcome::Projected | Outcome::AlreadyConfirmed)
    }

    /// Needs the operator still (exit 1).
    pub fn is_unresolved(self) -> bool {
        matches!(
            self,
            Outcome::ReleasedFinal | Outcome::StillFailing | Outcome::LoopGuard
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Projected => "projected",
            Outcome::AlreadyConfirmed => "already_confirmed",
            Outcome::ReleasedFinal => "released_final",
            Outcome::StillFailing => "still_failing",
            Outcome::LoopGuard => "loop_guard",
            Outcome::NotAReservation => "not_a_reservation",
        }
    }
}

/// How to replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Attempts allowed per entry (the loop guard), counted across runs.
    pub max_replays: u64,
    /// Decide everything, write nothing: PostgreSQL's part runs and is rolled back, so
    /// a refusal shows.
    pub dry_run: bool,
    /// How the entries are read: `SaleEvent::from_fields` (this version), or a newer
    /// reader that understands what this one did not.
    pub read: EventReader,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            max_replays: 3,
            dry_run: false,
            read: SaleEvent::from_fields,
        }
    }
}

/// One dead letter replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub entry: String,
    pub sale_id: SaleId,
    pub original_id: String,
    /// Its copies in the dead stream (those seen in this run).
    pub copies: Vec<String>,
    pub reservation_id: Option<ReservationId>,
    pub outcome: Outcome,
    /// Why, in words.
    pub detail: String,
    /// Attempts counted for it so far (this one included).
    pub replays: u64,
    /// True when its copies were removed from the dead stream.
    pub removed: bool,
}

/// What a replay run did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub entries: Vec<Replayed>,
    pub counts: BTreeMap<Outcome, u64>,
    /// True when `--limit` stopped it before the end of the dead streams.
    pub truncated: bool,
    /// 0 when every entry is resolved or had nothing to do, 1 otherwise.
    pub exit_code: i32,
}

impl ReplayReport {
    fn new(dry_run: bool, entries: Vec<Replayed>, truncated: bool) -> Self {
        let mut counts = BTreeMap::new();
        for e in &entries {
            *counts.entry(e.outcome).or_default() += 1;
        }
        let exit_code = if entries.iter().any(|e| e.outcome.is_unresolved()) {
            exit::UNRESOLVED
        } else {
            exit::DONE
        };
        Self {
            dry_run,
            entries,
            counts,
            truncated,
            exit_code,
        }
    }
}

/// Replays the dead letter `entry` names (all its copies).
pub async fn replay_entry(
    dlq: &mut Dlq,
    entry: &EntryRef,
    options: &ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    let letter = scan::find(dlq, entry).await?;
    let mut replayed = decide(dlq, &letter, options).await?;
    settle(dlq, &mut replayed, options).await?;
    Ok(ReplayReport::new(options.dry_run, vec![replayed], false))
}

/// Replays every dead letter of `sale` (or of every sale), oldest first, at most
/// `limit` of them. A later copy of an entry resolved in this run is removed with it.
pub async fn replay_all(
    dlq: &mut Dlq,
    sale: Option<&str>,
    limit: usize,
    options: &ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    let sales = scan::sales(dlq, sale).await?;
    let now = scan::now_ms(dlq).await?;
    let mut done: Vec<Replayed> = Vec::new();
    let mut truncated = false;
    'sales: for sale in &sales {
        let stream = dlq.keys.dead_letters(sale);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut pager = Pager::new(stream.clone(), "-", "+");
        loop {
            let page = pager.next(dlq).await?;
            if page.is_empty() {
                break;
            }
            for copy in page {
                let original = scan::original_id(&copy);
                if let Some(&at) = seen.get(&original) {
                    let earlier = &mut done[at];
                    earlier.copies.push(copy.id.clone());
                    if earlier.removed {
                        let _: usize = dlq.redis.xdel(&stream, &[&copy.id]).await?;
                    }
                    continue;
                }
                if done.len() >= limit {
                    truncated = true;
                    break 'sales;
                }
                let letter = DeadLetter::from_copy(sale, copy, now);
                let mut replayed = decide(dlq, &letter, options).await?;
                settle(dlq, &mut replayed, options).await?;
                seen.insert(original, done.len());
                done.push(replayed);
            }
        }
    }
    Ok(ReplayReport::new(options.dry_run, done, truncated))
}

/// Step 1: decides `letter`'s outcome and writes PostgreSQL's part (committed, unless
/// `dry_run`); never touches the dead stream. Public so a test can stop here, as a kill
/// between the commit and the removal would.
pub async fn decide(
    dlq: &mut Dlq,
    letter: &DeadLetter,
    options: &ReplayOptions,
) -> Result<Replayed, DlqError> {
    let replays_key = dlq.keys.dead_letter_replays(&letter.sale_id);
    let count: Option<u64> = dlq.redis.hget(&replays_key, &letter.original_id).await?;
    let mut replayed = Replayed {
        entry: letter.entry.clone(),
        sale_id: letter.sale_id.clone(),
        original_id: letter.original_id.clone(),
        copies: letter.copies.clone(),
        reservation_id: letter.reservation_id,
        outcome: Outcome::StillFailing,
        detail: String::new(),
        replays: count.unwrap_or(0),
        removed: false,
    };
    let outcome = |r: &mut Replayed, outcome, detail: String| {
        r.outcome = outcome;
        r.detail = detail;
    };
    let event = match letter.event(options.read) {
        Ok(SaleEvent::Reserved(r)) => {
            replayed.reservation_id = Some(r.reservation_id);
            Ok(r)
        }
        Ok(_) => {
            let kind = letter.event_type.as_deref().unwrap_or("?");
            let detail =
                format!("a `{kind}` event: written after PostgreSQL decided, nothing to project");
            outcome(&mut replayed, Outcome::NotAReservation, detail);
            return Ok(replayed);
        }
        Err(err) => Err(err),
    };
    // PostgreSQL's word first: a decided reservation is never attempted again.
    if let Some(id) = replayed.reservation_id {
        let known = fate::of(&dlq.pool.get().await?, id).await?;
        if let Some((result, detail)) = decided(&known) {
            outcome(&mut replayed, result, detail);
            return Ok(replayed);
        }
    }
    if replayed.replays >= options.max_replays {
        let detail = format!(
            "replayed {} times already (--max-replays {}): fix its cause, then raise \
             --max-replays, or purge it",
            replayed.replays, options.max_replays
        );
        outcome(&mut replayed, Outcome::LoopGuard, detail);
        return Ok(replayed);
    }
    // Transient, so not an attempt: nothing may be projected until the rebuild is done.
    let suspended: Option<String> = dlq
        .redis
        .hget(dlq.keys.meta(&letter.sale_id), "suspended")
        .await?;
    if suspended.is_some() {
        return Err(DlqError::SaleSuspended(letter.sale_id.clone()));
    }
    if !options.dry_run {
        // Counted before the attempt, atomically: a crash mid-attempt still counts, and
        // two replays racing cannot both pass the bound.
        let now: u64 = dlq
            .redis
            .hincr(&replays_key, &letter.original_id, 1)
            .await?;
        if now > options.max_replays {
            let _: i64 = dlq
                .redis
                .hincr(&replays_key, &letter.original_id, -1)
                .await?;
            replayed.replays = now - 1;
            let detail = format!(
                "another replay reached --max-replays {}",
                options.max_replays
            );
            outcome(&mut replayed, Outcome::LoopGuard, detail);
            return Ok(replayed);
        }
        replayed.replays = now;
    }
    let reserved = match event {
        Ok(r) => r,
        Err(err) => {
            let detail = format!("still unreadable: malformed event: {err}");
            outcome(&mut replayed, Outcome::StillFailing, detail);
            return Ok(replayed);
        }
    };
    if let Some(why) = units_not_held(dlq, letter, &reserved).await? {
        outcome(&mut replayed, Outcome::StillFailing, why);
        return Ok(replayed);
    }
    let (result, detail) = project(dlq, &letter.original_id, &reserved, options.dry_run).await?;
    outcome(&mut replayed, result, detail);
    Ok(replayed)
}

/// Step 2: removes a resolved entry's copies from the dead stream, and its replay
/// counter, after step 1 committed. Nothing for any other outcome, or a dry run.
pub async fn settle(
    dlq: &mut Dlq,
    replayed: &mut Replayed,
    options: &ReplayOptions,
) -> Result<(), DlqError> {
    if options.dry_run || !replayed.outcome.is_resolved() {
        return Ok(());
    }
    let stream = dlq.keys.dead_letters(&replayed.sale_id);
    let _: usize = dlq.redis.xdel(&stream, &replayed.copies).await?;
    let _: usize = dlq
        .redis
        .hdel(
            dlq.keys.dead_letter_replays(&replayed.sale_id),
            &replayed.original_id,
        )
        .await?;
    replayed.removed = true;
    Ok(())
}

/// The outcome a fate PostgreSQL decided gives, if it decided one.
fn decided(known: &Fate) -> Option<(Outcome, String)> {
    match known {
        Fate::None => None,
        Fate::Confirmed { order_id } => Some((
            Outcome::AlreadyConfirmed,
            match order_id {
                Some(id) => format!("already an order ({id}): nothing written"),
                None => "already confirmed: nothing written".to_owned(),
            },
        )),
        Fate::Held { .. } => Some((
            Outcome::AlreadyConfirmed,
            "already recorded as a hold, waiting for its confirm: nothing written".to_owned(),
        )),
        Fate::Released { reason } => Some((
            Outcome::ReleasedFinal,
            format!(
                "refused: PostgreSQL released this reservation for good ({reason}); its \
                 units went back on sale and it cannot become an order. Purge the entry \
                 once seen"
            ),
        )),
    }
}

/// Why an order now would be wrong on the Redis side, if it would: the entry belongs
/// to another sale, or Redis does not hold this reservation's units taken (released,
/// or gone with a rebuild that put them back on sale), so an order would sell them
/// twice.
async fn units_not_held(
    dlq: &mut Dlq,
    letter: &DeadLetter,
    reserved: &Reserved,
) -> Result<Option<String>, DlqError> {
    let sale = &letter.sale_id;
    if reserved.sale_id != *sale {
        return Ok(Some(format!(
            "the entry names sale {} but was dead-lettered in sale {sale}",
            reserved.sale_id
        )));
    }
    let record: Option<String> = dlq
        .redis
        .hget(
            dlq.keys.reservations(sale),
            reserved.reservation_id.to_string(),
        )
        .await?;
    let why = match record.as_deref().map(ReservationRecord::parse) {
        None => "Redis has no record of this reservation",
        Some(None) => "Redis's record of this reservation is unreadable",
        Some(Some(r)) if r.released => "Redis released this reservation's units",
        Some(Some(r)) if r.quantity != reserved.quantity => {
            "Redis's record of this reservation has another quantity"
        }
        Some(Some(_)) => return Ok(None),
    };
    Ok(Some(format!(
        "{why}: an order now could sell its units twice; `yoink reconcile --repair` \
         decides it, or purge it"
    )))
}

/// Projects one reservation in its own transaction, as the projector would (an order,
/// or on a sale with holds a hold); rolled back on a dry run.
async fn project(
    dlq: &Dlq,
    stream_id: &str,
    reserved: &Reserved,
    dry_run: bool,
) -> Result<(Outcome, String), DlqError> {
    let mut client = dlq.pool.get().await?;
    let tx = client.transaction().await?;
    let batch = [(stream_id, reserved)];
    let hold = reserved.expires_at_ms.is_some();
    let written = if hold {
        holds::record_in(&tx, &batch).await
    } else {
        ledger::confirm_in(&tx, &batch).await
    };
    let new = match written {
        Ok(new) => new,
        Err(refused) if refused.is_refusal() => {
            return Ok((Outcome::StillFailing, format!("refused again: {refused}")));
        }
        Err(err) => return Err(err.into()),
    };
    if new == 0 {
        // Decided meanwhile (a projector, another replay): what stands is the answer.
        let known = fate::of(&tx, reserved.reservation_id).await?;
        drop(tx);
        return Ok(decided(&known).unwrap_or((
            Outcome::StillFailing,
            "PostgreSQL wrote nothing and records no fate".to_owned(),
        )));
    }
    let what = if hold {
        "hold recorded, waiting for its confirm"
    } else {
        "order written"
    };
    if dry_run {
        tx.rollback().await?;
        return Ok((Outcome::Projected, format!("would be projected: {what}")));
    }
    tx.commit().await?;
    Ok((Outcome::Projected, what.to_owned()))
}
