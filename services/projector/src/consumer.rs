//! One sale's projector loop: read new entries with `XREADGROUP`, project them in one
//! PostgreSQL transaction per batch, `XACK` after commit; on a timer, reclaim stuck
//! entries with `XAUTOCLAIM`, report pending and lag, and remove idle empty consumers;
//! on another, check that Redis has not gone back behind PostgreSQL, and rebuild the
//! sale when it is suspended.
//!
//! Never acknowledge an entry before what it stands for is committed in PostgreSQL,
//! never dead-letter on a transient error, and never commit a batch from a Redis that
//! is behind PostgreSQL: the rebuild decides those reservations.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamClaimOptions, StreamInfoConsumersReply,
    StreamInfoGroupsReply, StreamPendingCountReply, StreamReadOptions, StreamReadReply,
};
use tokio::sync::{mpsc, watch};
use yoink_core::backoff::Backoff;
use yoink_core::events::SaleEvent;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::scripts::{self, Fence};
use yoink_core::{Keyspace, Position, RedisConn, SaleId, epochs, telemetry};

use crate::ProjectorArgs;
use crate::dead_letter::dead_letter;
use crate::entry::Entry;
use crate::error::ProjectError;
use crate::metrics;
use yoink_core::rebuild;
use yoink_core::{ledger, stream};

/// What one pass over a batch decided.
#[derive(Default)]
struct Outcome {
    /// Committed (or nothing to commit): acknowledge.
    ack: Vec<String>,
    /// Refused for good this time: dead-letter once delivered often enough.
    refused: Vec<(Entry, String)>,
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
    claim_cursor: String,
    next_cleanup: Instant,
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
            claim_cursor: "0-0".into(),
            next_cleanup: Instant::now(),
            floor: Position::ZERO,
        }
    }

    /// Runs until `shutdown` turns true; the batches already delivered to this consumer
    /// are finished first.
    ///
    /// A reader task fetches the next batch while this one is committed (a channel of
    /// one batch between them), so reading never waits for PostgreSQL nor the reverse.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while let Err(err) = stream::ensure_group(&mut self.redis, &self.stream).await {
            tracing::warn!(sale_id = %self.sale, error = %err, "Cannot create the consumer group yet.");
            if backoff.wait(&mut shutdown).await {
                return;
            }
        }
        tracing::info!(sale_id = %self.sale, consumer = %self.consumer, "Projecting sale.");
        let (batches, mut incoming) = mpsc::channel::<Vec<Entry>>(1);
        let reader = Reader {
            sale: self.sale.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            batch_size: self.args.batch_size,
            block_ms: self.args.block_ms,
            conn: self.reader.clone(),
        };
        let reader = tokio::spawn(reader.run(batches, shutdown.clone()));
        let mut reclaim = tokio::time::interval(self.args.claim_interval());
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fence = tokio::time::interval(Duration::from_millis(self.args.fence_interval_ms));
        fence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fence_failing = false;
        loop {
            let stopping = *shutdown.borrow();
            tokio::select! {
                batch = incoming.recv() => match batch {
                    Some(entries) => self.handle(entries, &mut shutdown).await,
                    // The reader stopped (shutdown) and everything it read is handled.
                    None => break,
                },
                _ = reclaim.tick(), if !stopping => {
                    if let Err(err) = self.reclaim(&mut shutdown).await {
                        metrics::transient("redis");
                        tracing::warn!(sale_id = %self.sale, error = %err, "Reclaim failed.");
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
                _ = shutdown.changed(), if !stopping => {},
            }
        }
        let _ = reader.await;
        tracing::info!(sale_id = %self.sale, "Sale projector stopped.");
    }

    /// Projects `entries` until they are all committed-and-acked or refused; transient
    /// errors are retried with backoff, keeping the entries claimed by this consumer.
    async fn handle(&mut self, entries: Vec<Entry>, shutdown: &mut watch::Receiver<bool>) {
        let started = Instant::now();
        metrics::pool(&self.pool);
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
                Ok(()) => self.project(&entries).await,
                Err(err) => Err(err),
            };
            match attempt {
                Ok(outcome) => break outcome,
                Err(err) => {
                    metrics::transient(match &err {
                        ProjectError::Transient { kind, .. } => kind,
                        ProjectError::Permanent(_) => "unexpected",
                    });
                    tracing::warn!(sale_id = %self.sale, error = %err, entries = entries.len(), "Batch not committed; retrying.");
                    // Hold on to the entries: reset their idle time without counting a delivery.
                    self.touch(&entries).await;
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
            && let Err(err) = self.ack(&outcome.ack).await
        {
            // Committed but not acked: a harmless redelivery later.
            tracing::warn!(sale_id = %self.sale, error = %err, "XACK failed after commit.");
        }
        for (entry, reason) in outcome.refused {
            self.refuse(&entry, &reason).await;
        }
        metrics::pool(&self.pool);
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
            rebuild::Outcome::Busy => Err(ProjectError::Transient {
                kind: "recovering",
                detail: "another process is rebuilding the sale".into(),
            }),
        }
    }

    /// One pass: commits what it can. Err only for a transient failure.
    async fn project(&self, entries: &[Entry]) -> Result<Outcome, ProjectError> {
        let mut outcome = Outcome::default();
        let mut to_confirm = Vec::new();
        for entry in entries {
            match &entry.event {
                Ok(SaleEvent::Reserved(r)) => to_confirm.push((entry, r)),
                Ok(SaleEvent::Released { .. }) => {
                    metrics::event("released_ack", 1);
                    outcome.ack.push(entry.id.clone());
                }
                Err(err) => outcome
                    .refused
                    .push((entry.clone(), format!("malformed event: {err}"))),
            }
        }
        let batch: Vec<(&str, &yoink_core::events::Reserved)> = to_confirm
            .iter()
            .map(|(e, r)| (e.id.as_str(), *r))
            .collect();
        match ledger::confirm(&self.pool, &batch).await {
            Ok(new) => {
                metrics::event("confirmed", new);
                metrics::event("duplicate", batch.len() as u64 - new);
                outcome
                    .ack
                    .extend(to_confirm.iter().map(|(e, _)| e.id.clone()));
            }
            Err(refused) if refused.is_refusal() => {
                // One entry spoils the batch: find it by projecting one at a time.
                tracing::info!(sale_id = %self.sale, reason = %refused, "Batch refused; isolating the entry.");
                for (entry, reserved) in &to_confirm {
                    match ledger::confirm(&self.pool, &[(entry.id.as_str(), reserved)]).await {
                        Ok(new) => {
                            metrics::event("confirmed", new);
                            metrics::event("duplicate", 1 - new);
                            outcome.ack.push(entry.id.clone());
                        }
                        Err(why) if why.is_refusal() => {
                            outcome.refused.push(((*entry).clone(), why.to_string()));
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Err(err) => return Err(err.into()),
        }
        Ok(outcome)
    }

    /// A permanent refusal: dead-letter when delivered `max_deliveries` times, else leave
    /// it pending so `XAUTOCLAIM` delivers it again after `claim_idle`.
    async fn refuse(&mut self, entry: &Entry, reason: &str) {
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
            &self.consumer,
            entry,
            reason,
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

    async fn ack(&mut self, ids: &[String]) -> redis::RedisResult<()> {
        for chunk in ids.chunks(1_000) {
            let _: usize = self
                .redis
                .xack(&self.stream, PROJECTOR_GROUP, chunk)
                .await?;
        }
        Ok(())
    }

    /// `XCLAIM ... JUSTID` to ourselves: resets idle time so other projectors do not
    /// reclaim entries we are still retrying, without raising their delivery count.
    async fn touch(&mut self, entries: &[Entry]) {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let options = StreamClaimOptions::default().with_justid();
        let claimed: redis::RedisResult<redis::Value> = self
            .redis
            .xclaim_options(
                &self.stream,
                PROJECTOR_GROUP,
                &self.consumer,
                0,
                &ids,
                options,
            )
            .await;
        if let Err(err) = claimed {
            tracing::debug!(error = %err, "XCLAIM JUSTID failed.");
        }
    }

    /// Takes over entries idle longer than `claim_idle` (from dead consumers, or our
    /// own refused ones), drops deleted ones, reports pending and lag, and removes
    /// consumers that stayed idle with nothing pending.
    async fn reclaim(&mut self, shutdown: &mut watch::Receiver<bool>) -> redis::RedisResult<()> {
        let options = StreamAutoClaimOptions::default().count(self.args.batch_size);
        let reply: StreamAutoClaimReply = self
            .redis
            .xautoclaim_options(
                &self.stream,
                PROJECTOR_GROUP,
                &self.consumer,
                self.args.claim_idle_ms,
                &self.claim_cursor,
                options,
            )
            .await?;
        self.claim_cursor = reply.next_stream_id.clone();
        if !reply.deleted_ids.is_empty() {
            // Deleted from the stream while pending: nothing left to project.
            tracing::warn!(sale_id = %self.sale, count = reply.deleted_ids.len(), "Pending entries were deleted from the stream; acknowledging them.");
            metrics::event("deleted", reply.deleted_ids.len() as u64);
            self.ack(&reply.deleted_ids).await?;
        }
        if !reply.claimed.is_empty() {
            tracing::info!(sale_id = %self.sale, count = reply.claimed.len(), "Reclaimed idle entries.");
            let entries = reply.claimed.into_iter().map(Entry::from_stream).collect();
            self.handle(entries, shutdown).await;
        }
        self.report().await?;
        if Instant::now() >= self.next_cleanup {
            self.next_cleanup = Instant::now() + self.args.claim_interval() * 10;
            self.remove_idle_consumers().await?;
        }
        Ok(())
    }

    async fn report(&mut self) -> redis::RedisResult<()> {
        let groups: StreamInfoGroupsReply = self.redis.xinfo_groups(&self.stream).await?;
        if let Some(group) = groups.groups.iter().find(|g| g.name == PROJECTOR_GROUP) {
            let sale = self.sale.to_string();
            ::metrics::gauge!(metrics::PENDING, "sale" => sale.clone()).set(group.pending as f64);
            ::metrics::gauge!(metrics::LAG, "sale" => sale).set(group.lag.unwrap_or(0) as f64);
        }
        Ok(())
    }

    async fn remove_idle_consumers(&mut self) -> redis::RedisResult<()> {
        let info: StreamInfoConsumersReply = self
            .redis
            .xinfo_consumers(&self.stream, PROJECTOR_GROUP)
            .await?;
        for c in info.consumers {
            if c.name != self.consumer
                && c.pending == 0
                && c.idle as u64 > self.args.consumer_idle_delete_ms
            {
                let _: usize = self
                    .redis
                    .xgroup_delconsumer(&self.stream, PROJECTOR_GROUP, &c.name)
                    .await?;
                tracing::info!(sale_id = %self.sale, consumer = %c.name, "Removed an idle, empty consumer.");
            }
        }
        Ok(())
    }
}

/// Reads new entries of one sale stream for this consumer, on its own connection (a
/// blocking XREADGROUP would stall a shared one), and hands them over batch by batch.
struct Reader {
    sale: SaleId,
    stream: String,
    consumer: String,
    batch_size: usize,
    block_ms: u64,
    conn: RedisConn,
}

impl Reader {
    /// Reads until shutdown; never abandons a read mid-way (what Redis delivered is
    /// handed over), and drops `batches` when done so the projector knows.
    async fn run(mut self, batches: mpsc::Sender<Vec<Entry>>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while !*shutdown.borrow() {
            match self.read().await {
                Ok(entries) => {
                    backoff.reset();
                    if !entries.is_empty() && batches.send(entries).await.is_err() {
                        return;
                    }
                }
                Err(err) if err.code() == Some("NOGROUP") => {
                    // The stream or group vanished (Redis lost its data, or a repair
                    // rebuilt the sale): make the group again and carry on.
                    tracing::warn!(sale_id = %self.sale, "Consumer group missing; creating it again.");
                    if let Err(err) = stream::ensure_group(&mut self.conn, &self.stream).await {
                        tracing::warn!(sale_id = %self.sale, error = %err, "Cannot create the consumer group.");
                    }
                    if backoff.wait(&mut shutdown).await {
                        return;
                    }
                }
                Err(err) => {
                    metrics::transient("redis");
                    tracing::warn!(sale_id = %self.sale, error = %err, "XREADGROUP failed.");
                    if backoff.wait(&mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn read(&mut self) -> redis::RedisResult<Vec<Entry>> {
        let options = StreamReadOptions::default()
            .group(PROJECTOR_GROUP, &self.consumer)
            .count(self.batch_size)
            .block(self.block_ms as usize);
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream], &[">"], &options)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(Entry::from_stream)
            .collect())
    }
}
