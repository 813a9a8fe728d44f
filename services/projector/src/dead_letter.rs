//! Giving up on an entry, in the one order that keeps every unit accounted for:
//! copy it to the dead-letter stream with the reason, record the fate *released* in
//! PostgreSQL (which wins only if no order exists), only then give the units back
//! with the idempotent release script, and acknowledge last.
//!
//! A crash between steps repeats them on redelivery: the dead-letter copy may then
//! appear twice (readers dedupe by `original_id`), the release happens at most once.
//! When Redis's record of the reservation cannot be read, nothing can be given back and
//! retrying cannot change that: a second copy says so in its reason, the entry is
//! counted (`yoink_projector_unreleasable_total`) and acknowledged. Never give units
//! back before PostgreSQL recorded the fate, and never acknowledge before the copy.

use redis::AsyncCommands;
use yoink_core::events::SaleEvent;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::scripts::{self, ReleaseOutcome};
use yoink_core::{Keyspace, RedisConn, SaleId};

use crate::entry::Entry;
use crate::error::ProjectError;
use crate::metrics;
use yoink_core::ledger::{self, Fate};

/// Who gave up on an entry, after how many deliveries: both go on the dead-letter copy
/// (`consumer`, `deliveries`), for `yoink dlq show`.
#[derive(Debug, Clone, Copy)]
pub struct GaveUp<'a> {
    pub consumer: &'a str,
    pub deliveries: u64,
}

/// Dead-letters `entry` of `sale`'s stream for `reason`.
pub async fn dead_letter(
    redis: &mut RedisConn,
    keys: &Keyspace,
    pool: &deadpool_postgres::Pool,
    sale: &SaleId,
    by: GaveUp<'_>,
    entry: &Entry,
    reason: &str,
) -> Result<(), ProjectError> {
    let stream = keys.events(sale);
    copy(redis, keys, sale, by, entry, reason).await?;

    if let Ok(SaleEvent::Reserved(reserved)) = &entry.event {
        match ledger::release(pool, &entry.id, reserved, reason).await? {
            Fate::Released => {
                let outcome =
                    scripts::release(redis, keys, sale, reserved.reservation_id, reason).await?;
                match outcome {
                    ReleaseOutcome::Malformed => {
                        let why = format!(
                            "{reason}; the reservation's record in Redis is unreadable, \
                             so nothing was given back (the units stay taken until a repair)"
                        );
                        copy(redis, keys, sale, by, entry, &why).await?;
                        metrics::unreleasable(sale);
                        tracing::error!(
                            sale_id = %sale,
                            reservation_id = %reserved.reservation_id,
                            entry_id = %entry.id,
                            reason,
                            "Reservation released in PostgreSQL, but its record in Redis is unreadable: its units stay taken."
                        );
                    }
                    outcome => {
                        tracing::warn!(
                            sale_id = %sale,
                            reservation_id = %reserved.reservation_id,
                            ?outcome,
                            reason,
                            "Reservation released after a permanent failure."
                        );
                        if let ReleaseOutcome::Released(units) = outcome {
                            ::metrics::counter!(metrics::RELEASED_UNITS, "sale" => sale.to_string())
                                .increment(units as u64);
                        }
                    }
                }
            }
            Fate::Confirmed => {
                tracing::info!(
                    reservation_id = %reserved.reservation_id,
                    "Dead-letter skipped the release: an order exists."
                );
            }
        }
    }
    let _: usize = redis.xack(&stream, PROJECTOR_GROUP, &[&entry.id]).await?;
    metrics::event("dead_lettered", 1);
    metrics::counter_dead_letter(sale);
    tracing::warn!(sale_id = %sale, entry_id = %entry.id, reason, "Entry dead-lettered.");
    Ok(())
}

/// Appends a copy of `entry` to the sale's dead-letter stream: `dead_reason`,
/// `original_id`, `consumer`, `deliveries`, then the original fields byte for byte.
async fn copy(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
    by: GaveUp<'_>,
    entry: &Entry,
    reason: &str,
) -> Result<(), ProjectError> {
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        ("dead_reason", reason.as_bytes().to_vec()),
        ("original_id", entry.id.as_bytes().to_vec()),
        ("consumer", by.consumer.as_bytes().to_vec()),
        ("deliveries", by.deliveries.to_string().into_bytes()),
    ];
    fields.extend(entry.raw_fields());
    let _: Option<String> = redis.xadd(keys.dead_letters(sale), "*", &fields).await?;
    Ok(())
}
