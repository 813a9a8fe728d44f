//! Why a `yoink dlq` run could not finish, and the exit code each reason gets: the exit
//! code is the command's interface (scripts branch on it), so a typo, an unknown entry
//! and an outage never share one.
//!
//! Entries that were looked at and are not resolved (still failing, released for good,
//! stopped by the loop guard) are not errors: they are outcomes, and `replay` exits 1
//! for them. Every variant here keeps its source; the binary prints the chain.

use yoink_core::db::DbError;
use yoink_core::ledger::LedgerError;
use yoink_core::{IdError, SaleId};

/// Exit codes of `yoink dlq` (the numbers `yoink reconcile` uses for the same meanings).
pub mod exit {
    /// Done: listed, shown, purged, or every entry replayed resolved (or had nothing to
    /// do).
    pub const DONE: i32 = 0;
    /// `replay` only: at least one entry is not resolved (`still_failing`,
    /// `released_final`, `loop_guard`).
    pub const UNRESOLVED: i32 = 1;
    /// Redis or PostgreSQL could not be read or written (or the sale is suspended while
    /// it is rebuilt): nothing is wrong with the entries, try again.
    pub const STORE: i32 = 2;
    /// The sale or the entry named does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// The command line is wrong (`EX_USAGE`, as for every `yoink` subcommand).
    pub const USAGE: i32 = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// 2: Redis failed or timed out.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// 2: PostgreSQL unreachable or failing (its own text says PostgreSQL).
    #[error(transparent)]
    Db(#[from] DbError),
    /// 2: the ledger failed in a way that may pass (a refusal is an outcome instead).
    #[error("writing the ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// 2: the sale is suspended (Redis went back behind PostgreSQL) until a projector
    /// rebuilds it; nothing may be projected meanwhile.
    #[error("sale {0} is suspended while it is rebuilt from PostgreSQL; replay once it resumes")]
    SaleSuspended(SaleId),
    /// 64: an ENTRY that is not `SALE/ID` (or `ID` with `--sale`).
    #[error("entry {raw:?}: {why}")]
    BadEntry { raw: String, why: &'static str },
    /// 64: a sale id that cannot be one.
    #[error("sale {raw:?}: {source}")]
    BadSaleId {
        raw: String,
        #[source]
        source: IdError,
    },
    /// 64: flags that do not go together (or a missing `--yes`).
    #[error("{0}")]
    BadFlags(&'static str),
    /// 3: neither store knows the sale.
    #[error("no sale {0} in Redis or PostgreSQL")]
    UnknownSale(SaleId),
    /// 3: the sale has no such dead letter (never, or replayed or purged since).
    #[error("no dead letter {id} in sale {sale}")]
    NoSuchEntry { sale: SaleId, id: String },
    /// 2: stdout could not be written.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    /// 2: the JSON output could not be encoded.
    #[error("encoding the output: {0}")]
    Encode(#[from] serde_json::Error),
}

impl DlqError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DlqError::BadEntry { .. } | DlqError::BadSaleId { .. } | DlqError::BadFlags(_) => {
                exit::USAGE
            }
            DlqError::UnknownSale(_) | DlqError::NoSuchEntry { .. } => exit::NOT_FOUND,
            DlqError::Redis(_)
            | DlqError::Db(_)
            | DlqError::Ledger(_)
            | DlqError::SaleSuspended(_)
            | DlqError::Output(_)
            | DlqError::Encode(_) => exit::STORE,
        }
    }
}

impl From<tokio_postgres::Error> for DlqError {
    fn from(err: tokio_postgres::Error) -> Self {
        DlqError::Db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for DlqError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        DlqError::Db(DbError::Pool(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_a_missing_entry_and_an_outage_exit_differently() {
        let sale = SaleId::parse("s1").expect("valid id");
        let typo = DlqError::BadEntry {
            raw: "nope".into(),
            why: "no sale",
        };
        let missing = DlqError::NoSuchEntry {
            sale: sale.clone(),
            id: "1-0".into(),
        };
        let outage = DlqError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(typo.exit_code(), exit::USAGE);
        assert_eq!(missing.exit_code(), exit::NOT_FOUND);
        assert_eq!(
            DlqError::UnknownSale(sale.clone()).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(outage.exit_code(), exit::STORE);
        assert_eq!(DlqError::SaleSuspended(sale).exit_code(), exit::STORE);
        for failure in [exit::STORE, exit::NOT_FOUND, exit::USAGE] {
            assert_ne!(failure, exit::DONE);
            assert_ne!(failure, exit::UNRESOLVED);
        }
    }
}
