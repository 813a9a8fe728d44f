//! The entries one sale projector holds (delivered to it and not finished: the batch in
//! hand, the batches its reader fetched ahead, reclaimed ones being handled) and the
//! task that keeps them claimed while they wait.
//!
//! An entry left idle longer than `--claim-idle-ms` is taken over by `XAUTOCLAIM`
//! (ours or another projector's), which counts one more delivery; the delivery count
//! decides dead-lettering, so a long PostgreSQL outage must not raise it. The keeper
//! resets the idle time of every held entry with `XCLAIM ... JUSTID` (no delivery
//! counted) several times per claim-idle period. Never keep an entry that is finished
//! (acknowledged, or refused and left pending so `XAUTOCLAIM` delivers it again):
//! refused entries must go idle to be retried and, in the end, dead-lettered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamClaimOptions;
use tokio::sync::watch;
use yoink_core::RedisConn;
use yoink_core::keys::PROJECTOR_GROUP;

/// Ids XCLAIMed per call.
const CHUNK: usize = 1_000;

/// Stream ids this projector holds, shared by the sale loop, its reader and the keeper.
/// Counted: the same entry may be held twice at once (read ahead, and reclaimed while
/// it waited), and stays held until both are finished.
#[derive(Debug, Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<String, usize>>>);

impl Held {
    pub fn hold<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            *held.entry(id.to_owned()).or_default() += 1;
        }
    }

    pub fn finish<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(count) = held.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    held.remove(id);
                }
            }
        }
    }

    pub fn ids(&self) -> Vec<String> {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.keys().cloned().collect()
    }
}

/// How often the keeper runs: a quarter of the claim-idle time, so an entry stays
/// claimed even when one or two passes come late.
pub fn keep_alive_every(claim_idle_ms: u64) -> Duration {
    Duration::from_millis((claim_idle_ms / 4).max(10))
}

/// Keeps every held entry claimed by `consumer` until `done` changes or its sender is
/// dropped (the sale loop ended, or panicked).
pub async fn keep_alive(
    held: Held,
    mut redis: RedisConn,
    stream: String,
    consumer: String,
    every: Duration,
    mut done: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {},
            _ = done.changed() => return,
        }
        let ids = held.ids();
        for chunk in ids.chunks(CHUNK) {
            if let Err(err) = touch(&mut redis, &stream, &consumer, chunk).await {
                // The entries may be reclaimed and delivered once more: harmless, and
                // Redis failing is reported by the reader and the reclaim pass.
                tracing::debug!(error = %err, "XCLAIM JUSTID failed.");
                break;
            }
        }
    }
}

/// `XCLAIM ... JUSTID` to ourselves: resets the entries' idle time without raising their
/// delivery count. Ids no longer pending (acknowledged meanwhile) are ignored by Redis.
async fn touch(
    redis: &mut RedisConn,
    stream: &str,
    consumer: &str,
    ids: &[String],
) -> redis::RedisResult<()> {
    let options = StreamClaimOptions::default().with_justid();
    let _: redis::Value = redis
        .xclaim_options(stream, PROJECTOR_GROUP, consumer, 0, ids, options)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_entries_are_no_longer_held() {
        let held = Held::default();
        held.hold(["1-0", "2-0", "3-0"]);
        held.finish(["2-0"]);
        let mut ids = held.ids();
        ids.sort();
        assert_eq!(ids, ["1-0", "3-0"]);
    }

    #[test]
    fn an_entry_held_twice_stays_held_until_both_are_finished() {
        let held = Held::default();
        held.hold(["1-0"]);
        held.hold(["1-0"]);
        held.finish(["1-0"]);
        assert_eq!(held.ids(), ["1-0"]);
        held.finish(["1-0"]);
        assert!(held.ids().is_empty());
        held.finish(["1-0"]);
        assert!(
            held.ids().is_empty(),
            "finishing an entry not held changes nothing"
        );
    }

    #[test]
    fn the_keeper_runs_several_times_per_claim_idle_period() {
        assert_eq!(keep_alive_every(30_000), Duration::from_millis(7_500));
        assert_eq!(keep_alive_every(1_000), Duration::from_millis(250));
        assert_eq!(keep_alive_every(0), Duration::from_millis(10));
    }
}
