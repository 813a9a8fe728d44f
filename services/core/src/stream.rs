//! A sale's stream: its consumer group, pages of entries by id range, stream ids in
//! order, entries as field maps, and the `reserved` entries still in flight (pending in
//! the projectors' group, or not delivered yet). Only `ensure_group` writes.

use std::collections::{HashMap, HashSet};

use redis::AsyncCommands;
use redis::streams::{StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply};

use crate::events::{Reserved, SaleEvent};
use crate::ids::SaleId;
use crate::keys::{Keyspace, PROJECTOR_GROUP};
use crate::redis_store::RedisConn;

/// Entries (or pending ids) read per call.
/// Entries read per `XRANGE` / `XPENDING` call: a page must answer well within the
/// per-command timeout (`--redis-timeout-ms`, 500 ms by default), and a few thousand
/// entries take longer than that to read on a slow host (measured: ~0.13 ms per entry
/// in a debug build on 2 vCPUs). Reconcilers and rebuilds read backlogs that big.
const PAGE: usize = 500;

/// Creates the projectors' consumer group on a sale's stream (and the stream),
/// idempotently: `BUSYGROUP` means it exists.
pub async fn ensure_group(redis: &mut RedisConn, stream: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis
        .xgroup_create_mkstream(stream, PROJECTOR_GROUP, "0")
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// A stream id as a comparable pair.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Reads `[start, end]` of a stream, page by page.
pub async fn read_range(
    redis: &mut RedisConn,
    stream: &str,
    start: &str,
    end: &str,
) -> redis::RedisResult<Vec<StreamId>> {
    let mut out = Vec::new();
    let mut from = start.to_owned();
    loop {
        let page: StreamRangeReply = redis.xrange_count(stream, &from, end, PAGE).await?;
        let full = page.ids.len() == PAGE;
        if let Some(last) = page.ids.last() {
            from = format!("({}", last.id);
        }
        out.extend(page.ids);
        if !full {
            return Ok(out);
        }
    }
}

/// An entry's fields as text (a value that is not text reads as "").
pub fn fields(entry: &StreamId) -> HashMap<String, String> {
    entry
        .map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
            )
        })
        .collect()
}

/// The `reserved` entries of `entries`, with their stream ids, in stream order.
pub fn reservations(entries: &[StreamId]) -> Vec<(String, Reserved)> {
    entries
        .iter()
        .filter_map(|entry| match SaleEvent::from_fields(&fields(entry)) {
            Ok(SaleEvent::Reserved(r)) => Some((entry.id.clone(), r)),
            _ => None,
        })
        .collect()
}

/// The entries of a sale stream no projector has acknowledged: those pending in the
/// group, and every one after the group's last-delivered id.
#[derive(Debug, Clone, Default)]
pub struct Unacknowledged {
    delivered: (u64, u64),
    pending: HashSet<String>,
}

impl Unacknowledged {
    pub fn new(last_delivered_id: &str, pending: HashSet<String>) -> Self {
        Self {
            delivered: parse_id(last_delivered_id),
            pending,
        }
    }

    /// The first stream id that can belong to it.
    pub fn start(&self) -> String {
        let (ms, seq) = self
            .pending
            .iter()
            .map(|id| parse_id(id))
            .chain(std::iter::once((
                self.delivered.0,
                self.delivered.1.saturating_add(1),
            )))
            .min()
            .unwrap_or((0, 0));
        format!("{ms}-{seq}")
    }

    pub fn contains(&self, id: &str) -> bool {
        parse_id(id) > self.delivered || self.pending.contains(id)
    }
}

/// The `reserved` entries of a sale that no projector has acknowledged (the whole
/// stream when the group is missing). Every reservation PostgreSQL may not have decided
/// is among them, since projectors acknowledge only after their commit. Not atomic:
/// meant for a sale whose stream cannot grow meanwhile (suspended), where it is exact.
pub async fn unacknowledged(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> redis::RedisResult<Vec<(String, Reserved)>> {
    let stream = keys.events(sale);
    if !redis.exists::<_, bool>(&stream).await? {
        return Ok(Vec::new());
    }
    let groups: StreamInfoGroupsReply = redis.xinfo_groups(&stream).await?;
    let Some(group) = groups.groups.iter().find(|g| g.name == PROJECTOR_GROUP) else {
        return Ok(reservations(&read_range(redis, &stream, "-", "+").await?));
    };
    let mut pending = HashSet::new();
    let mut from = "-".to_owned();
    while pending.len() < group.pending {
        let page: StreamPendingCountReply = redis
            .xpending_count(&stream, PROJECTOR_GROUP, &from, "+", PAGE)
            .await?;
        let Some(last) = page.ids.last() else { break };
        from = format!("({}", last.id);
        pending.extend(page.ids.into_iter().map(|p| p.id));
    }
    let window = Unacknowledged::new(&group.last_delivered_id, pending);
    let entries: Vec<StreamId> = read_range(redis, &stream, &window.start(), "+")
        .await?
        .into_iter()
        .filter(|e| window.contains(&e.id))
        .collect();
    Ok(reservations(&entries))
}

#[cfg(test)]
mod tests {
    use super::{Unacknowledged, parse_id};

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("5-10") > parse_id("5-9"));
        assert_eq!(parse_id("0-0"), (0, 0));
    }

    #[test]
    fn the_unacknowledged_window_starts_at_the_oldest_pending_entry() {
        let pending = ["5-1".to_owned(), "3-0".to_owned()].into_iter().collect();
        let window = Unacknowledged::new("7-2", pending);
        assert_eq!(window.start(), "3-0");
        assert!(window.contains("3-0") && window.contains("7-3") && window.contains("8-0"));
        assert!(!window.contains("4-0") && !window.contains("7-2"));
        let nothing_pending = Unacknowledged::new("7-2", Default::default());
        assert_eq!(nothing_pending.start(), "7-3");
    }
}
