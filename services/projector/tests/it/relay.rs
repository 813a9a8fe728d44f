//! The outbox relay while PostgreSQL is unreachable: it waits longer and longer between
//! attempts and says so once, not once per attempt.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use yoink_core::{RedisConn, StoreArgs, db};
use yoink_projector::RelayArgs;
use yoink_testkit::TestRedis;

/// Log lines, as the process would print them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("no writer panics while holding the log")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self
            .0
            .lock()
            .expect("no writer panics while holding the log")
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A port where PostgreSQL should be that accepts each connection and hangs up at once
/// (a server going away), counting the attempts.
async fn hanging_up_postgres() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    (
        format!("postgres://postgres@127.0.0.1:{port}/yoink"),
        attempts,
    )
}

/// Captures what this thread logs until the guards are dropped.
fn capture_logs() -> (
    Captured,
    (tracing::subscriber::DefaultGuard, tracing::Dispatch),
) {
    // While only one subscriber exists, tracing-core 0.1 decides whether a log line is
    // wanted (once, the first time any thread reaches it) by asking the reaching
    // thread's subscriber alone: another test's relay reaching it first would silence it
    // here for good. A second, silent subscriber makes it ask every live one.
    let silent = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let log = Captured::default();
    let writer = log.clone();
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    (log, (guard, silent))
}

// One thread (the default): the relay runs on the test's thread, where the log capture
// is installed.
#[tokio::test]
async fn the_relay_backs_off_and_logs_once_while_postgres_is_unreachable() {
    let (log, _capturing) = capture_logs();
    let (database_url, attempts) = hanging_up_postgres().await;
    let test_redis = TestRedis::new();
    let mut stores = StoreArgs::local(database_url, test_redis.url.clone());
    stores.key_prefix = test_redis.keys.prefix().to_owned();
    let redis = RedisConn::open(&stores).await.expect("redis");
    let pool = db::pool(&stores.database_url, 2).expect("pool");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = yoink_projector::relay::run(
        pool,
        redis,
        test_redis.keys.clone(),
        RelayArgs {
            batch: 500,
            interval_ms: 200,
        },
        stopped,
    );
    let watch = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
    };
    tokio::join!(relay, watch);

    let attempts = attempts.load(Ordering::Relaxed);
    // Every 200 ms would be about 10 attempts (plus the backlog gauge's); doubling
    // from 100 ms: 0, 0.1, 0.3, 0.7, 1.5 s.
    assert!(
        (2..=7).contains(&attempts),
        "{attempts} connection attempts in 2 s"
    );
    let warnings: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line per outage: {warnings:#?}");
}
