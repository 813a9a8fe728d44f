//! A run's own scratch space on stores it was given (`yoink demo`, `yoink bench`,
//! `yoink nemesis`): a database and a Redis key prefix of its own, removed when the run
//! is over. Must never touch anything outside them: it deletes only keys under the
//! prefix and drops only the database the URL names.

use crate::config::StoreArgs;
use crate::db::{self, DbError};
use crate::redis_store::{self, RedisConn};

/// Deletes every key under `stores.key_prefix` and drops `stores.database_url`'s
/// database. Generic over the caller's error, which converts from both stores' errors.
pub async fn discard<E>(stores: &StoreArgs) -> Result<(), E>
where
    E: From<redis::RedisError> + From<DbError>,
{
    let mut redis = RedisConn::open(stores).await?;
    redis_store::delete_prefixed(&mut redis, &stores.key_prefix).await?;
    db::drop_database(&stores.database_url).await?;
    Ok(())
}
