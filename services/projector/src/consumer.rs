//! One sale's projector loop: take the batches its reader fetched, project each in one
//! PostgreSQL transaction, `XACK` after commit, and dead-letter what is refused for
//! good; on a timer, run the stream's upkeep (`maintenance`: reclaim, report, idle
//! consumers) and handle what it reclaimed; on another, check that Redis has not gone
//! back behind PostgreSQL, and rebuild the sale when it is suspended; on a third, expire
//! the holds past their deadline (`expiry`).
//!
//! Never acknowledge an entry before what it stands for is committed in PostgreSQL,
//! never dead-letter on a transient error, and never commit a batch from a Redis that
//! is behind PostgreSQL: the rebuild decides those reservations.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use redis::streams::StreamPendingCountReply;
use tokio::sync::{mpsc, watch};
use yoink_core::backoff::Backoff;
use yoink_core::events::{Reserved, SaleEvent};
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::ledger::{self, LedgerError};
use yoink_core::scripts::{self, Fence, ReleaseOutcome};
use yoink_core::{Keyspace, Position, RedisConn, SaleId, epochs, telemetry};
use yoink_core::{rebuild, stream};

use crate::ProjectorArgs;
use crate::dead_letter::{GaveUp, dead_letter};
use crate::entry::Entry;
use crate::error::ProjectError;
use crate::expiry::ExpirySweep;
use crate::held::{self, Held};
use crate::maintenance::Maintenance;
use crate::metrics;
use crate::reader::Reader;
use crate::trim::Trim;

/// What one pass over a batch decided.
#[derive(Default)]
struct Outcome {
    /// Committed (or nothing to commit): acknowledge.
    ack: Vec<String>,
    /// Refused for good this time: dead-letter once delivered often enough.
    refused: Vec<(Entry, ProjectError)>,
}

pub struct SaleProjector {
    pub sale: SaleId,
    pub stream: String,
    pub keys: Keyspace,
    pub redis: RedisConn,
    /// Own connection for the blocking `XREADGROUP`.
    pub reader: RedisConn,
    pub pool: Pool,
    pub args: ProjectorArgs,
    pub consumer: String,
    /// Every entry delivered to this projector and not finished, kept claimed.
    held: Held,
    /// The highest position this projector knows the sale's Redis reached: PostgreSQL's
    /// floor (read on every fence tick) and every entry it read. A Redis below it went
    /// back in time.
    floor: Position,
}

impl SaleProjector {
    pub fn new(
        sale: SaleId,
        keys: Keyspace,
        redis: RedisConn,
        reader: RedisConn,
        pool: Pool,
        args: ProjectorArgs,
        consumer: String,
    ) -> Self {
        Self {
            stream: keys.events(&sale),
            sale,
            keys,
            redis,
            reader,
            pool,
            args,
            consumer,
            held: Held::default(),
            floor: Position::ZERO,
        }
    }

    /// Runs until `shutdown` turns true; the batches already delivered to this consumer
    /// are finished first.
    ///
    /// A reader task fetches the next batch while this one is committed (a channel of
    /// one batch between them), so reading never waits for PostgreSQL nor the reverse;
    /// a keeper task keeps every entry held meanwhile claimed.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while let Err(err) = stream::ensure_group(&mut self.redis, &self.stream).await {
            tracing::warn!(sale_id = %self.sale, error = %err, "Cannot create the consumer group yet.");
            if backoff.wait(&mut shutdown).await {
                return;
            }
        }
        tracing::info!(sale_id = %self.sale, consumer = %self.consumer, "Projecting sale.");
        // Dropped when this loop ends, or unwinds: the keeper stops with it.
        let (_keeping, keep_until) = watch::channel(false);
        tokio::spawn(held::keep_alive(
            self.held.clone(),
            self.redis.clone(),
            self.stream.clone(),
            self.consumer.clone(),
            held::keep_alive_every(self.args.claim_idle_ms),
            keep_until,
        ));
        let (batches, mut incoming) = mpsc::channel::<Vec<Entry>>(1);
        let reader = Reader {
            sale: self.sale.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            batch_size: self.args.batch_size,
            block_ms: self.args.block_ms,
            conn: self.reader.clone(),
            held: self.held.clone(),
        };
        let reader = tokio::spawn(reader.run(batches, shutdown.clone()));
        let mut maintenance = Maintenance::new(
            self.sale.clone(),
            self.stream.clone(),
            self.consumer.clone(),
            self.redis.clone(),
            &self.args,
        );
        let mut trim = Trim::new(
            self.sale.clone(),
            self.keys.clone(),
            self.redis.clone(),
            self.pool.clone(),
            self.args.trim_batch,
            Duration::from_millis(self.args.trim_interval_ms),
        );
        let mut reclaim = tokio::time::interval(self.args.claim_interval());
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fence = tokio::time::interval(Duration::from_millis(self.args.fence_interval_ms));
        fence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fence_failing = false;
        let mut expiry = tokio::time::interval(Duration::from_millis(self.args.expiry_interval_ms));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = ExpirySweep {
            sale: self.sale.clone(),
            keys: self.keys.clone(),
            redis: self.redis.clone(),
            pool: self.pool.clone(),
            batch: self.args.expiry_batch,
        };
        let mut expiry_failing = false;
        loop {
            let stopping = *shutdown.borrow();
            tokio::select! {
                batch = incoming.recv() => match batch {
                    Some(entries) => self.handle(entries, &mut shutdown).await,
                    // The reader stopped (shutdown) and everything it read is handled.
                    None => break,
                },
                _ = reclaim.tick(), if !stopping => {
                    if let Err(err) = self.maintain(&mut maintenance, &mut shutdown).await {
                        metrics::transient("redis");
                        tracing::warn!(sale_id = %self.sale, error = %err, "Reclaim failed.");
                    }
                    // Trimming waits for calmer times: a failed pass is retried on the
                    // next, and keeps every entry meanwhile.
                    if let Some(Err(err)) = trim.when_due().await {
                        metrics::transient(err.kind());
                        tracing::debug!(sale_id = %self.sale, error = %err, "Trim pass failed.");
                    }
                },
                _ = fence.tick(), if !stopping => {
                    // Logged once per change: a store outage would repeat it every tick.
                    match self.ensure_live(true).await {
                        Ok(()) if fence_failing => {
                            fence_failing = false;
                            tracing::info!(sale_id = %self.sale, "Sale live again.");
                        }
                        Err(err) if !fence_failing => {
                            fence_failing = true;
                            tracing::warn!(sale_id = %self.sale, error = %err, "Sale not live.");
                        }
                        _ => {}
                    }
                },
                _ = expiry.tick(), if !stopping => {
                    match sweep.run_once().await {
                        Ok(_) if expiry_failing => {
                            expiry_failing = false;
                            tracing::info!(sale_id = %self.sale, "Expiry sweep running again.");
                        }
                        Err(err) => {
                            metrics::transient("expiry");
                            if !expiry_failing {
                                expiry_failing = true;
                                tracing::warn!(sale_id = %self.sale, error = %err, "Expiry sweep failed; holds stay until it runs.");
                            }
                        }
                        _ => {}
                    }
                },
                _ = shutdown.changed(), if !stopping => {},
            }
        }
        let _ = reader.await;
        tracing::info!(sale_id = %self.sale, "Sale projector stopped.");
    }

    /// One upkeep pass: reclaim idle entries and handle them, then report and tidy.
    async fn maintain(
        &mut self,
        maintenance: &mut Maintenance,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let claimed = maintenance.reclaim().await?;
        if !claimed.is_empty() {
            self.held.hold(claimed.iter().map(|e| e.id.as_str()));
            self.handle(claimed, shutdown).await;
        }
        maintenance.tidy().await
    }

    /// Projects `entries` (held since they were read or reclaimed) until they are all
    /// committed-and-acked or refused; transient errors are retried with backoff while
    /// the keeper keeps the entries claimed by this consumer. Then they are no longer
    /// held: refused ones must go idle for `XAUTOCLAIM` to deliver them again.
    async fn handle(&mut self, entries: Vec<Entry>, shutdown: &mut watch::Receiver<bool>) {
        self.handle_held(&entries, shutdown).await;
        self.held.finish(entries.iter().map(|e| e.id.as_str()));
    }

    async fn handle_held(&mut self, entries: &[Entry], shutdown: &mut watch::Receiver<bool>) {
        let started = Instant::now();
        let read_at = entries
            .iter()
            .filter_map(|e| match &e.event {
                Ok(SaleEvent::Reserved(r)) => r.position,
                _ => None,
            })
            .max();
        self.floor = self.floor.max(read_at.unwrap_or(Position::ZERO));
        let mut backoff = Backoff::new();
        let mut give_up_at = None;
        let outcome = loop {
            let attempt = match self.ensure_live(false).await {
                Ok(()) => self.project(entries).await,
                Err(err) => Err(err),
            };
            match attempt {
                Ok(outcome) => break outcome,
                Err(err) => {
                    // Only transient errors reach here; anything else is a bug, and is
                    // still retried rather than given up on.
                    metrics::transient(if err.is_permanent() {
                        "unexpected"
                    } else {
                        err.kind()
                    });
                    tracing::warn!(sale_id = %self.sale, error = %err, entries = entries.len(), "Batch not committed; retrying.");
                    if *shutdown.borrow() {
                        // Shutting down: keep trying to finish the batch in hand for
                        // the grace period, then leave it pending for XAUTOCLAIM.
                        let deadline =
                            *give_up_at.get_or_insert(Instant::now() + self.args.shutdown_grace());
                        if Instant::now() >= deadline {
                            tracing::warn!(sale_id = %self.sale, "Shutdown while the store is down; entries stay pending for XAUTOCLAIM.");
                            return;
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    } else {
                        backoff.wait(shutdown).await;
                    }
                }
            }
        };
        if !outcome.ack.is_empty()
            && let Err(err) = ack(&mut self.redis, &self.stream, &outcome.ack).await
        {
            // Committed but not acked: a harmless redelivery later.
            tracing::warn!(sale_id = %self.sale, error = %err, "XACK failed after commit.");
        }
        for (entry, reason) in outcome.refused {
            self.refuse(&entry, &reason).await;
        }
        ::metrics::histogram!(metrics::BATCH_SIZE).record(entries.len() as f64);
        ::metrics::histogram!(metrics::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// Compares Redis with this projector's floor for the sale (first raised from
    /// PostgreSQL's with `refresh`; before each batch the floor in memory is enough, and
    /// costs no query) and suspends the sale when Redis is behind; rebuilds a suspended
    /// sale (one process at a time). Err (transient) while the sale stays suspended, so
    /// batches wait for the rebuild.
    async fn ensure_live(&mut self, refresh: bool) -> Result<(), ProjectError> {
        if refresh {
            let floor = epochs::floor(&self.pool.get().await?, &self.sale).await?;
            self.floor = self.floor.max(floor);
        }
        let mut redis = self.redis.clone();
        let fence = scripts::fence(
            &mut redis,
            &self.keys,
            &self.sale,
            self.floor,
            "projector",
            false,
        )
        .await?;
        let Fence::Suspended { now, reason, .. } = fence else {
            return Ok(());
        };
        metrics::suspended(&self.sale, true);
        if now {
            telemetry::rollback_detected(&self.sale, "projector");
            tracing::error!(sale_id = %self.sale, reason = %reason, "Redis went back behind PostgreSQL: sale suspended.");
        }
        match rebuild::recover(
            &mut redis,
            &self.keys,
            &self.pool,
            &self.sale,
            &self.consumer,
        )
        .await?
        {
            rebuild::Outcome::Recovered(_) | rebuild::Outcome::NotSuspended => {
                metrics::suspended(&self.sale, false);
                Ok(())
            }
            rebuild::Outcome::Busy => Err(ProjectError::RebuildInProgress),
        }
    }

    /// One pass: commits what it can. Err only for a transient failure.
    async fn project(&self, entries: &[Entry]) -> Result<Outcome, ProjectError> {
        let mut outcome = Outcome::default();
        let mut to_confirm = Vec::new();
        for entry in entries {
            match &entry.event {
                Ok(SaleEvent::Reserved(r)) => to_confirm.push((entry, r)),
                // Written after PostgreSQL decided them: nothing left to project.
                Ok(SaleEvent::Released { .. }) => {
                    metrics::event("released_ack", 1);
                    outcome.ack.push(entry.id.clone());
                }
                Ok(SaleEvent::Confirmed { .. } | SaleEvent::Extended { .. }) => {
                    metrics::event("hold_ack", 1);
                    outcome.ack.push(entry.id.clone());
                }
                Err(err) => outcome
                    .refused
                    .push((entry.clone(), ProjectError::Malformed(err.clone()))),
            }
        }
        let batch: Vec<(&str, &yoink_core::events::Reserved)> = to_confirm
            .iter()
            .map(|(e, r)| (e.id.as_str(), *r))
            .collect();
        match self.write(&batch).await {
            Ok((orders, holds)) => {
                let new = orders + holds;
                metrics::event("confirmed", orders);
                metrics::event("held", holds);
                metrics::event("duplicate", batch.len() as u64 - new);
                if new < batch.len() as u64 {
                    self.finish_releases(to_confirm.iter().map(|(_, r)| *r))
                        .await?;
                }
                outcome
                    .ack
                    .extend(to_confirm.iter().map(|(e, _)| e.id.clone()));
            }
            Err(refused) if refused.is_refusal() => {
                // One entry spoils the batch: find it by projecting one at a time.
                tracing::info!(sale_id = %self.sale, reason = %refused, "Batch refused; isolating the entry.");
                for (entry, reserved) in &to_confirm {
                    match ledger::project(&self.pool, &[(entry.id.as_str(), reserved)]).await {
                        Ok((orders, holds)) => {
                            let new = orders + holds;
                            metrics::event("confirmed", orders);
                            metrics::event("held", holds);
                            metrics::event("duplicate", 1 - new);
                            if new == 0 {
                                self.finish_releases(std::iter::once(*reserved)).await?;
                            }
                            outcome.ack.push(entry.id.clone());
                        }
                        Err(why) if why.is_refusal() => {
                            outcome.refused.push(((*entry).clone(), why.into()));
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Err(err) => return Err(err.into()),
        }
        Ok(outcome)
    }

    /// Writes `batch` to the ledger in up to `--write-parallelism` transactions side
    /// by side (each part at least `MIN_PART` entries). Ok once every part committed;
    /// otherwise the first error, a refusal first: parts that committed meanwhile come
    /// back as already decided when the batch is retried or isolated.
    async fn write(&self, batch: &[(&str, &Reserved)]) -> Result<(u64, u64), LedgerError> {
        const MIN_PART: usize = 256;
        let parts = self
            .args
            .write_parallelism
            .min(batch.len() / MIN_PART)
            .max(1);
        let written = futures::future::join_all(
            batch
                .chunks(batch.len().div_ceil(parts).max(1))
                .map(|part| ledger::project(&self.pool, part)),
        )
        .await;
        let mut total = (0, 0);
        let mut failed: Option<LedgerError> = None;
        for result in written {
            match result {
                Ok((orders, holds)) => {
                    total.0 += orders;
                    total.1 += holds;
                }
                Err(err) if err.is_refusal() || failed.is_none() => failed = Some(err),
                Err(_) => {}
            }
        }
        failed.map_or(Ok(total), Err)
    }

    /// Among reservations PostgreSQL had already decided (a redelivery), those it
    /// released must have their units back in Redis before their entries are
    /// acknowledged: a dead letter whose release script failed after the fate was
    /// recorded (a timeout, a suspended sale) comes back this way, and acknowledging it
    /// as a mere duplicate would leave its units taken for good. The release script
    /// answers "already" when it had run, so this is safe to repeat. Err (transient)
    /// keeps the entries pending.
    async fn finish_releases<'a>(
        &self,
        decided: impl Iterator<Item = &'a Reserved> + Clone,
    ) -> Result<(), ProjectError> {
        let released = ledger::released(&self.pool.get().await?, decided.clone()).await?;
        let mut redis = self.redis.clone();
        for r in decided {
            let Some(reason) = released.get(&r.reservation_id.as_uuid()) else {
                continue;
            };
            let reservation = r.reservation_id;
            match scripts::release(&mut redis, &self.keys, &self.sale, reservation, reason).await? {
                ReleaseOutcome::Released(units) => {
                    tracing::warn!(sale_id = %self.sale, reservation_id = %reservation, units, "Gave back units PostgreSQL had released and Redis had not.");
                    ::metrics::counter!(metrics::RELEASED_UNITS, "sale" => self.sale.to_string())
                        .increment(units as u64);
                }
                ReleaseOutcome::Malformed => {
                    tracing::error!(sale_id = %self.sale, reservation_id = %reservation, "Cannot give back released units: the reservation's record in Redis is unreadable.");
                    metrics::unreleasable(&self.sale);
                }
                ReleaseOutcome::AlreadyReleased(_) | ReleaseOutcome::Unknown => {}
            }
        }
        Ok(())
    }

    /// A permanent refusal: dead-letter when delivered `max_deliveries` times, else leave
    /// it pending so `XAUTOCLAIM` delivers it again after `claim_idle`.
    async fn refuse(&mut self, entry: &Entry, why: &ProjectError) {
        let reason = why.to_string();
        let deliveries = match self.deliveries(&entry.id).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %err, "XPENDING failed; the entry stays pending.");
                return;
            }
        };
        if deliveries < self.args.max_deliveries {
            tracing::info!(sale_id = %self.sale, entry_id = %entry.id, deliveries, reason, "Entry refused; will retry.");
            return;
        }
        if let Err(err) = dead_letter(
            &mut self.redis,
            &self.keys,
            &self.pool,
            &self.sale,
            GaveUp {
                consumer: &self.consumer,
                deliveries,
            },
            entry,
            &reason,
        )
        .await
        {
            metrics::transient("dead_letter");
            tracing::warn!(sale_id = %self.sale, entry_id = %entry.id, error = %err, "Dead-letter incomplete; will retry.");
        }
    }

    async fn deliveries(&mut self, id: &str) -> redis::RedisResult<u64> {
        let reply: StreamPendingCountReply = self
            .redis
            .xpending_count(&self.stream, PROJECTOR_GROUP, id, id, 1)
            .await?;
        Ok(reply.ids.first().map_or(0, |p| p.times_delivered as u64))
    }
}

/// Acknowledges `ids` on `stream` for the projectors' group, a thousand at a time.
pub(crate) async fn ack(
    redis: &mut RedisConn,
    stream: &str,
    ids: &[String],
) -> redis::RedisResult<()> {
    for chunk in ids.chunks(1_000) {
        let _: usize = redis.xack(stream, PROJECTOR_GROUP, chunk).await?;
    }
    Ok(())
}
