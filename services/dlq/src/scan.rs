//! Reading dead-letter streams a page at a time: the sales that may have one, one
//! entry by name with its other copies, and a bounded listing.
//!
//! Never load a whole dead stream: every read is `XRANGE ... COUNT 500`, and what is
//! kept is bounded by `--limit` (or by the copies of one entry). Read-only.

use std::collections::{BTreeMap, HashMap};

use redis::AsyncCommands;
use redis::streams::{StreamId, StreamRangeReply};
use serde::Serialize;
use yoink_core::SaleId;

use crate::Dlq;
use crate::entry::{DeadLetter, EntryRef, dead_field};
use crate::error::DlqError;

/// Entries read per `XRANGE`: a page answers well within the per-command timeout
/// (the same bound `yoink_core::stream` reads with).
pub const PAGE: usize = 500;

/// A walk through `[start, end]` of a stream, one page per call.
pub struct Pager {
    stream: String,
    from: String,
    end: String,
    done: bool,
}

impl Pager {
    pub fn new(stream: String, start: &str, end: &str) -> Self {
        Self {
            stream,
            from: start.to_owned(),
            end: end.to_owned(),
            done: false,
        }
    }

    /// The next page (empty at the end). Entries deleted meanwhile are simply not there:
    /// each page starts just after the last id read.
    pub async fn next(&mut self, dlq: &mut Dlq) -> Result<Vec<StreamId>, DlqError> {
        if self.done {
            return Ok(Vec::new());
        }
        let page: StreamRangeReply = dlq
            .redis
            .xrange_count(&self.stream, &self.from, &self.end, PAGE)
            .await?;
        self.done = page.ids.len() < PAGE;
        if let Some(last) = page.ids.last() {
            self.from = format!("({}", last.id);
        }
        Ok(page.ids)
    }
}

/// The sales to look at: the one named (which must exist in a store), or every sale
/// either store knows.
pub async fn sales(dlq: &mut Dlq, sale: Option<&str>) -> Result<Vec<SaleId>, DlqError> {
    if let Some(raw) = sale {
        let sale = SaleId::parse(raw).map_err(|source| DlqError::BadSaleId {
            raw: raw.to_owned(),
            source,
        })?;
        ensure_sale(dlq, &sale).await?;
        return Ok(vec![sale]);
    }
    yoink_core::sales::known_to_either(&mut dlq.redis, &dlq.keys, &dlq.pool).await
}

/// `UnknownSale` unless Redis or PostgreSQL knows `sale` (or it has dead letters).
pub async fn ensure_sale(dlq: &mut Dlq, sale: &SaleId) -> Result<(), DlqError> {
    let in_redis: bool = dlq.redis.exists(dlq.keys.meta(sale)).await?;
    let has_dead: bool = dlq.redis.exists(dlq.keys.dead_letters(sale)).await?;
    if in_redis || has_dead {
        return Ok(());
    }
    let in_postgres = dlq
        .pool
        .get()
        .await?
        .query_opt("SELECT 1 FROM sales WHERE sale_id = $1", &[&sale.as_str()])
        .await?
        .is_some();
    if in_postgres {
        Ok(())
    } else {
        Err(DlqError::UnknownSale(sale.clone()))
    }
}

/// Redis's clock, epoch ms: the clock the dead-letter ids were made with.
pub async fn now_ms(dlq: &mut Dlq) -> Result<i64, DlqError> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut dlq.redis).await?;
    Ok(secs * 1_000 + micros / 1_000)
}

/// The dead letter `entry` names, with every copy of its original entry (the whole
/// stream is read page by page for them; only matches are kept).
pub async fn find(dlq: &mut Dlq, entry: &EntryRef) -> Result<DeadLetter, DlqError> {
    ensure_sale(dlq, &entry.sale).await?;
    let stream = dlq.keys.dead_letters(&entry.sale);
    let named: StreamRangeReply = dlq
        .redis
        .xrange_count(&stream, &entry.id, &entry.id, 1)
        .await?;
    let Some(copy) = named.ids.into_iter().next() else {
        return Err(DlqError::NoSuchEntry {
            sale: entry.sale.clone(),
            id: entry.id.clone(),
        });
    };
    let now = now_ms(dlq).await?;
    let named = DeadLetter::from_copy(&entry.sale, copy, now);
    let mut letter: Option<DeadLetter> = None;
    let mut pager = Pager::new(stream, "-", "+");
    loop {
        let page = pager.next(dlq).await?;
        if page.is_empty() {
            break;
        }
        for copy in page {
            if original_id(&copy) != named.original_id {
                continue;
            }
            match &mut letter {
                Some(letter) => letter.add_copy(&copy),
                None => letter = Some(DeadLetter::from_copy(&entry.sale, copy, now)),
            }
        }
    }
    // Deleted between the two reads: the named copy is all there is.
    Ok(letter.unwrap_or(named))
}

/// A copy's `original_id` field ("" when missing).
pub fn original_id(copy: &StreamId) -> String {
    copy.map
        .get(dead_field::ORIGINAL_ID)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .unwrap_or_default()
}

/// What `list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The dead letters read, one per original entry, oldest first, at most `--limit`.
    pub entries: Vec<DeadLetter>,
    /// How many of `entries` have each reason class.
    pub counts_by_reason: BTreeMap<String, u64>,
    /// Copies in the dead streams looked at (`XLEN`), whatever the filters.
    pub copies_in_streams: u64,
    /// True when `--limit` stopped the listing before the end of the streams.
    pub truncated: bool,
}

/// Lists dead letters of `sale` (or every sale) whose reason matches `reason`, at most
/// `limit` of them, copies of one entry grouped (those read before the limit).
pub async fn list(
    dlq: &mut Dlq,
    sale: Option<&str>,
    reason: Option<&str>,
    limit: usize,
) -> Result<Listing, DlqError> {
    let sales = sales(dlq, sale).await?;
    let now = now_ms(dlq).await?;
    let mut listing = Listing {
        entries: Vec::new(),
        counts_by_reason: BTreeMap::new(),
        copies_in_streams: 0,
        truncated: false,
    };
    for sale in &sales {
        let stream = dlq.keys.dead_letters(sale);
        let length: u64 = dlq.redis.xlen(&stream).await?;
        listing.copies_in_streams += length;
        if length == 0 || listing.truncated {
            continue;
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut pager = Pager::new(stream, "-", "+");
        'pages: loop {
            let page = pager.next(dlq).await?;
            if page.is_empty() {
                break;
            }
            for copy in page {
                let original = original_id(&copy);
                if let Some(&at) = seen.get(&original) {
                    listing.entries[at].add_copy(&copy);
                    continue;
                }
                let letter = DeadLetter::from_copy(sale, copy, now);
                if reason.is_some_and(|r| !letter.matches_reason(r)) {
                    continue;
                }
                if listing.entries.len() >= limit {
                    listing.truncated = true;
                    break 'pages;
                }
                seen.insert(original, listing.entries.len());
                listing.entries.push(letter);
            }
        }
    }
    for letter in &listing.entries {
        *listing
            .counts_by_reason
            .entry(letter.reason_class.clone())
            .or_default() += 1;
    }
    Ok(listing)
}
