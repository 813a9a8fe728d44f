//! Long-running commands start in any order: started while PostgreSQL is down they stay
//! up, say they are not ready, log the outage once, and get to work when it returns.
//! `migrate` and one-shot commands stay strict. Private PostgreSQL and Redis.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use yoink_core::scripts::{self, SaleTerms};
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs};
use yoink_testkit::{PrivatePostgres, PrivateRedis, Spawned, eventually, free_port, unique_name};

use crate::YOINK;

/// `yoink ARGS` with `env`, logging the outage messages this test looks for.
fn start(env: &[(&str, String)], args: &[&str]) -> Spawned {
    let mut command = Command::new(YOINK);
    command
        .args(args)
        .env("RUST_LOG", "warn,yoink_core::readiness=info")
        .env("YOINK_PROJECTOR_METRICS_LISTEN", "off")
        .env("YOINK_API_METRICS_LISTEN", "off")
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    Spawned::start(&mut command)
}

/// SIGTERM, and whether it exited 0.
fn stopped_cleanly(process: &mut Spawned) -> bool {
    process.terminate().is_some_and(|s| s.success())
}

async fn get(url: &str) -> Option<(u16, Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_project_relay_and_watch_started_while_postgres_is_down_wait_for_it_and_then_work() {
    let pg = PrivatePostgres::start().await;
    pg.stop();
    let redis = PrivateRedis::start().await;
    let database_url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        pg.port,
        unique_name("start_order")
    );
    let prefix = format!("{}:", unique_name("t"));
    let env = vec![
        ("DATABASE_URL", database_url.clone()),
        ("REDIS_URL", redis.url()),
        ("YOINK_KEY_PREFIX", prefix.clone()),
    ];
    let (project_port, watch_port, api_port, relay_port) =
        (free_port(), free_port(), free_port(), free_port());
    let mut project = start(
        &env,
        &[
            "project",
            "--metrics-listen",
            &format!("127.0.0.1:{project_port}"),
        ],
    );
    let mut watch = start(
        &env,
        &[
            "reconcile",
            "--watch",
            "1",
            "--metrics-listen",
            &format!("127.0.0.1:{watch_port}"),
        ],
    );
    let mut serve = start(
        &env,
        &["serve", "--listen", &format!("127.0.0.1:{api_port}")],
    );
    let mut relay = start(
        &env,
        &[
            "relay",
            "--metrics-listen",
            &format!("127.0.0.1:{relay_port}"),
        ],
    );

    // Up, not ready, and buying works on Redis alone.
    for (name, url) in [
        ("project", format!("http://127.0.0.1:{project_port}/readyz")),
        ("watch", format!("http://127.0.0.1:{watch_port}/readyz")),
        ("serve", format!("http://127.0.0.1:{api_port}/readyz")),
        ("relay", format!("http://127.0.0.1:{relay_port}/readyz")),
    ] {
        let not_ready = eventually(Duration::from_secs(20), || async {
            get(&url).await.is_some_and(|(status, body)| {
                status == 503 && body["postgres"] == "down" && body["redis"] == "ok"
            })
        })
        .await;
        assert!(not_ready, "{name} never reported PostgreSQL down at {url}");
    }
    let sale = SaleId::parse("early").expect("id");
    let keys = Keyspace::new(prefix.clone());
    let mut conn = RedisConn::open(&StoreArgs::local(&database_url, redis.url()))
        .await
        .expect("Redis");
    let terms = SaleTerms {
        initial_stock: 10,
        limit_per_user: 0,
        starts_at_ms: 0,
        ends_at_ms: 0,
        ..SaleTerms::default()
    };
    scripts::create_sale(&mut conn, &keys, &sale, &terms)
        .await
        .expect("a sale in Redis");
    let bought = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/buy"))
        .json(&serde_json::json!({ "sale_id": "early", "user_id": "u1" }))
        .send()
        .await
        .expect("POST /buy")
        .status()
        .as_u16();
    assert_eq!(bought, 202, "buying needs Redis only");
    // Three seconds of outage: still running, and the outage logged once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(project.alive(), "project exited: {}", project.output());
    assert!(watch.alive(), "watch exited: {}", watch.output());
    assert!(serve.alive(), "serve exited: {}", serve.output());
    assert!(relay.alive(), "relay exited: {}", relay.output());
    let log = project.output();
    assert_eq!(
        occurrences(&log, "Store unreachable; waiting for it."),
        1,
        "{log}"
    );
    assert!(!log.contains("Caused by:\n\n"), "{log}");
    let log = watch.output();
    assert!(
        occurrences(&log, "Reconcile pass failed") <= 1,
        "one line per outage, not per pass: {log}"
    );

    // PostgreSQL comes back: the schema is applied and every process gets ready.
    pg.start_again().await;
    for (name, url) in [
        ("project", format!("http://127.0.0.1:{project_port}/readyz")),
        ("watch", format!("http://127.0.0.1:{watch_port}/readyz")),
        ("serve", format!("http://127.0.0.1:{api_port}/readyz")),
        ("relay", format!("http://127.0.0.1:{relay_port}/readyz")),
    ] {
        let ready = eventually(Duration::from_secs(30), || async {
            get(&url).await.is_some_and(|(status, _)| status == 200)
        })
        .await;
        assert!(ready, "{name} never got ready at {url}");
    }
    assert!(project.alive() && watch.alive() && serve.alive() && relay.alive());
    assert!(
        project.output().contains("Store is back."),
        "{}",
        project.output()
    );
    assert!(stopped_cleanly(&mut project), "project exits 0 on SIGTERM");
    assert!(stopped_cleanly(&mut watch), "watch exits 0 on SIGTERM");
    assert!(stopped_cleanly(&mut serve), "serve exits 0 on SIGTERM");
    assert!(stopped_cleanly(&mut relay), "relay exits 0 on SIGTERM");
}

#[tokio::test]
async fn migrate_stays_strict_and_prints_its_causes_on_one_line() {
    let port = free_port();
    let output = Command::new(YOINK)
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/x"),
        )
        .env("RUST_LOG", "off")
        .output()
        .expect("run yoink migrate");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("Error: creating database"), "{stderr}");
    assert!(lines[0].contains("refused"), "the cause is named: {stderr}");
    assert_eq!(
        occurrences(lines[0], "error connecting to server"),
        1,
        "each cause once: {stderr}"
    );
}

#[test]
fn a_setting_out_of_range_is_refused_at_start_with_the_flag_to_change() {
    for (args, env, flag) in [
        (
            vec!["project"],
            ("YOINK_PG_POOL_SIZE", "0"),
            "--pg-pool-size",
        ),
        (
            vec!["reconcile", "--watch", "0"],
            ("RUST_LOG", "off"),
            "--watch",
        ),
        (vec!["project"], ("YOINK_BATCH_SIZE", "0"), "--batch-size"),
    ] {
        let output = Command::new(YOINK)
            .args(&args)
            .env(env.0, env.1)
            .env("YOINK_PROJECTOR_METRICS_LISTEN", "off")
            .output()
            .expect("run yoink");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_redis_cluster_down_at_start_is_waited_for_by_a_projector_and_not_by_a_one_shot_command()
{
    let nodes = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let env = vec![
        ("REDIS_URL", nodes.clone()),
        ("YOINK_REDIS_CLUSTER", "true".to_owned()),
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        ),
    ];
    let mut project = start(&env, &["project"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(project.alive(), "project exited: {}", project.output());
    let log = project.output();
    assert_eq!(
        occurrences(&log, "Redis Cluster unreachable; waiting for it."),
        1,
        "{log}"
    );

    let started = std::time::Instant::now();
    let once = Command::new(YOINK)
        .args(["reconcile", "--all"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "off")
        .output()
        .expect("run yoink reconcile");
    assert_eq!(
        once.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a one-shot command does not wait"
    );
}
