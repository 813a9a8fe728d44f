//! PostgreSQL: create the database when missing, open a bounded pool, apply `schema/`.
//!
//! The pool is small and bounded on purpose (the seed system opened a connection per
//! request and died of `too many clients`). Waiting for a connection is bounded in time
//! too, so a PostgreSQL outage becomes a quick error the caller can answer with 503.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../../schema");
}

/// Arbitrary key of the advisory lock that serialises concurrent migrations.
const MIGRATION_LOCK: i64 = 0x5949_4e4b_4d49_4752; // "YINKMIGR"

/// How long a caller waits for a pooled connection (or a new one) before giving up.
const POOL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("database URL names no database")]
    NoDatabaseName,
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("cannot build the PostgreSQL pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] refinery::Error),
}

fn parse(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(DbError::BadUrl)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_WAIT);
    }
    Ok(config)
}

/// A connection to the `postgres` database of the URL's server (its driver task), and the
/// name of the URL's own database: where databases are created and dropped.
async fn admin(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>, String), DbError> {
    let config = parse(url)?;
    let name = config
        .get_dbname()
        .ok_or(DbError::NoDatabaseName)?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await.map_err(DbError::Connect)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver, name))
}

/// `url` pointing at `database` on the same server (its query string kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates the URL's database when it does not exist yet (connecting to `postgres`).
/// Safe to run from several processes at once.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let (client, driver, name) = admin(url).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(err) = client.batch_execute(&create).await {
            // Another process created it between our check and our CREATE.
            let raced = err.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::DUPLICATE_DATABASE
                    || *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            });
            if !raced {
                return Err(err.into());
            }
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Drops the URL's database (its open connections are ended first): for throwaway
/// databases a tool made for itself (`yoink demo`, `yoink bench`), never the ledger.
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let (client, driver, name) = admin(url).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        ))
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// A bounded pool; connections are opened lazily, so this succeeds while PostgreSQL is
/// down and callers get a quick error instead.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config = parse(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(POOL_WAIT),
            create: Some(POOL_WAIT),
            recycle: Some(POOL_WAIT),
        })
        .build()?)
}

/// Applies every migration in `schema/` not applied yet. Holds an advisory lock so
/// that processes starting together do not race.
pub async fn migrate(pool: &Pool) -> Result<(), DbError> {
    let mut conn = pool.get().await?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let outcome = embedded::migrations::runner()
        .run_async(client)
        .await
        .map(|_| ());
    conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    // The schema may have changed under statements this connection prepared.
    conn.statement_cache.clear();
    outcome.map_err(DbError::from)
}

/// A fingerprint of the embedded migrations: changes whenever `schema/` changes
/// (test helpers name their template database after it).
pub fn schema_fingerprint() -> u64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |acc, m| {
            (acc ^ m.checksum()).wrapping_mul(0x0100_0000_01b3)
        })
}

/// True when a PostgreSQL error means "could not reach PostgreSQL or it went away",
/// which callers answer with 503 or retry, never treat as a verdict on the data.
pub fn is_unavailable(err: &DbError) -> bool {
    match err {
        DbError::Connect(_) | DbError::Pool(_) => true,
        DbError::Query(e) => is_transient(e),
        _ => false,
    }
}

/// True for connection-level failures and server states that pass by themselves
/// (shutdown, too many connections, serialization failures, deadlocks).
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    match err.code() {
        None => true, // no SQLSTATE: the connection itself failed
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "53" | "57" | "58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn points_a_url_at_another_database_keeping_the_rest() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/yoink", "postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "yoink"),
            "postgres://u@h:1/yoink?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
