//! Why a reconcile run could not finish, and the exit code each reason gets (the exit
//! code is `yoink reconcile`'s interface: scripts and supervisors branch on it).
//!
//! Every variant keeps its source; the binary prints the chain in one line.

use yoink_core::db::DbError;
use yoink_core::ledger::LedgerError;
use yoink_core::rebuild::RecoveryError;
use yoink_core::{IdError, SaleId};

/// Exit codes: 0 consistent, 1 flagged (diverged, oversold, recovering, data lost,
/// holds overdue: `Verdict`), these below for a run that could not finish, and 64 for a
/// command-line error (`EX_USAGE`, set by the binary for every subcommand).
pub mod exit {
    /// Every sale checked is consistent (or only in flight).
    pub const CONSISTENT: i32 = 0;
    /// At least one sale is flagged (`report::Status::is_flagged`), whichever the kind.
    pub const FLAGGED: i32 = 1;
    /// A store could not be read (or, during a repair, written).
    pub const STORE: i32 = 2;
    /// The sale named with `--sale` is known to neither store.
    pub const UNKNOWN_SALE: i32 = 3;
    /// The command line itself is wrong (an id that cannot be a sale id, ...).
    pub const USAGE: i32 = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Redis unreachable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL unreachable: {0}")]
    Db(#[from] DbError),
    #[error("repairing the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("sale {sale}: rebuilding Redis from PostgreSQL: {source}")]
    Rebuild {
        sale: SaleId,
        #[source]
        source: RecoveryError,
    },
    #[error("sale {0}: another process is rebuilding it; run the repair again")]
    RebuildBusy(SaleId),
    #[error("--sale {raw:?}: {source}")]
    BadSaleId {
        raw: String,
        #[source]
        source: IdError,
    },
    #[error("no sale {0} in Redis or PostgreSQL")]
    UnknownSale(SaleId),
    #[error("Redis answered the snapshot script with {0}")]
    BadSnapshot(&'static str),
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    MetricsListen(#[from] yoink_core::telemetry::MetricsListenError),
    #[error("{0}")]
    BadFlag(&'static str),
    #[error("publishing the metrics address (--metrics-sd-dir): {0}")]
    Publish(#[source] std::io::Error),
}

impl ReconcileError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReconcileError::BadSaleId { .. } | ReconcileError::BadFlag(_) => exit::USAGE,
            ReconcileError::UnknownSale(_) => exit::UNKNOWN_SALE,
            _ => exit::STORE,
        }
    }
}

impl From<tokio_postgres::Error> for ReconcileError {
    fn from(err: tokio_postgres::Error) -> Self {
        ReconcileError::Db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for ReconcileError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ReconcileError::Db(DbError::Pool(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_and_an_outage_exit_differently() {
        let typo = ReconcileError::UnknownSale(SaleId::parse("typo").expect("id"));
        let garbage = ReconcileError::BadSaleId {
            raw: "a b".into(),
            source: IdError::BadCharacter,
        };
        let outage = ReconcileError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(typo.exit_code(), exit::UNKNOWN_SALE);
        assert_eq!(garbage.exit_code(), exit::USAGE);
        assert_eq!(outage.exit_code(), exit::STORE);
        assert_ne!(exit::UNKNOWN_SALE, exit::STORE);
    }

    #[test]
    fn every_flagged_status_exits_1_apart_from_every_failure() {
        use crate::Verdict;
        use crate::report::Status;
        for status in [
            Status::Diverged,
            Status::Recovering,
            Status::HoldsOverdue,
            Status::DataLost,
            Status::Oversold,
        ] {
            assert!(status.is_flagged(), "{status:?}");
        }
        for status in [Status::Consistent, Status::InFlight, Status::Unsettled] {
            assert!(!status.is_flagged(), "{status:?}");
        }
        assert_eq!(Verdict::Flagged.exit_code(), exit::FLAGGED);
        assert_eq!(Verdict::Consistent.exit_code(), exit::CONSISTENT);
        for failure in [exit::STORE, exit::UNKNOWN_SALE, exit::USAGE] {
            assert_ne!(failure, exit::FLAGGED);
            assert_ne!(failure, exit::CONSISTENT);
        }
    }
}
