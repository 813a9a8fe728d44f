//! Redis for tests: a key prefix of its own on the shared server (`TestRedis`), or a
//! whole private server on a free port for tests that stop Redis (`PrivateRedis`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use yoink_core::Keyspace;

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
    /// Where it keeps its snapshot and AOF, when it keeps any.
    _dir: Option<tempfile::TempDir>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra `redis-server` arguments (e.g. `--maxclients 10`).
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_in_own_dir(extra).await
    }

    /// Starts with a data directory of its own, so `SAVE` writes a snapshot (and an
    /// AOF, with `--appendonly yes` in `extra`) that a restart loads: Redis coming back
    /// from an older state.
    pub async fn start_persistent(extra: &[&str]) -> Self {
        Self::start_in_own_dir(extra).await
    }

    /// Every server gets a temporary directory of its own, even one that saves
    /// nothing: a replica's full sync writes an RDB into its working directory, which
    /// would otherwise be the test's crate folder.
    async fn start_in_own_dir(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("yoink-redis-")
            .tempdir()
            .expect("temp dir");
        let mut args: Vec<String> = vec!["--dir".into(), dir.path().display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Self {
            port: free_port(),
            child: None,
            extra: args,
            _dir: Some(dir),
        };
        server.start_again().await;
        server
    }

    /// Starts a replica of `primary` and waits until its link is up. `DEBUG` is enabled
    /// on it, so a test can stall it (`DEBUG SLEEP`).
    pub async fn start_replica_of(primary: &PrivateRedis) -> Self {
        let port = primary.port.to_string();
        let replica = Self::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &port,
            "--enable-debug-command",
            "yes",
        ])
        .await;
        let url = replica.url();
        let linked = crate::eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                info.contains("master_link_status:up")
            }
        })
        .await;
        assert!(linked, "replica on port {} never linked", replica.port);
        replica
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, same port, same data directory if any) and waits
    /// until it answers PING.
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

    /// Stalls the server for `duration` (`DEBUG SLEEP`: it answers nobody meanwhile),
    /// from a connection of its own with no reply timeout; the handle resolves when it
    /// answers again. The server must run with `--enable-debug-command yes`.
    pub async fn stall(&self, duration: Duration) -> tokio::task::JoinHandle<()> {
        let client = redis::Client::open(self.url()).expect("valid URL");
        let mut conn = client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .expect("connect to stall");
        let secs = duration.as_secs_f64().to_string();
        let sleeping = tokio::spawn(async move {
            let slept: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(secs)
                .query_async(&mut conn)
                .await;
            slept.expect("DEBUG SLEEP runs (is --enable-debug-command on?)");
        });
        // Let the DEBUG SLEEP reach the server before the caller sends anything.
        tokio::time::sleep(Duration::from_millis(50)).await;
        sleeping
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

/// A Redis Cluster of three masters of the test's own, on free ports, made with
/// `redis-cli --cluster create`. Proves the scripts run unchanged on a cluster.
pub struct PrivateRedisCluster {
    nodes: Vec<PrivateRedis>,
    _dir: tempfile::TempDir,
}

impl PrivateRedisCluster {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("yoink-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut node = PrivateRedis {
                port,
                child: None,
                _dir: None,
                extra: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.display().to_string(),
                    "--dir".into(),
                    dir.path().display().to_string(),
                ],
            };
            node.start_again().await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("tests need redis-cli on PATH");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, _dir: dir };
        // The cluster is usable once every node reports cluster_state:ok.
        let ready = crate::eventually(Duration::from_secs(20), || async {
            cluster.nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            })
        })
        .await;
        assert!(ready, "the test cluster never reached cluster_state:ok");
        cluster
    }

    /// Seed nodes, comma-separated (what `REDIS_URL` holds with `--redis-cluster`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
