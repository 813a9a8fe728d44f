//! The reader of one sale's stream: `XREADGROUP ... >` for this consumer on its own
//! connection (a blocking read on the shared one would stall it), handing the entries
//! to the sale loop batch by batch, one batch ahead of the one being committed.
//!
//! Everything it read is held (kept claimed, see `held`) from the moment Redis
//! delivered it. Never drop entries Redis delivered: a read is never abandoned mid-way,
//! and what it returned is handed over (or, when the sale loop is gone, left pending
//! for `XAUTOCLAIM`).

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::{mpsc, watch};
use yoink_core::backoff::Backoff;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{RedisConn, SaleId, stream};

use crate::entry::Entry;
use crate::held::Held;
use crate::metrics;

pub struct Reader {
    pub sale: SaleId,
    pub stream: String,
    pub consumer: String,
    pub batch_size: usize,
    pub block_ms: u64,
    /// A connection of its own, for the blocking read.
    pub conn: RedisConn,
    pub held: Held,
}

impl Reader {
    /// Reads until shutdown, and drops `batches` when done so the sale loop knows.
    /// Stops too when the sale loop is gone (it panicked): reading on would take entries
    /// nobody handles.
    pub async fn run(
        mut self,
        batches: mpsc::Sender<Vec<Entry>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new();
        while !*shutdown.borrow() && !batches.is_closed() {
            match self.read().await {
                Ok(entries) => {
                    backoff.reset();
                    if entries.is_empty() {
                        continue;
                    }
                    self.held.hold(entries.iter().map(|e| e.id.as_str()));
                    if batches.send(entries).await.is_err() {
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
