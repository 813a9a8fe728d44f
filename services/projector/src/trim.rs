//! Redis holds what is in flight, not history: each sale's loop trims the stream
//! entries PostgreSQL already has (`trim.lua`, one atomic `XTRIM MINID` step), at most
//! `--trim-batch` entries per pass, every `--trim-interval-ms`.
//!
//! What stays: every pending, undelivered or dead-lettered entry (and, while a sale has
//! dead letters, its whole stream), the last delivered entry, anything while the sale is
//! suspended (a rebuild reads it), and up to one stream node (100 entries) of acknowledged
//! ones. It never removes an entry past PostgreSQL's high-water mark for the sale.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use redis::Script;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{Keyspace, Position, RedisConn, SaleId};

use crate::error::ProjectError;
use crate::metrics;

static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("trim.lua")));

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trimmed {
    /// `removed` entries went (0 when none was old enough); every entry before `minid`
    /// is gone, but for up to one stream node.
    Removed { removed: u64, minid: String },
    /// Nothing went, for `reason` (see `trim.lua`).
    Kept { reason: String },
}

/// One sale's trimming, paced by `every`; `batch` 0 turns it off.
pub struct Trim {
    sale: SaleId,
    keys: Keyspace,
    redis: RedisConn,
    pool: Pool,
    batch: u64,
    every: Duration,
    next: Instant,
}

impl Trim {
    pub fn new(
        sale: SaleId,
        keys: Keyspace,
        redis: RedisConn,
        pool: Pool,
        batch: u64,
        every: Duration,
    ) -> Self {
        Self {
            sale,
            keys,
            redis,
            pool,
            batch,
            every,
            next: Instant::now(),
        }
    }

    /// Trims when a pass is due; `None` when it was not (or trimming is off).
    pub async fn when_due(&mut self) -> Option<Result<Trimmed, ProjectError>> {
        if self.batch == 0 || Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + self.every;
        Some(self.run_once().await)
    }

    /// One pass, now.
    pub async fn run_once(&mut self) -> Result<Trimmed, ProjectError> {
        let hwm = high_water_mark(&self.pool, &self.sale).await?;
        let (code, removed, detail): (String, u64, String) = TRIM
            .key(self.keys.events(&self.sale))
            .key(self.keys.dead_letters(&self.sale))
            .key(self.keys.meta(&self.sale))
            .arg(PROJECTOR_GROUP)
            .arg(hwm.epoch)
            .arg(hwm.seq)
            .arg(self.batch)
            .invoke_async(&mut self.redis)
            .await?;
        Ok(if code == "trimmed" {
            metrics::trimmed(&self.sale, removed);
            Trimmed::Removed {
                removed,
                minid: detail,
            }
        } else {
            Trimmed::Kept { reason: detail }
        })
    }
}

/// The newest position PostgreSQL decided for `sale` (`sales.hwm_*`; ZERO for a sale it
/// does not know, which keeps every entry with a position).
async fn high_water_mark(pool: &Pool, sale: &SaleId) -> Result<Position, ProjectError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT hwm_epoch, hwm_seq FROM sales WHERE sale_id = $1",
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.map_or(Position::ZERO, |r| Position::new(r.get(0), r.get(1))))
}
