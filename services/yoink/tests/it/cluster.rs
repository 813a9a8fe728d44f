//! Invariant 6: every key of a sale shares one hash tag, so the whole pipeline (reserve,
//! project, release, reconcile) runs unchanged on a Redis Cluster.

use std::time::Duration;

use futures::future::join_all;
use yoink_testkit::{AppOptions, PrivateRedisCluster, spawn_app_with};

use crate::YOINK;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_pipeline_runs_on_a_three_node_redis_cluster() {
    let cluster = PrivateRedisCluster::start().await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(cluster.urls()),
        redis_cluster: true,
        ..AppOptions::default()
    })
    .await;
    // Several sales, so their slots land on different nodes.
    let mut sales = Vec::new();
    for name in ["c-alpha", "c-bravo", "c-charlie", "c-delta"] {
        sales.push(app.create_sale(name, 50, 2).await);
    }
    for sale in ["c-alpha", "c-bravo", "c-charlie", "c-delta"] {
        let answers = join_all((0..120).map(|i| {
            let app = &app;
            async move { app.buy(sale, &format!("u{}", i % 60), 1).await.0 }
        }))
        .await;
        let accepted = answers.iter().filter(|s| **s == 202).count();
        assert_eq!(accepted, 50, "{sale}: {answers:?}");
        assert!(answers.iter().all(|s| *s == 202 || *s == 409 || *s == 429));
    }
    let projector = app.projector("cluster-projector");
    for sale in &sales {
        assert!(
            app.wait_drained(sale, Duration::from_secs(30)).await,
            "{sale}: {:?}",
            app.group_state(sale).await
        );
    }
    projector.stop().await;
    assert_eq!(app.db.scalar("SELECT count(*) FROM orders").await, 200);

    let output = app
        .yoink_command(YOINK)
        .env("YOINK_REDIS_CLUSTER", "true")
        .args(["reconcile", "--all", "--json", "--grace", "1"])
        .output()
        .expect("run reconcile");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("\"consistent\""))
            .count(),
        4,
        "{stdout}"
    );
}
