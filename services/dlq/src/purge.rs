//! `yoink dlq purge`: remove dead letters (every copy of an entry) and their replay
//! counters, once an operator has seen them.
//!
//! Purging decides nothing: PostgreSQL and the sale's stock stay as they are. A purged
//! entry PostgreSQL never decided (fate `none`) keeps its units taken until a repair;
//! `purge ENTRY` shows that fate so it is never a surprise. `--all` removes only what
//! was in the stream when it started (a dead letter written meanwhile stays), a page at
//! a time.

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde::Serialize;
use yoink_core::SaleId;

use crate::Dlq;
use crate::entry::EntryRef;
use crate::error::DlqError;
use crate::fate::{self, Fate};
use crate::scan::{self, Pager};

/// What was removed from one sale's dead stream.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub sale_id: SaleId,
    /// The entry named (`purge ENTRY`).
    pub entry: Option<String>,
    pub original_id: Option<String>,
    /// Its reservation's fate in PostgreSQL (`purge ENTRY`, when it names one).
    pub fate: Option<Fate>,
    /// Dead-letter copies removed.
    pub copies_removed: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    pub purged: Vec<Purged>,
    pub copies_removed: u64,
}

/// Removes the dead letter `entry` names: all its copies and its replay counter.
pub async fn purge_entry(dlq: &mut Dlq, entry: &EntryRef) -> Result<PurgeReport, DlqError> {
    let letter = scan::find(dlq, entry).await?;
    let fate = match letter.reservation_id {
        Some(id) => Some(fate::of(&dlq.pool.get().await?, id).await?),
        None => None,
    };
    let removed: u64 = dlq
        .redis
        .xdel(dlq.keys.dead_letters(&entry.sale), &letter.copies)
        .await?;
    let _: usize = dlq
        .redis
        .hdel(
            dlq.keys.dead_letter_replays(&entry.sale),
            &letter.original_id,
        )
        .await?;
    Ok(PurgeReport {
        purged: vec![Purged {
            sale_id: entry.sale.clone(),
            entry: Some(letter.entry),
            original_id: Some(letter.original_id),
            fate,
            copies_removed: removed,
        }],
        copies_removed: removed,
    })
}

/// Removes every dead letter of `sale` (or of every sale) that was there when it
/// started, with their replay counters.
pub async fn purge_all(dlq: &mut Dlq, sale: Option<&str>) -> Result<PurgeReport, DlqError> {
    let mut report = PurgeReport {
        purged: Vec::new(),
        copies_removed: 0,
    };
    for sale in scan::sales(dlq, sale).await? {
        let stream = dlq.keys.dead_letters(&sale);
        let replays = dlq.keys.dead_letter_replays(&sale);
        let newest: StreamRangeReply = dlq.redis.xrevrange_count(&stream, "+", "-", 1).await?;
        let Some(last) = newest.ids.first() else {
            continue;
        };
        let mut removed = 0u64;
        let mut pager = Pager::new(stream.clone(), "-", &last.id);
        loop {
            let page = pager.next(dlq).await?;
            if page.is_empty() {
                break;
            }
            let ids: Vec<&str> = page.iter().map(|c| c.id.as_str()).collect();
            let originals: Vec<String> = page.iter().map(scan::original_id).collect();
            let gone: u64 = dlq.redis.xdel(&stream, &ids).await?;
            let _: usize = dlq.redis.hdel(&replays, &originals).await?;
            removed += gone;
        }
        let left: u64 = dlq.redis.xlen(&stream).await?;
        if left == 0 {
            // Counters of entries removed some other way have nothing left to guard.
            let _: usize = dlq.redis.del(&replays).await?;
        }
        report.copies_removed += removed;
        report.purged.push(Purged {
            sale_id: sale,
            entry: None,
            original_id: None,
            fate: None,
            copies_removed: removed,
        });
    }
    Ok(report)
}
