//! A real dead letter (garbage the projector gave up on) shows with its count, its
//! age and the projector's reason.

use std::time::Duration;

use redis::AsyncCommands;
use yoink_projector::ProjectorArgs;
use yoink_testkit::spawn_app;

use crate::status_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_shows_with_its_count_age_and_reason() {
    let app = spawn_app().await;
    let sale = app.create_sale("st-dead", 10, 0).await;
    let projector = app.projector_with(ProjectorArgs {
        block_ms: 50,
        claim_idle_ms: 200,
        claim_interval_ms: 50,
        max_deliveries: 2,
        ..ProjectorArgs::local("p1")
    });
    assert!(app.reserve_direct(&sale, "u1", 1).await);
    let mut redis = app.redis.clone();
    let garbage: String = redis
        .xadd(
            app.keys().events(&sale),
            "*",
            &[("type", "bought"), ("hello", "world")],
        )
        .await
        .expect("xadd garbage");
    let dead = yoink_testkit::eventually(Duration::from_secs(20), || async {
        status_of(&app, "st-dead").await.dead_letters == Some(1)
    })
    .await;
    assert!(dead, "the garbage was never dead-lettered");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let s = status_of(&app, "st-dead").await;
    assert_eq!(s.dead_letters, Some(1));
    let reason = s.oldest_dead_letter_reason.clone().expect("a reason");
    assert!(reason.contains("unknown event type `bought`"), "{reason}");
    assert!(
        s.oldest_dead_letter_age_ms.is_some_and(|ms| ms >= 20),
        "{s:?}"
    );
    let id = s.oldest_dead_letter_id.clone().expect("an id");
    assert_ne!(id, garbage, "the dead letter is a copy in its own stream");
    assert_eq!(s.confirmed, Some(1), "the good entry still became an order");
    assert_eq!((s.lag, s.pending), (Some(0), Some(0)));

    // A later one adds to the count; the oldest stays the first.
    let _: String = redis
        .xadd(
            app.keys().dead_letters(&sale),
            "*",
            &[
                ("dead_reason", "a later reason"),
                ("original_id", "1-0"),
                ("consumer", "p1"),
            ],
        )
        .await
        .expect("xadd dead letter");
    let s = status_of(&app, "st-dead").await;
    assert_eq!(s.dead_letters, Some(2));
    assert_eq!(s.oldest_dead_letter_id, Some(id));
    assert_eq!(s.oldest_dead_letter_reason, Some(reason));

    let mut out = Vec::new();
    yoink_status::run_once(&app.stores, &crate::args_for(Some("st-dead")), &mut out)
        .await
        .expect("status answers");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("dead letters   2, oldest"), "{text}");
    assert!(text.contains("unknown event type `bought`"), "{text}");
}
