//! One sale stream's upkeep, run by its sale loop every `--claim-interval-ms`: take over
//! entries idle longer than `--claim-idle-ms` with `XAUTOCLAIM` (from dead consumers, or
//! our own refused ones), acknowledge pending ids deleted from the stream, report
//! pending and lag, and remove consumers that stayed idle with nothing pending.
//!
//! It hands reclaimed entries to the sale loop and never projects nor acknowledges a
//! live entry itself; it never removes a consumer that still has entries pending, nor
//! this one.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamInfoConsumersReply, StreamInfoGroupsReply,
};
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{RedisConn, SaleId};

use crate::ProjectorArgs;
use crate::consumer::ack;
use crate::entry::Entry;
use crate::metrics;

pub struct Maintenance {
    sale: SaleId,
    stream: String,
    consumer: String,
    redis: RedisConn,
    batch_size: usize,
    claim_idle_ms: u64,
    consumer_idle_delete_ms: u64,
    /// Removing idle consumers is rarer than reclaiming: every ten claim intervals.
    cleanup_every: Duration,
    /// Where the next `XAUTOCLAIM` pass continues.
    claim_cursor: String,
    next_cleanup: Instant,
}

impl Maintenance {
    pub fn new(
        sale: SaleId,
        stream: String,
        consumer: String,
        redis: RedisConn,
        args: &ProjectorArgs,
    ) -> Self {
        Self {
            sale,
            stream,
            consumer,
            redis,
            batch_size: args.batch_size,
            claim_idle_ms: args.claim_idle_ms,
            consumer_idle_delete_ms: args.consumer_idle_delete_ms,
            cleanup_every: args.claim_interval() * 10,
            claim_cursor: "0-0".into(),
            next_cleanup: Instant::now(),
        }
    }

    /// Takes over entries idle longer than `--claim-idle-ms` and returns them for the
    /// sale loop to handle; acknowledges the ones deleted from the stream meanwhile.
    pub async fn reclaim(&mut self) -> redis::RedisResult<Vec<Entry>> {
        let options = StreamAutoClaimOptions::default().count(self.batch_size);
        let reply: StreamAutoClaimReply = self
            .redis
            .xautoclaim_options(
                &self.stream,
                PROJECTOR_GROUP,
                &self.consumer,
                self.claim_idle_ms,
                &self.claim_cursor,
                options,
            )
            .await?;
        self.claim_cursor = reply.next_stream_id.clone();
        if !reply.deleted_ids.is_empty() {
            // Deleted from the stream while pending: nothing left to project.
            tracing::warn!(sale_id = %self.sale, count = reply.deleted_ids.len(), "Pending entries were deleted from the stream; acknowledging them.");
            metrics::event("deleted", reply.deleted_ids.len() as u64);
            ack(&mut self.redis, &self.stream, &reply.deleted_ids).await?;
        }
        if !reply.claimed.is_empty() {
            tracing::info!(sale_id = %self.sale, count = reply.claimed.len(), "Reclaimed idle entries.");
        }
        Ok(reply.claimed.into_iter().map(Entry::from_stream).collect())
    }

    /// Reports pending and lag; now and then removes idle, empty consumers.
    pub async fn tidy(&mut self) -> redis::RedisResult<()> {
        self.report().await?;
        if Instant::now() >= self.next_cleanup {
            self.next_cleanup = Instant::now() + self.cleanup_every;
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
                && c.idle as u64 > self.consumer_idle_delete_ms
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
