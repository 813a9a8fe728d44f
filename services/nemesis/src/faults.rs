//! Carrying out the schedule: each fault begins at its time, lasts its time, and is
//! healed before the next one begins. Each is recorded (planned and actual times, what
//! it did, any error) for the report.
//!
//! It must never act on anything the run did not make: processes are the run's own
//! children, store faults need the run's private stores (`local`), and stream faults
//! touch only the run's own sale stream under its key prefix.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs};
use yoink_localstores::LocalStores;

use crate::NemesisError;
use crate::load::elapsed_ms;
use crate::processes::Processes;
use crate::schedule::{Fault, FaultKind};

/// The consumer that takes entries and never acknowledges them.
pub const GHOST: &str = "nemesis-ghost";
/// How long the projectors get to drain the stream before Redis goes back in time.
const QUIESCE_WITHIN: Duration = Duration::from_secs(5);

/// What one fault did.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub planned_at_ms: u64,
    pub began_ms: u64,
    pub ended_ms: u64,
    /// What it did, in a few words.
    pub note: String,
    /// Set when it could not be carried out as planned.
    pub error: Option<String>,
}

/// The run's handles on everything a fault acts on.
pub struct Injector {
    /// The private stores (`None` on given stores: no store faults then).
    pub local: Option<LocalStores>,
    pub procs: Processes,
    pub redis: RedisConn,
    pub keys: Keyspace,
    pub sale: SaleId,
    stores: StoreArgs,
    /// The snapshot a `redis-older-snapshot` fault took when it began.
    snapshot: Option<PathBuf>,
    pub log: Vec<FaultRecord>,
}

impl Injector {
    pub fn new(
        local: Option<LocalStores>,
        procs: Processes,
        redis: RedisConn,
        keys: Keyspace,
        sale: SaleId,
        stores: StoreArgs,
    ) -> Self {
        Self {
            local,
            procs,
            redis,
            keys,
            sale,
            stores,
            snapshot: None,
            log: Vec::new(),
        }
    }

    /// Carries out `schedule`, its times counted from `started`.
    pub async fn run_schedule(&mut self, schedule: &[Fault], started: Instant) {
        for fault in schedule {
            tokio::time::sleep_until((started + Duration::from_millis(fault.at_ms)).into()).await;
            let began_ms = elapsed_ms(started);
            let begun = self.begin(fault).await;
            tokio::time::sleep(Duration::from_millis(fault.lasts_ms)).await;
            let ended = match &begun {
                Ok(_) => self.end(fault).await,
                Err(_) => Ok(String::new()),
            };
            // Whatever happened, every process runs again before the next fault.
            let restarted = self.procs.ensure_all_running().map_err(|e| e.to_string());
            let (note, error) = match (begun, ended, restarted) {
                (Ok(a), Ok(b), Ok(())) => (join_notes(&a, &b), None),
                (Ok(a), Err(e), _) | (Ok(a), Ok(_), Err(e)) => (a, Some(e)),
                (Err(e), _, _) => (String::new(), Some(e)),
            };
            if let Some(error) = &error {
                tracing::warn!(fault = %fault.kind, %error, "Fault not carried out as planned.");
            }
            self.log.push(FaultRecord {
                kind: fault.kind,
                planned_at_ms: fault.at_ms,
                began_ms,
                ended_ms: elapsed_ms(started),
                note,
                error,
            });
        }
    }

    /// The fault's first half: what breaks.
    async fn begin(&mut self, fault: &Fault) -> Result<String, String> {
        match fault.kind {
            FaultKind::KillApi => {
                self.procs.kill_api().await;
                Ok("API SIGKILLed".into())
            }
            FaultKind::KillProjector => {
                self.procs.kill_projector(fault.arg as usize).await;
                Ok(format!("projector {} SIGKILLed", fault.arg))
            }
            FaultKind::PgRestart => {
                self.local()?.stop_postgres();
                Ok("PostgreSQL stopped (immediate)".into())
            }
            FaultKind::RedisRestart => {
                self.local()?.kill_redis();
                Ok("Redis SIGKILLed".into())
            }
            FaultKind::RedisOlderSnapshot => {
                let path = self
                    .local()?
                    .snapshot_redis()
                    .await
                    .map_err(|e| e.to_string())?;
                self.snapshot = Some(path);
                Ok("snapshot taken".into())
            }
            FaultKind::RewindCursor => self.rewind_cursor(fault.arg).await,
            FaultKind::ClaimToGhost => {
                let within = Duration::from_millis(fault.lasts_ms / 2);
                self.claim_to_ghost(fault.arg, within).await
            }
        }
    }

    /// The fault's second half: what comes back.
    async fn end(&mut self, fault: &Fault) -> Result<String, String> {
        match fault.kind {
            FaultKind::KillApi | FaultKind::KillProjector => self
                .procs
                .ensure_all_running()
                .map(|()| "restarted".into())
                .map_err(|e| e.to_string()),
            FaultKind::PgRestart => {
                self.local()?
                    .start_postgres()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok("PostgreSQL started".into())
            }
            FaultKind::RedisRestart => {
                self.local()?
                    .restart_redis()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok("Redis started on its AOF".into())
            }
            FaultKind::RedisOlderSnapshot => self.go_back().await,
            FaultKind::RewindCursor | FaultKind::ClaimToGhost => Ok(String::new()),
        }
    }

    fn local(&mut self) -> Result<&mut LocalStores, String> {
        self.local
            .as_mut()
            .ok_or_else(|| "needs the private stores (--stores private)".to_owned())
    }

    /// Redis back to the snapshot taken when the fault began: the API paused, the
    /// stream drained (so every 202 Redis forgets is one PostgreSQL has), Redis killed
    /// and started from the snapshot, the API continued.
    async fn go_back(&mut self) -> Result<String, String> {
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| "no snapshot was taken".to_owned())?;
        self.procs.pause_api(true).map_err(|e| e.to_string())?;
        let drained = self.wait_stream_drained(QUIESCE_WITHIN).await;
        let restored = match self.local() {
            Ok(local) => local
                .restore_redis(&snapshot)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        // Continue the API whatever happened: a stopped API would fail the whole run.
        self.procs.pause_api(false).map_err(|e| e.to_string())?;
        restored?;
        let _ = std::fs::remove_file(&snapshot);
        Ok(match drained {
            Ok(()) => "API paused, stream drained, Redis restarted from the older snapshot".into(),
            Err(left) => format!(
                "API paused, stream NOT drained ({left} entries unprojected: they may be lost), Redis restarted from the older snapshot"
            ),
        })
    }

    /// Waits until the projectors have acknowledged every entry of the sale's stream;
    /// `Err(entries left)` after `within`.
    pub async fn wait_stream_drained(&mut self, within: Duration) -> Result<(), u64> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.stream_backlog().await.unwrap_or(u64::MAX);
            if left == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(left);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Entries delivered and not acknowledged, plus 1 if any entry is not delivered yet
    /// (0: drained).
    pub async fn stream_backlog(&mut self) -> redis::RedisResult<u64> {
        let stream = self.keys.events(&self.sale);
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis)
            .await?;
        let Some(last) = last.ids.first().map(|e| e.id.clone()) else {
            return Ok(0);
        };
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut self.redis)
            .await?;
        let Some(group) = groups.groups.iter().find(|g| g.name == PROJECTOR_GROUP) else {
            // No group yet: everything is still to be delivered.
            return Ok(1);
        };
        // Not `lag`: Redis leaves it unknown after a cursor move, and wrong (entries
        // counted that were delivered) after a restart from an older state.
        let undelivered = u64::from(
            yoink_core::stream::parse_id(&group.last_delivered_id)
                < yoink_core::stream::parse_id(&last),
        );
        Ok(undelivered + group.pending as u64)
    }

    /// The group as `XINFO GROUPS` and `XPENDING` show it, for a report on a drain that
    /// did not finish.
    pub async fn describe_group(&mut self) -> String {
        let stream = self.keys.events(&self.sale);
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut self.redis)
            .await;
        let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(PROJECTOR_GROUP)
            .query_async(&mut self.redis)
            .await;
        let last: redis::RedisResult<redis::Value> = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis)
            .await;
        format!("XINFO GROUPS {groups:?}; XPENDING {pending:?}; last entry {last:?}")
    }

    /// `XGROUP SETID` to the entry `back` entries before the group's last-delivered id:
    /// those are delivered again. Never forward: a cursor moved past entries not yet
    /// delivered would skip them (a loss the nemesis made, not Yoink).
    async fn rewind_cursor(&mut self, back: u64) -> Result<String, String> {
        redis_ready(&mut self.redis).await;
        let stream = self.keys.events(&self.sale);
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("XINFO GROUPS: {e}"))?;
        let Some(cursor) = groups
            .groups
            .iter()
            .find(|g| g.name == PROJECTOR_GROUP)
            .map(|g| g.last_delivered_id.clone())
        else {
            return Ok("no group yet: nothing to rewind".into());
        };
        let tail: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg(&cursor)
            .arg("-")
            .arg("COUNT")
            .arg(back + 1)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("XREVRANGE: {e}"))?;
        let to = if tail.ids.len() as u64 > back {
            tail.ids.last().map_or("0".to_owned(), |e| e.id.clone())
        } else {
            "0".to_owned()
        };
        let moved: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&stream)
            .arg(PROJECTOR_GROUP)
            .arg(&to)
            .query_async(&mut self.redis)
            .await;
        moved.map_err(|e| format!("XGROUP SETID: {e}"))?;
        Ok(format!(
            "group cursor moved back from {cursor} to {to} ({} entries to redeliver)",
            tail.ids.len().min(back as usize)
        ))
    }

    /// Takes up to `count` new entries as the ghost consumer (competing with the
    /// projectors' blocking reads for up to `within`), and steals up to `count` of the
    /// projectors' pending ones; the ghost never acknowledges.
    async fn claim_to_ghost(&mut self, count: u64, within: Duration) -> Result<String, String> {
        redis_ready(&mut self.redis).await;
        let stream = self.keys.events(&self.sale);
        // A blocking read needs a connection of its own: the shared one would stall.
        let mut ghost = self.ghost_connection().await?;
        let deadline = Instant::now() + within;
        let mut taken = 0;
        while taken < count && Instant::now() < deadline {
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(PROJECTOR_GROUP)
                    .arg(GHOST)
                    .arg("COUNT")
                    .arg(count - taken)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut ghost)
                    .await;
            let reply = read.map_err(|e| format!("XREADGROUP: {e}"))?;
            taken += reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len() as u64).sum());
        }
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(PROJECTOR_GROUP)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("XPENDING: {e}"))?;
        let theirs: Vec<String> = pending
            .ids
            .iter()
            .filter(|p| p.consumer != GHOST)
            .map(|p| p.id.clone())
            .collect();
        let mut stolen = 0;
        if !theirs.is_empty() {
            let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(PROJECTOR_GROUP)
                .arg(GHOST)
                .arg(0)
                .arg(&theirs)
                .query_async(&mut self.redis)
                .await
                .map_err(|e| format!("XCLAIM: {e}"))?;
            stolen = claimed.ids.len();
        }
        Ok(format!(
            "ghost took {taken} new entries and stole {stolen} pending ones"
        ))
    }

    /// A connection of the ghost's own, with a reply timeout longer than its BLOCK.
    async fn ghost_connection(&self) -> Result<RedisConn, String> {
        RedisConn::dedicated(&self.stores, Some(Duration::from_secs(2)))
            .await
            .map_err(|e| format!("connecting the ghost: {e}"))
    }

    /// After the load: every process running, every store up, the API continued.
    pub async fn heal(&mut self) -> Result<(), NemesisError> {
        self.procs.pause_api(false)?;
        if let Some(local) = self.local.as_mut() {
            if !local.redis_running() {
                local.restart_redis().await?;
            }
            if !local.postgres_running() {
                local.start_postgres().await?;
            }
        }
        self.procs.ensure_all_running()
    }
}

/// Waits (up to 2 s) until `redis` answers PING: after Redis restarted, the shared
/// handle fails its first command (broken pipe) and reconnects.
pub async fn redis_ready(redis: &mut RedisConn) {
    for _ in 0..40 {
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(redis).await;
        if pong.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn join_notes(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_owned(),
        (true, false) => b.to_owned(),
        _ => format!("{a}; {b}"),
    }
}
