//! Why an entry was not projected (or dead-lettered, or an outbox batch not relayed),
//! typed where the error arose and keeping its source, and the one place that decides
//! its class.
//!
//! A transient error passes by itself (a store down, a timeout, an exhausted pool, a
//! rebuild under way): the entries stay pending and are retried; it must never lead to
//! a dead letter. A permanent error belongs to the entry (garbage, a reservation
//! PostgreSQL refuses): it is retried up to `--max-deliveries`, then dead-lettered.
//! Never call an error permanent unless it is known to be about the entry: one that may
//! be ours or a server's is transient.

use yoink_core::events::EventError;
use yoink_core::ledger::LedgerError;
use yoink_core::rebuild::RecoveryError;

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// Permanent: the entry is not an event we know (its reason goes on the dead letter).
    #[error("malformed event: {0}")]
    Malformed(#[from] EventError),
    /// PostgreSQL (the ledger, a sale's floor, the outbox), classified by the ledger:
    /// permanent when PostgreSQL refused the rows (SQLSTATE class 22 or 23), transient
    /// otherwise (down, a timeout, the pool).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Transient: Redis failed or timed out.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Transient: rebuilding a suspended sale from PostgreSQL failed; the next attempt
    /// starts over.
    #[error("rebuilding the sale: {0}")]
    Recovery(#[from] RecoveryError),
    /// Transient: the sale is suspended and another process is rebuilding it; batches
    /// wait for the rebuild.
    #[error("the sale is suspended and another process is rebuilding it")]
    RebuildInProgress,
}

impl ProjectError {
    /// True when retrying can never succeed: the entry is refused for good and is
    /// dead-lettered after `--max-deliveries`.
    pub fn is_permanent(&self) -> bool {
        match self {
            ProjectError::Malformed(_) => true,
            ProjectError::Ledger(err) => err.is_refusal(),
            // A rebuild's failure is never a verdict on the entry in hand.
            ProjectError::Redis(_)
            | ProjectError::Recovery(_)
            | ProjectError::RebuildInProgress => false,
        }
    }

    /// The `kind` label of `yoink_projector_transient_errors_total` (a closed set).
    pub fn kind(&self) -> &'static str {
        match self {
            ProjectError::Malformed(_) => "malformed",
            ProjectError::Ledger(_) => "postgres",
            ProjectError::Redis(_) => "redis",
            ProjectError::Recovery(_) | ProjectError::RebuildInProgress => "recovering",
        }
    }
}

// PostgreSQL outside the ledger's own calls (a sale's floor, the outbox) is classified
// the way the ledger classifies it, so a refusal means the same everywhere.
impl From<tokio_postgres::Error> for ProjectError {
    fn from(err: tokio_postgres::Error) -> Self {
        ProjectError::Ledger(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for ProjectError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ProjectError::Ledger(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_permanent_and_store_failures_are_transient() {
        let garbage = ProjectError::from(EventError::UnknownType("bought".into()));
        assert!(garbage.is_permanent());
        assert_eq!(
            garbage.to_string(),
            "malformed event: unknown event type `bought`"
        );

        let redis_down = ProjectError::from(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!redis_down.is_permanent());
        assert_eq!(redis_down.kind(), "redis");

        let pool_timeout = ProjectError::from(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert!(!pool_timeout.is_permanent());
        assert_eq!(pool_timeout.kind(), "postgres");

        assert!(!ProjectError::RebuildInProgress.is_permanent());
        assert_eq!(ProjectError::RebuildInProgress.kind(), "recovering");
    }
}
