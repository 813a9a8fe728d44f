//! Redis for tests: a key prefix of its own on the shared server (`TestRedis`), or a
//! whole private server on a free port for tests that stop Redis (`PrivateRedis`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use yoink_core::{Keyspace, RedisConn, StoreArgs};

use crate::{free_port, redis_url, unique_name};

/// A key prefix of this test's own on the shared Redis; its keys are deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub keys: Keyspace,
}

impl TestRedis {
    pub fn new() -> Self {
        Self::on(redis_url())
    }

    pub fn on(url: String) -> Self {
        Self {
            url,
            keys: Keyspace::new(format!("{}:", unique_name("t"))),
        }
    }

    pub async fn conn(&self) -> RedisConn {
        let args = StoreArgs::local("postgres://unused", self.url.clone());
        RedisConn::open(&args).await.expect("open test Redis")
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.keys.prefix());
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        })
        .join();
    }
}

/// A `redis-server` of the test's own, on a free port, that the test may stop and start.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra `redis-server` arguments (e.g. `--maxclients 10`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.start_again().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, same port) and waits until it answers PING.
    pub async fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tests need redis-server on PATH");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("valid URL");
        let up = crate::eventually(Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut c) => c.ping::<String>().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(
            up,
            "private redis-server on port {} did not start",
            self.port
        );
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
