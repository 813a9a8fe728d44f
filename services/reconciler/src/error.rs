//! Why a reconcile run could not finish: every variant means "a store could not be
//! read", which the binary reports in one line with exit code 2.

use yoink_core::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Redis unreachable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL unreachable: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Unexpected(String),
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
