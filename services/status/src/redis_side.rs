//! The Redis side of `yoink status`: which sales Redis knows, and one sale's figures in
//! one atomic call of `status_snapshot.lua`. Read-only, and bounded per sale whatever
//! the backlog: the pending list is never walked (only its oldest entry is read), so
//! the call stays well inside `--redis-timeout-ms` during a live sale with a huge
//! pending list. Must never write, nor run a command whose cost grows with the stream.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};
use serde::Deserialize;
use yoink_core::keys::PROJECTOR_GROUP;
use yoink_core::{Keyspace, RedisConn, SaleId};

use crate::error::StoreError;

static STATUS_SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("status_snapshot.lua")));

/// Most consumers listed per sale (those with most pending first; all are counted).
pub const MAX_CONSUMERS: usize = 32;

/// `status_snapshot.lua`'s reply, as it comes (see the script's header).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedisReading {
    pub now_ms: i64,
    pub meta_exists: bool,
    pub initial: Option<String>,
    pub reserved: Option<String>,
    pub released: Option<String>,
    pub suspended: bool,
    pub stock: Option<String>,
    pub stream_exists: bool,
    pub stream_length: i64,
    pub group: Option<GroupReading>,
    pub first_undelivered_id: Option<String>,
    pub dead_letters: i64,
    pub oldest_dead: Option<DeadReading>,
}

/// The projectors' group on the sale's stream.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupReading {
    pub pending: i64,
    pub consumers: i64,
    pub last_delivered_id: String,
    pub lag: Option<i64>,
    pub oldest_pending: Option<PendingReading>,
    #[serde(default)]
    pub consumer_list: Vec<ConsumerReading>,
}

/// The oldest pending entry (`XPENDING key group - + 1`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PendingReading {
    pub id: String,
    pub consumer: String,
    pub idle_ms: i64,
    pub deliveries: i64,
}

/// One consumer of the group (`XINFO CONSUMERS`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConsumerReading {
    pub name: String,
    pub pending: i64,
    pub idle_ms: i64,
    /// Redis 7.2+ only: milliseconds since its last successful read.
    pub inactive_ms: Option<i64>,
}

/// The oldest dead letter.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeadReading {
    pub id: String,
    pub reason: String,
}

impl RedisReading {
    /// Redis holds something of the sale.
    pub fn knows_sale(&self) -> bool {
        self.meta_exists || self.stream_exists
    }
}

/// Every sale id in the registry (`yoink:sales`), or, for one sale, whether it is
/// registered there.
pub async fn registered(
    redis: &mut RedisConn,
    keys: &Keyspace,
    only: Option<&SaleId>,
) -> Result<Vec<String>, StoreError> {
    Ok(match only {
        Some(sale) => {
            let member: bool = redis
                .sismember(keys.sales_registry(), sale.as_str())
                .await?;
            if member {
                vec![sale.as_str().to_owned()]
            } else {
                Vec::new()
            }
        }
        None => redis.smembers(keys.sales_registry()).await?,
    })
}

/// One sale's Redis figures, in one atomic, read-only step.
pub async fn read_sale(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sale: &SaleId,
) -> Result<RedisReading, StoreError> {
    let reply: String = STATUS_SNAPSHOT
        .key(keys.meta(sale))
        .key(keys.stock(sale))
        .key(keys.events(sale))
        .key(keys.dead_letters(sale))
        .arg(PROJECTOR_GROUP)
        .arg(MAX_CONSUMERS)
        .invoke_async(redis)
        .await?;
    serde_json::from_str(&reply).map_err(StoreError::BadReply)
}

/// The millisecond part of a stream id (`1764180000123-0` → 1764180000123).
pub fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next().and_then(|ms| ms.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_flagged_read_only_and_its_header_names_every_key_and_arg() {
        let script = include_str!("status_snapshot.lua");
        // The flag is what makes Redis refuse a write: it must stay the first line.
        assert!(script.starts_with("#!lua flags=no-writes\n"));
        for name in [
            "KEYS[1]", "KEYS[2]", "KEYS[3]", "KEYS[4]", "ARGV[1]", "ARGV[2]",
        ] {
            assert!(script.contains(&format!("{name}  ")), "header lacks {name}");
        }
        assert!(!script.contains("KEYS[5]") && !script.contains("ARGV[3]"));
    }

    #[test]
    fn a_stream_id_gives_its_milliseconds() {
        assert_eq!(id_ms("1764180000123-7"), Some(1_764_180_000_123));
        assert_eq!(id_ms("5"), Some(5));
        assert_eq!(id_ms("x-1"), None);
    }

    #[test]
    fn the_scripts_reply_parses_with_absent_keys_as_none() {
        let minimal = r#"{"stream_length":0,"suspended":false,"dead_letters":0,
                          "stream_exists":false,"now_ms":1795716369119,"meta_exists":false}"#;
        let r: RedisReading = serde_json::from_str(minimal).expect("parses");
        assert!(!r.knows_sale() && r.group.is_none() && r.stock.is_none());

        let full = r#"{"initial":"10","reserved":"3","suspended":false,"released":"0",
            "now_ms":1795716369109,"meta_exists":true,"stream_length":3,
            "oldest_dead":{"id":"1795716369100-0","reason":"bad thing"},
            "first_undelivered_id":"1795716369037-0",
            "group":{"last_delivered_id":"1795716368985-0","consumers":2,
              "oldest_pending":{"id":"1795716368985-0","deliveries":1,"consumer":"ghost","idle_ms":18},
              "pending":1,"consumer_list":[{"pending":1,"name":"ghost","idle_ms":18},
              {"pending":0,"name":"idle1","idle_ms":14,"inactive_ms":3}],"lag":2},
            "stream_exists":true,"dead_letters":1,"stock":"7"}"#;
        let r: RedisReading = serde_json::from_str(full).expect("parses");
        let group = r.group.expect("group");
        assert_eq!(group.lag, Some(2));
        assert_eq!(group.consumer_list.len(), 2);
        assert_eq!(group.consumer_list[1].inactive_ms, Some(3));
        assert_eq!(group.oldest_pending.expect("pending").consumer, "ghost");
        assert_eq!(r.oldest_dead.expect("dead").reason, "bad thing");
    }
}
