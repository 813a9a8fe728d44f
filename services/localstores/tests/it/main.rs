//! The local stores against the real `redis-server` and PostgreSQL binaries: both
//! answer once started, and both are gone (ports closed, temp dirs deleted) after
//! `stop` and after a plain drop.
//!
//! A persistent Redis keeps what it acknowledged across a SIGKILL and goes back to an
//! older snapshot on request; PostgreSQL keeps its data across a stop and a start.
//!
//! These tests start private servers only: they must never touch the shared ones.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;

use tokio_postgres::NoTls;
use yoink_localstores::{LocalOptions, LocalStores};

/// The port at the end of a URL's authority (`…:PORT` or `…:PORT/db`).
fn port_of(url: &str) -> u16 {
    let authority = url.split("://").nth(1).expect("a URL has a scheme");
    let host_port = authority.split('/').next().expect("split yields one part");
    host_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the URL names a port")
}

async fn assert_both_answer(stores: &LocalStores) {
    let client = redis::Client::open(stores.redis_url()).expect("redis_url is a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the local Redis accepts connections");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("the local Redis answers PING");
    assert_eq!(pong, "PONG");

    let (db, connection) = tokio_postgres::connect(&stores.database_url(), NoTls)
        .await
        .expect("the local PostgreSQL accepts connections");
    tokio::spawn(connection);
    let one: i32 = db
        .query_one("SELECT 1", &[])
        .await
        .expect("the local PostgreSQL answers SELECT 1")
        .get(0);
    assert_eq!(one, 1);
}

/// What must be gone once the stores are: both ports and both temp dirs.
struct Footprint {
    ports: [u16; 2],
    dirs: Vec<PathBuf>,
}

impl Footprint {
    fn of(stores: &LocalStores) -> Self {
        let footprint = Self {
            ports: [
                port_of(&stores.redis_url()),
                port_of(&stores.database_url()),
            ],
            dirs: stores.dirs(),
        };
        assert_eq!(footprint.dirs.len(), 2, "one temp dir per server");
        for dir in &footprint.dirs {
            assert!(dir.is_dir(), "{} exists while running", dir.display());
        }
        footprint
    }

    fn assert_gone(&self) {
        for port in self.ports {
            let refused = TcpStream::connect(("127.0.0.1", port))
                .map(|_| false)
                .unwrap_or_else(|err| err.kind() == ErrorKind::ConnectionRefused);
            assert!(refused, "port {port} still accepts connections");
        }
        for dir in &self.dirs {
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}

#[tokio::test]
async fn stop_closes_both_ports_and_removes_both_temp_dirs() {
    let stores = LocalStores::start().await.expect("the local stores start");
    assert!(stores.redis_url().starts_with("redis://127.0.0.1:"));
    assert!(
        stores
            .database_url()
            .starts_with("postgres://postgres@127.0.0.1:")
    );
    assert!(stores.database_url().ends_with("/postgres"));
    assert_both_answer(&stores).await;
    let footprint = Footprint::of(&stores);

    stores.stop();

    footprint.assert_gone();
}

#[tokio::test]
async fn drop_cleans_up_like_stop() {
    let stores = LocalStores::start().await.expect("the local stores start");
    assert_both_answer(&stores).await;
    let footprint = Footprint::of(&stores);

    drop(stores);

    footprint.assert_gone();
}

async fn redis_get(stores: &LocalStores, key: &str) -> Option<String> {
    let client = redis::Client::open(stores.redis_url()).expect("redis_url is a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the local Redis accepts connections");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

async fn redis_set(stores: &LocalStores, key: &str, value: &str) {
    let client = redis::Client::open(stores.redis_url()).expect("redis_url is a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the local Redis accepts connections");
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("SET");
}

#[tokio::test]
async fn a_persistent_redis_keeps_its_data_across_a_kill_and_goes_back_to_a_snapshot() {
    let mut stores = LocalStores::start_with(LocalOptions {
        persistent_redis: true,
    })
    .await
    .expect("the local stores start");
    redis_set(&stores, "k", "old").await;
    let snapshot = stores.snapshot_redis().await.expect("a snapshot");
    redis_set(&stores, "k", "new").await;
    redis_set(&stores, "only-new", "1").await;

    stores.kill_redis();
    assert!(!stores.redis_running());
    stores.restart_redis().await.expect("Redis starts again");
    assert_eq!(
        redis_get(&stores, "k").await.as_deref(),
        Some("new"),
        "the AOF kept it"
    );

    stores
        .restore_redis(&snapshot)
        .await
        .expect("Redis goes back");
    assert_eq!(redis_get(&stores, "k").await.as_deref(), Some("old"));
    assert_eq!(redis_get(&stores, "only-new").await, None);
    // Persistent again from the older state on: a kill now loses nothing.
    redis_set(&stores, "after", "1").await;
    stores.kill_redis();
    stores.restart_redis().await.expect("Redis starts again");
    assert_eq!(redis_get(&stores, "after").await.as_deref(), Some("1"));
    assert_eq!(redis_get(&stores, "k").await.as_deref(), Some("old"));
}

#[tokio::test]
async fn postgres_keeps_its_data_across_a_stop_and_a_start() {
    let mut stores = LocalStores::start().await.expect("the local stores start");
    let connect = |url: String| async move {
        let (db, connection) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(db)
    };
    let db = connect(stores.database_url()).await.expect("connect");
    db.batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .await
        .expect("write");

    stores.stop_postgres();
    assert!(!stores.postgres_running());
    assert!(connect(stores.database_url()).await.is_err(), "stopped");
    stores
        .start_postgres()
        .await
        .expect("PostgreSQL starts again");

    let db = connect(stores.database_url()).await.expect("connect again");
    let n: i32 = db
        .query_one("SELECT n FROM kept", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(n, 7);
}
