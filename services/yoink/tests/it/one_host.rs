//! Several `serve`, `project`, `relay` and `reconcile --watch` processes side by side on one
//! host, with the same (default-like) flags: all stay up, the API port is shared, each
//! process's metrics are reachable on their own port, and `--metrics-sd-dir` tells
//! Prometheus where.

use std::time::Duration;

use serde_json::Value;
use yoink_testkit::{Spawned, eventually, free_port, spawn_app};

use crate::YOINK;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_each_long_running_process_run_side_by_side_with_the_same_flags() {
    let app = spawn_app().await;
    app.create_sale("shared", 1_000, 0).await;
    let sd_dir = tempfile::tempdir().expect("temp dir");
    let (api_port, api_metrics, project_metrics, watch_metrics, relay_metrics) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let start = |args: Vec<String>| {
        let mut command = app.yoink_command(YOINK);
        command
            .args(&args)
            .env("YOINK_METRICS_SD_DIR", sd_dir.path());
        Spawned::start(&mut command)
    };
    let serve = || {
        vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{api_metrics}"),
        ]
    };
    let project = || {
        vec![
            "project".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{project_metrics}"),
        ]
    };
    let watch = || {
        vec![
            "reconcile".into(),
            "--watch".into(),
            "1".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{watch_metrics}"),
        ]
    };
    let relay = || {
        vec![
            "relay".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{relay_metrics}"),
        ]
    };
    let mut processes = [
        start(serve()),
        start(serve()),
        start(project()),
        start(project()),
        start(watch()),
        start(watch()),
        start(relay()),
        start(relay()),
    ];

    // Eight target files: one per process, each naming a distinct address.
    let published = eventually(Duration::from_secs(20), || async {
        std::fs::read_dir(sd_dir.path()).map_or(0, |d| d.count()) >= 8
    })
    .await;
    let targets: Vec<String> = std::fs::read_dir(sd_dir.path())
        .expect("sd dir")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| v[0]["targets"][0].as_str().map(str::to_owned))
        .collect();
    assert!(published, "target files: {targets:?}");
    for (i, p) in processes.iter_mut().enumerate() {
        assert!(p.alive(), "process {i} exited");
    }
    let mut distinct = targets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "{targets:?}");
    for target in &targets {
        let answered = eventually(Duration::from_secs(10), || async {
            reqwest::get(format!("http://{target}/metrics"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(answered, "no metrics at {target}");
    }

    // The shared API port serves buys, whichever process takes the connection.
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for i in 0..20 {
        let status = client
            .post(format!("http://127.0.0.1:{api_port}/buy"))
            .json(&serde_json::json!({ "sale_id": "shared", "user_id": format!("u{i}") }))
            .send()
            .await
            .map(|r| r.status().as_u16());
        accepted += usize::from(status.is_ok_and(|s| s == 202));
    }
    assert_eq!(accepted, 20);
    for (i, p) in processes.iter_mut().enumerate() {
        assert!(p.alive(), "process {i} exited");
    }
}
