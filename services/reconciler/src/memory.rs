//! Redis memory of one sale, for `--watch`'s `yoink_sale_redis_memory_bytes`: `MEMORY
//! USAGE` of every key the sale can have, pipelined in one round trip (the keys share
//! the sale's hash tag, so on Cluster it goes to one node).
//!
//! Redis estimates a hash, set, sorted set or stream from a few sampled elements (its
//! default, 5), so the cost stays flat however large the sale grows. Never `SAMPLES 0`:
//! that walks every element, a million of them in a big sale, on Redis's one thread.

use yoink_core::{Keyspace, RedisConn, SaleId};

/// Bytes Redis reports for the sale's keys (estimated for the large ones; a key that
/// does not exist counts 0).
pub async fn sale_bytes(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> redis::RedisResult<u64> {
    let mut pipe = redis::pipe();
    for key in keys.all_of_sale(sale) {
        pipe.cmd("MEMORY").arg("USAGE").arg(key);
    }
    let each: Vec<Option<u64>> = pipe.query_async(redis).await?;
    Ok(each.into_iter().flatten().sum())
}
