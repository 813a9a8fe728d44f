//! Why `yoink status` could not answer (in full or at all), and the exit code each
//! reason gets: the exit code is the command's interface, scripts branch on it.
//!
//! A store that cannot be read is not always a `StatusError`: with the other store
//! readable, the command still prints what that one says, names the missing side in
//! its `errors`, and exits `exit::STORE` itself. Every variant keeps its source.

use yoink_core::db::DbError;
use yoink_core::{IdError, SaleId};

/// Exit codes, the same numbers as `yoink reconcile` (`yoink_reconciler::error::exit`).
pub mod exit {
    /// Every figure was read.
    pub const OK: i32 = 0;
    /// A store could not be read: what the other one says was printed, if anything.
    pub const STORE: i32 = 2;
    /// The sale named with `--sale` is known to neither store.
    pub const UNKNOWN_SALE: i32 = 3;
    /// The command line itself is wrong (an id that cannot be a sale id, `--watch 0`).
    pub const USAGE: i32 = 64;
}

/// A store that could not be read, or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused, failed or timed out (`--redis-timeout-ms` per command).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The status script answered something that is not its JSON object.
    #[error("Redis answered the status script with something unreadable: {0}")]
    BadReply(#[source] serde_json::Error),
    /// PostgreSQL could not be reached or refused a query.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] DbError),
    /// A store's reads took longer than the whole pass may.
    #[error("{store} did not answer within {secs} s")]
    Timeout { store: &'static str, secs: u64 },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        StoreError::Postgres(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        StoreError::Postgres(DbError::Pool(err))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// 64: `--sale` cannot be a sale id.
    #[error("--sale {raw:?}: {source}")]
    BadSaleId {
        raw: String,
        #[source]
        source: IdError,
    },
    /// 64: a flag out of range.
    #[error("{0}")]
    BadFlag(&'static str),
    /// 3: both stores answered, and neither knows the sale.
    #[error("no sale {0} in Redis or PostgreSQL")]
    UnknownSale(SaleId),
    /// 2: neither store could be read, so there is nothing to show.
    #[error("neither store could be read: {redis}; {postgres}")]
    Unreadable {
        redis: StoreError,
        postgres: StoreError,
    },
    /// 2: stdout went away.
    #[error("writing the status: {0}")]
    Output(#[from] std::io::Error),
    /// 2: a figure could not be encoded (cannot happen with these types).
    #[error("encoding the status: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StatusError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            StatusError::BadSaleId { .. } | StatusError::BadFlag(_) => exit::USAGE,
            StatusError::UnknownSale(_) => exit::UNKNOWN_SALE,
            StatusError::Unreadable { .. } | StatusError::Output(_) | StatusError::Encode(_) => {
                exit::STORE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_reconcilers_numbers() {
        use yoink_reconciler::error::exit as reconcile;
        assert_eq!(exit::OK, reconcile::CONSISTENT);
        assert_eq!(exit::STORE, reconcile::STORE);
        assert_eq!(exit::UNKNOWN_SALE, reconcile::UNKNOWN_SALE);
        assert_eq!(exit::USAGE, reconcile::USAGE);
    }

    #[test]
    fn a_typo_an_unknown_sale_and_an_outage_exit_differently() {
        let typo = StatusError::BadSaleId {
            raw: "a b".into(),
            source: IdError::BadCharacter,
        };
        let unknown = StatusError::UnknownSale(SaleId::parse("nope").expect("valid id"));
        let refused = || {
            StoreError::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )))
        };
        let outage = StatusError::Unreadable {
            redis: refused(),
            postgres: refused(),
        };
        assert_eq!(typo.exit_code(), exit::USAGE);
        assert_eq!(StatusError::BadFlag("x").exit_code(), exit::USAGE);
        assert_eq!(unknown.exit_code(), exit::UNKNOWN_SALE);
        assert_eq!(outage.exit_code(), exit::STORE);
    }
}
