//! The outbox relay: publishes unpublished `outbox` rows to the order-events stream and
//! marks them published, in batches locked with `FOR UPDATE SKIP LOCKED` so several
//! relays can run side by side.
//!
//! At least once: a relay killed after `XADD` and before its commit publishes those
//! rows again. Every event carries its unique `event_id`; consumers drop repeats by it.
//! Never mark a row published before its `XADD` succeeded.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use yoink_core::{Keyspace, RedisConn};

use crate::error::ProjectError;
use crate::metrics;

/// Publishes one batch; returns how many rows it published.
pub async fn publish_batch(
    pool: &Pool,
    redis: &mut RedisConn,
    keys: &Keyspace,
    batch: i64,
) -> Result<usize, ProjectError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT event_id, event_type, sale_id, payload::text,
                    (extract(epoch FROM created_at) * 1000)::bigint
             FROM outbox WHERE published_at IS NULL
             ORDER BY created_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
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
        pipe.xadd(
            &stream,
            "*",
            &[
                ("event_id", event_id.to_string()),
                ("type", event_type),
                ("sale_id", sale_id),
                ("payload", payload),
                ("created_at_ms", created_ms.to_string()),
            ],
        )
        .ignore();
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

/// Relays until shutdown; a full batch is followed at once by the next.
pub async fn run(
    pool: Pool,
    mut redis: RedisConn,
    keys: Keyspace,
    batch: i64,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_gauge = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        let published = match publish_batch(&pool, &mut redis, &keys, batch).await {
            Ok(n) => n,
            Err(err) => {
                metrics::transient("relay");
                tracing::warn!(error = %err, "Outbox relay failed; will retry.");
                0
            }
        };
        if tokio::time::Instant::now() >= next_gauge {
            next_gauge = tokio::time::Instant::now() + Duration::from_secs(2);
            if let Ok(n) = unpublished(&pool).await {
                ::metrics::gauge!(metrics::OUTBOX_UNPUBLISHED).set(n as f64);
            }
        }
        if published as i64 >= batch {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {},
            _ = shutdown.changed() => {},
        }
    }
}
