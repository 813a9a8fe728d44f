//! The two failure classes of projection, decided where errors arise.
//!
//! A transient error passes by itself (a store down, a timeout, an exhausted pool): the
//! entries stay pending and are retried; it must never lead to a dead letter. A
//! permanent error belongs to the entry (garbage, a reservation PostgreSQL refuses): it
//! is retried up to `--max-deliveries`, then dead-lettered.

use yoink_core::db;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectError {
    /// Retry later; never dead-letter.
    #[error("transient ({kind}): {detail}")]
    Transient { kind: &'static str, detail: String },
    /// This entry can never be projected.
    #[error("{0}")]
    Permanent(String),
}

impl ProjectError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ProjectError::Transient { .. })
    }
}

impl From<tokio_postgres::Error> for ProjectError {
    fn from(err: tokio_postgres::Error) -> Self {
        // Integrity (23) and data (22) errors are PostgreSQL refusing this data: they
        // will not pass by retrying. Anything else, including errors we did not expect,
        // is treated as transient: an entry is never given up on for a reason that may
        // be ours or the server's.
        let permanent = err
            .code()
            .is_some_and(|c| matches!(&c.code()[..2], "22" | "23"));
        if permanent && !db::is_transient(&err) {
            let detail = err
                .as_db_error()
                .map(|e| format!("{}: {}", e.code().code(), e.message()))
                .unwrap_or_else(|| err.to_string());
            ProjectError::Permanent(format!("PostgreSQL refused: {detail}"))
        } else {
            ProjectError::Transient {
                kind: "postgres",
                detail: err.to_string(),
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for ProjectError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ProjectError::Transient {
            kind: "postgres",
            detail: err.to_string(),
        }
    }
}

impl From<redis::RedisError> for ProjectError {
    fn from(err: redis::RedisError) -> Self {
        ProjectError::Transient {
            kind: "redis",
            detail: err.to_string(),
        }
    }
}

impl From<yoink_core::ledger::LedgerError> for ProjectError {
    fn from(err: yoink_core::ledger::LedgerError) -> Self {
        if err.is_refusal() {
            ProjectError::Permanent(err.to_string())
        } else {
            ProjectError::Transient {
                kind: "postgres",
                detail: err.to_string(),
            }
        }
    }
}

impl From<yoink_core::rebuild::RecoveryError> for ProjectError {
    fn from(err: yoink_core::rebuild::RecoveryError) -> Self {
        ProjectError::Transient {
            kind: "recovering",
            detail: err.to_string(),
        }
    }
}
