//! The outbox relay: publishes unpublished `outbox` rows to the order-events stream and
//! marks them published, in batches locked with `FOR UPDATE SKIP LOCKED` so several
//! relays can run side by side.
//!
//! At least once: a relay killed after `XADD` and before its commit publishes those
//! rows again. Every event carries its unique `event_id`; consumers drop repeats by it.
//! While a store is down it retries with the shared backoff and says so once per
//! outage, not once per attempt. Never mark a row published before its `XADD` succeeded.

use std::time::Duration;

use deadpool_postgres::Pool;
use redis::streams::StreamMaxlen;
use tokio::sync::watch;
use yoink_core::backoff::Backoff;
use yoink_core::{Keyspace, RedisConn};

use crate::error::ProjectError;
use crate::metrics;

/// The relay's settings, the same flags in `yoink project` and `yoink relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Outbox rows published per relay transaction.
    #[arg(
        id = "relay_batch",
        long = "relay-batch",
        value_name = "RELAY_BATCH",
        env = "YOINK_RELAY_BATCH",
        default_value_t = 500
    )]
    pub batch: i64,
    /// Milliseconds between relay passes when the outbox is drained.
    #[arg(
        id = "relay_interval_ms",
        long = "relay-interval-ms",
        value_name = "RELAY_INTERVAL_MS",
        env = "YOINK_RELAY_INTERVAL_MS",
        default_value_t = 200
    )]
    pub interval_ms: u64,
    /// Most entries the order-events stream keeps (`XADD MAXLEN ~`): Redis holds what
    /// consumers have yet to read, not history (the `outbox` table keeps every event).
    /// 0 keeps them all.
    #[arg(
        long = "order-events-max-len",
        value_name = "ORDER_EVENTS_MAX_LEN",
        env = "YOINK_ORDER_EVENTS_MAX_LEN",
        default_value_t = 100_000
    )]
    pub order_events_max_len: usize,
}

impl RelayArgs {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// A batch of 0 or fewer rows would never drain the outbox (and 0 would spin).
    pub fn check(&self) -> Result<(), String> {
        if self.batch <= 0 {
            return Err(format!("--relay-batch ({}) must be > 0", self.batch));
        }
        Ok(())
    }
}

/// Publishes one batch; returns how many rows it published.
pub async fn publish_batch(
    pool: &Pool,
    redis: &mut RedisConn,
    keys: &Keyspace,
    batch: i64,
    max_len: usize,
) -> Result<usize, ProjectError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            // An order's row names its reservation and the event is built here from
            // the fate, which is never updated (the ledger keeps the projection's
            // write small); a fate deleted by hand since still yields an event that
            // names the reservation.
            "SELECT o.event_id, o.event_type, o.sale_id,
                    coalesce(o.payload,
                             CASE WHEN f.reservation_id IS NOT NULL THEN
                                 jsonb_build_object('order_id', f.order_id,
                                                    'reservation_id', f.reservation_id,
                                                    'sale_id', f.sale_id, 'user_id', f.user_id,
                                                    'quantity', f.quantity,
                                                    'reserved_at', f.reserved_at)
                             END,
                             jsonb_build_object('reservation_id', o.reservation_id,
                                                'sale_id', o.sale_id))::text,
                    (extract(epoch FROM o.created_at) * 1000)::bigint
             FROM outbox o
             LEFT JOIN reservation_fates f
                    ON o.payload IS NULL AND f.reservation_id = o.reservation_id
             WHERE o.published_at IS NULL
             ORDER BY o.created_at
             LIMIT $1
             FOR UPDATE OF o SKIP LOCKED",
            &[&batch],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let stream = keys.order_events();
    let mut pipe = redis::pipe();
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id: uuid::Uuid = row.get(0);
        let event_type: String = row.get(1);
        let sale_id: String = row.get(2);
        let payload: String = row.get(3);
        let created_ms: i64 = row.get(4);
        let fields = [
            ("event_id", event_id.to_string()),
            ("type", event_type),
            ("sale_id", sale_id),
            ("payload", payload),
            ("created_at_ms", created_ms.to_string()),
        ];
        if max_len == 0 {
            pipe.xadd(&stream, "*", &fields).ignore();
        } else {
            pipe.xadd_maxlen(&stream, StreamMaxlen::Approx(max_len), "*", &fields)
                .ignore();
        }
        ids.push(event_id);
    }
    pipe.query_async::<()>(redis).await?;
    tx.execute(
        "UPDATE outbox SET published_at = now() WHERE event_id = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.commit().await?;
    ::metrics::counter!(metrics::OUTBOX_PUBLISHED).increment(ids.len() as u64);
    Ok(ids.len())
}

/// Rows still waiting to be published.
pub async fn unpublished(pool: &Pool) -> Result<i64, ProjectError> {
    let client = pool.get().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await?
        .get(0))
}

/// Relays until shutdown; a full batch is followed at once by the next, a failure by a
/// growing wait (reset by the next success).
pub async fn run(
    pool: Pool,
    mut redis: RedisConn,
    keys: Keyspace,
    args: RelayArgs,
    mut shutdown: watch::Receiver<bool>,
) {
    metrics::describe_relay();
    let mut backoff = Backoff::new();
    let mut failing = false;
    let mut next_gauge = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        let published = match publish_batch(
            &pool,
            &mut redis,
            &keys,
            args.batch,
            args.order_events_max_len,
        )
        .await
        {
            Ok(n) => n,
            Err(err) => {
                metrics::transient("relay");
                // Once per outage: a line per attempt would say nothing new.
                if failing {
                    tracing::debug!(error = %err, "Outbox relay still failing.");
                } else {
                    failing = true;
                    tracing::warn!(error = %err, "Outbox relay failed; retrying with backoff.");
                }
                if backoff.wait(&mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        if failing {
            failing = false;
            tracing::info!("Outbox relay publishing again.");
        }
        backoff.reset();
        if tokio::time::Instant::now() >= next_gauge {
            next_gauge = tokio::time::Instant::now() + Duration::from_secs(2);
            if let Ok(n) = unpublished(&pool).await {
                ::metrics::gauge!(metrics::OUTBOX_UNPUBLISHED).set(n as f64);
            }
        }
        if published as i64 >= args.batch {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval()) => {},
            _ = shutdown.changed() => {},
        }
    }
}
