//! One Redis handle for the whole process: a single server or a Redis Cluster.
//!
//! Both are one multiplexed, auto-reconnecting connection that pipelines concurrent
//! callers: a few hundred concurrent tasks on one such connection reach the reserve
//! script's ceiling, so a pool would add connections and nothing else. Blocking reads
//! (`XREADGROUP
//! BLOCK`) must never go through this shared handle: they would stall every caller
//! behind them. Use `dedicated()` for those.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::backoff::Backoff;
use crate::config::StoreArgs;

/// A cheap-to-clone Redis handle, single node or cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Opens the shared handle. A single-node handle connects lazily, so a process can
    /// start while Redis is down and answer 503 until it is back; a cluster handle
    /// connects now and fails if the cluster is down (one-shot commands stay strict).
    pub async fn open(args: &StoreArgs) -> redis::RedisResult<Self> {
        Self::open_with_timeout(args, Some(args.redis_timeout()), false).await
    }

    /// `open` for long-running processes: a cluster that is down at start is waited for
    /// (logged once), so processes start in any order.
    pub async fn open_waiting(args: &StoreArgs) -> redis::RedisResult<Self> {
        Self::open_with_timeout(args, Some(args.redis_timeout()), true).await
    }

    /// Opens a separate connection for blocking commands, with a response timeout of
    /// `timeout` (longer than any BLOCK it will send) or none. Long-running processes
    /// open these: a cluster that is down is waited for.
    pub async fn dedicated(
        args: &StoreArgs,
        timeout: Option<Duration>,
    ) -> redis::RedisResult<Self> {
        Self::open_with_timeout(args, timeout, true).await
    }

    async fn open_with_timeout(
        args: &StoreArgs,
        response_timeout: Option<Duration>,
        wait_for_cluster: bool,
    ) -> redis::RedisResult<Self> {
        let connect_timeout = Duration::from_millis(args.redis_timeout_ms.clamp(100, 2_000));
        if args.redis_cluster {
            let nodes: Vec<&str> = args.redis_url.split(',').map(str::trim).collect();
            let mut builder =
                redis::cluster::ClusterClient::builder(nodes).connection_timeout(connect_timeout);
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            let client = builder.build()?;
            // The cluster client connects at once (a single node connects lazily): for a
            // long-running process a cluster that is down at start is waited for, so
            // processes start in any order. Logged once; anything but an outage fails.
            let mut backoff = Backoff::new();
            let mut logged = false;
            loop {
                match client.get_async_connection().await {
                    Ok(conn) => return Ok(RedisConn::Cluster(conn)),
                    Err(err) if wait_for_cluster && is_unavailable(&err) => {
                        if !logged {
                            tracing::warn!(error = %err, "Redis Cluster unreachable; waiting for it.");
                            logged = true;
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(err) => return Err(err),
                }
            }
        } else {
            let client = redis::Client::open(args.redis_url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(response_timeout)
                // Fail fast while Redis is down: callers answer 503 and retry later,
                // the manager reconnects on the next call.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200))
                .set_pipeline_buffer_size(4096);
            Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// True when a Redis error means "Redis could not be reached or did not answer", as
/// opposed to an answer we did not like.
/// Deletes every key under `prefix` (SCAN, then one UNLINK per key: keys of different
/// sales live in different cluster slots): for a throwaway key prefix a tool made for
/// itself (`yoink demo`, `yoink bench`), never production keys.
pub async fn delete_prefixed(redis: &mut RedisConn, prefix: &str) -> redis::RedisResult<u64> {
    if prefix.is_empty() {
        return Ok(0);
    }
    let pattern = format!("{prefix}*");
    let mut deleted = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await?;
        for key in keys {
            let removed: u64 = redis::cmd("UNLINK").arg(&key).query_async(redis).await?;
            deleted += removed;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

pub fn is_unavailable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            redis::ErrorKind::Io
                | redis::ErrorKind::ClusterConnectionNotFound
                // A restarted Redis answers LOADING until its data is back in memory.
                | redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as Redis sends it, turned into the error a command would return.
    fn server_error(reply: &[u8]) -> redis::RedisError {
        match redis::parse_redis_value(reply).and_then(redis::Value::extract_error) {
            Err(err) => err,
            Ok(value) => panic!("{value:?} is not an error"),
        }
    }

    #[test]
    fn a_redis_still_loading_its_data_is_unavailable_not_a_fault() {
        let loading = server_error(b"-LOADING Redis is loading the dataset in memory\r\n");
        assert!(is_unavailable(&loading), "{loading:?}");
    }

    #[test]
    fn a_script_refusal_is_not_unavailability() {
        let refusal = server_error(b"-SOLD_OUT no stock left\r\n");
        assert!(!is_unavailable(&refusal), "{refusal:?}");
    }
}
