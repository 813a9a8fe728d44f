//! The expiry sweep of one sale with holds: every `--expiry-interval-ms`, the holds Redis
//! finds past their deadline (its `holds` set, scored by `expires_at_ms`) are expired in
//! PostgreSQL, and what PostgreSQL decided is applied in Redis.
//!
//! PostgreSQL decides (`holds::expire_due`, under each hold's row lock): a hold confirmed,
//! cancelled or extended meanwhile is not expired, and every projector may sweep the same
//! sale at once, because only one transaction moves a hold out of `held`. Redis then
//! follows each hold's standing (`holds::apply`, idempotent): units back for an expiry
//! or a cancel whose own apply was lost, the confirm, or the new deadline. So a process
//! killed between the two steps leaves the hold in the set, and the next sweep, here or
//! in another projector, finishes it. Never release a unit PostgreSQL has not released.

use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use yoink_core::holds::{self, Applied, FromRedis, HoldError};
use yoink_core::{Keyspace, RedisConn, ReservationId, SaleId};

use crate::metrics;

/// One sale's sweep.
pub struct ExpirySweep {
    pub sale: SaleId,
    pub keys: Keyspace,
    pub redis: RedisConn,
    pub pool: Pool,
    /// Most due holds decided per pass.
    pub batch: usize,
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Holds Redis found due.
    pub due: usize,
    /// Holds whose units went back on sale in this pass.
    pub released: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ExpirySweep {
    /// One pass. Err (transient: a store is down) leaves every hold where it was.
    pub async fn run_once(&mut self) -> Result<Swept, HoldError> {
        let key = self.keys.holds(&self.sale);
        let waiting: i64 = self.redis.zcard(&key).await?;
        ::metrics::gauge!(holds::ACTIVE, "sale" => self.sale.to_string()).set(waiting as f64);
        if waiting == 0 {
            return Ok(Swept::default());
        }
        let due: Vec<(String, f64)> = self
            .redis
            .zrangebyscore_limit_withscores(&key, "-inf", now_ms(), 0, self.batch as isize)
            .await?;
        let ids: Vec<ReservationId> = due
            .iter()
            .filter_map(|(id, _)| ReservationId::parse(id).ok())
            .collect();
        if ids.is_empty() {
            return Ok(Swept::default());
        }
        let standing = holds::expire_due(&self.pool, &ids).await?;
        let mut swept = Swept {
            due: ids.len(),
            released: 0,
        };
        for (hold, _expired_now) in &standing {
            if let Applied::UnitsBack(units) =
                holds::apply(&mut self.redis, &self.keys, hold).await?
            {
                swept.released += 1;
                ::metrics::counter!(metrics::RELEASED_UNITS, "sale" => self.sale.to_string())
                    .increment(units as u64);
                if hold.state == holds::HoldState::Expired {
                    let lag_ms = (now_ms() - hold.expires_at_ms).max(0);
                    ::metrics::histogram!(holds::EXPIRY_LAG_SECONDS).record(lag_ms as f64 / 1000.0);
                }
            }
        }
        // Due in Redis but not recorded in PostgreSQL yet: the projector has not reached
        // its `reserved` entry (it is behind, or the entry keeps failing). Record it from
        // Redis so the next pass can decide it.
        if standing.len() < ids.len() {
            for id in ids.iter().filter(|id| {
                !standing
                    .iter()
                    .any(|(h, _)| h.reserved.reservation_id == **id)
            }) {
                match holds::record_from_redis(
                    &mut self.redis,
                    &self.keys,
                    &self.pool,
                    &self.sale,
                    *id,
                )
                .await
                {
                    Ok(FromRedis::Recorded) => {}
                    Ok(FromRedis::NotAHold | FromRedis::Unknown) => {
                        // Nothing of it to expire: drop the stray member.
                        let _: i64 = self.redis.zrem(&key, id.to_string()).await?;
                    }
                    Err(HoldError::Unreadable(id, why)) => {
                        tracing::error!(sale_id = %self.sale, reservation_id = %id, why, "A due hold cannot be read back; it stays held.");
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(swept)
    }
}
