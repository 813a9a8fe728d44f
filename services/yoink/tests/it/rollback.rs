//! Redis coming back from an older state in the middle of a sale (a restart from a
//! snapshot, a FLUSHALL): no 202 is broken, no unit is sold twice, no forgotten buyer
//! passes the limit, and the sale resumes by itself. Private Redis and PostgreSQL.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;
use uuid::Uuid;
use yoink_testkit::{AppOptions, PrivatePostgres, PrivateRedis, TestApp, spawn_app_with};

use crate::YOINK;

/// How Redis goes back in time.
#[derive(Debug, Clone, Copy)]
enum GoBack {
    /// Killed and restarted from a snapshot taken in the middle of the sale.
    RestartFromSnapshot,
    /// Every key gone (`FLUSHALL`), Redis itself still up.
    Flushall,
}

/// What one buyer finally got, retrying while the answer is a 503 (as a client
/// honouring `Retry-After` does), and whether a 503 `sale_recovering` came first.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    answered_at: Instant,
    waited_for_recovery: bool,
}

async fn buy_until_answered(app: &TestApp, user: &str, key: Option<&str>) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waited_for_recovery = false;
    loop {
        let (status, body) = app.buy_with_key("drop", user, 1, key).await;
        if status != 503 || Instant::now() > deadline {
            return Answer {
                status,
                body,
                answered_at: Instant::now(),
                waited_for_recovery,
            };
        }
        waited_for_recovery |= body["error"] == "sale_recovering";
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// "status code: count" of `answers`, for a failed assertion to show what buyers met.
fn tally<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> String {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for a in answers {
        let code = a.body["error"].as_str().unwrap_or("");
        *seen.entry(format!("{} {code}", a.status)).or_default() += 1;
    }
    format!("{seen:?}")
}

fn reservation_id(answer: &Answer) -> Uuid {
    answer.body["reservation_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a 202 carries its reservation id: {}", answer.body))
}

async fn fates(app: &TestApp, ids: &[Uuid], fate: &str) -> i64 {
    let pool = app.db.pool();
    let client = pool.get().await.expect("db");
    client
        .query_one(
            "SELECT count(*) FROM reservation_fates WHERE reservation_id = ANY($1) AND fate = $2",
            &[&ids, &fate],
        )
        .await
        .expect("count fates")
        .get(0)
}

/// The operator's trial from the issue: 2,000 units, 1 per buyer; 600 buyers, a
/// snapshot, 600 more, all confirmed; Redis goes back; then 900 new buyers, 100
/// forgotten ones buying again (a new request, no key), and 50 retrying with their key.
async fn a_sale_whose_redis_goes_back(how: GoBack) {
    let pg = PrivatePostgres::start().await;
    let mut redis = PrivateRedis::start_persistent(&[]).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        postgres_server_url: Some(pg.url()),
        // Every buy asks Redis: a forgotten buyer arriving after the sell-out would
        // otherwise be answered 409 from memory, which would hide whether the rebuilt
        // Redis knows their limit (429).
        sold_out_recheck_ms: Some(0),
        ..AppOptions::default()
    })
    .await;
    let sale = app.create_sale("drop", 2_000, 1).await;
    let projector = app.projector("before");

    // Buyers send an Idempotency-Key, as a client that retries a 503 must: on a
    // loaded machine a buy can time out after Redis took it, and a keyless retry
    // would rightly meet the limit (429).
    let first = join_all((0..600).map(|i| {
        let app = &app;
        async move {
            let (user, key) = (format!("a{i}"), format!("key-a{i}"));
            buy_until_answered(app, &user, Some(&key)).await
        }
    }))
    .await;
    if let GoBack::RestartFromSnapshot = how {
        let mut conn = app.redis.clone();
        let _: () = redis::cmd("SAVE")
            .query_async(&mut conn)
            .await
            .expect("SAVE");
    }
    let second = join_all((600..1_200).map(|i| {
        let app = &app;
        async move {
            let (user, key) = (format!("a{i}"), format!("key-a{i}"));
            buy_until_answered(app, &user, Some(&key)).await
        }
    }))
    .await;
    let before: Vec<&Answer> = first.iter().chain(&second).collect();
    assert!(
        before.iter().all(|a| a.status == 202),
        "every buyer had a unit: {}",
        tally(before.iter().copied())
    );
    let before_ids: Vec<Uuid> = before.iter().map(|a| reservation_id(a)).collect();
    let confirmed = yoink_testkit::eventually(Duration::from_secs(60), || async {
        fates(&app, &before_ids, "confirmed").await == 1_200
    })
    .await;
    assert!(confirmed, "all 1,200 confirmed before Redis goes back");
    projector.stop().await;

    let went_back = Instant::now();
    match how {
        GoBack::RestartFromSnapshot => {
            redis.stop();
            redis.start_again().await;
        }
        GoBack::Flushall => {
            let mut conn = app.redis.clone();
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut conn)
                .await
                .expect("FLUSHALL");
        }
    }
    let projector = app.projector("after");

    let new_buyers = (0..900).map(|i| format!("n{i}"));
    let forgotten = (1_000..1_100).map(|i| format!("a{i}"));
    let after = join_all(new_buyers.chain(forgotten).map(|user| {
        let app = &app;
        async move {
            // A forgotten buyer comes back with a new request (no key): the limit
            // must stop it.
            let key = user.starts_with('n').then(|| format!("key-{user}"));
            (
                user.clone(),
                buy_until_answered(app, &user, key.as_deref()).await,
            )
        }
    }))
    .await;
    let retried = join_all((1_100..1_150).map(|i| {
        let app = &app;
        async move {
            let (user, key) = (format!("a{i}"), format!("key-a{i}"));
            buy_until_answered(app, &user, Some(&key)).await
        }
    }))
    .await;

    let resumed_at = after
        .iter()
        .filter(|(_, a)| a.status == 202)
        .map(|(_, a)| a.answered_at)
        .min()
        .expect("the sale resumed");
    let refused = after.iter().filter(|(_, a)| a.waited_for_recovery).count();
    eprintln!(
        "{how:?}: {refused} buyer(s) met the suspended sale; first 202 {:?} after going back",
        resumed_at - went_back
    );

    // What the buyers saw: the 800 units left, and nothing for a forgotten buyer.
    let count = |prefix: &str, status: u16| {
        after
            .iter()
            .filter(|(u, a)| u.starts_with(prefix) && a.status == status)
            .count()
    };
    assert_eq!(
        count("n", 202),
        800,
        "the units PostgreSQL had left: {}",
        tally(
            after
                .iter()
                .filter(|(u, _)| u.starts_with('n'))
                .map(|(_, a)| a)
        )
    );
    assert_eq!(count("n", 409), 100);
    assert_eq!(
        count("a", 202),
        0,
        "a forgotten buyer must not pass the limit"
    );
    assert_eq!(count("a", 429), 100);
    // A reservation Redis forgot is still there for its buyer (PostgreSQL answers).
    let forgotten_id = before_ids[1_050];
    let (status, body) = app.get(&format!("/reservations/{forgotten_id}")).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &"confirmed".into()),
        "{body}"
    );
    // A retry with the original Idempotency-Key gets the original reservation.
    for (i, answer) in retried.iter().enumerate() {
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(
            reservation_id(answer),
            before_ids[1_100 + i],
            "a retry returns the original reservation"
        );
    }

    // What PostgreSQL decided: every 202 confirmed, none released, nothing oversold.
    let after_ids: Vec<Uuid> = after
        .iter()
        .filter(|(_, a)| a.status == 202)
        .map(|(_, a)| reservation_id(a))
        .collect();
    let all_confirmed = yoink_testkit::eventually(Duration::from_secs(60), || async {
        fates(&app, &after_ids, "confirmed").await == after_ids.len() as i64
    })
    .await;
    assert!(all_confirmed, "every 202 after going back is confirmed");
    // Fail closed: not one of them was taken by the Redis that went back (epoch 1);
    // all by the rebuilt one.
    let pool = app.db.pool();
    let taken_blind: i64 = pool
        .get()
        .await
        .expect("db")
        .query_one(
            "SELECT count(*) FROM reservation_fates WHERE reservation_id = ANY($1) AND epoch <> 2",
            &[&after_ids],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        taken_blind, 0,
        "202s answered before the sale was suspended"
    );
    assert!(app.wait_drained(&sale, Duration::from_secs(30)).await);
    projector.stop().await;
    assert_eq!(fates(&app, &before_ids, "confirmed").await, 1_200);
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM reservation_fates WHERE fate = 'released'")
            .await,
        0,
        "no 202 was taken back"
    );
    assert_eq!(
        app.db
            .scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM orders")
            .await,
        2_000
    );
    assert_eq!(
        app.db
            .scalar("SELECT coalesce(max(n), 0)::bigint FROM (SELECT sum(quantity) AS n FROM orders GROUP BY user_id) b")
            .await,
        1,
        "no buyer holds more than the limit"
    );
    assert_eq!(
        app.db
            .scalar("SELECT max(epoch) FROM sale_epochs WHERE sale_id = 'drop'")
            .await,
        2,
        "rebuilt once"
    );
    // The rebuild records when the sale was suspended and when it resumed.
    let suspended_ms = app
        .db
        .scalar(
            "SELECT (extract(epoch FROM opened_at - suspended_at) * 1000)::bigint
             FROM sale_epochs WHERE sale_id = 'drop' AND epoch = 2",
        )
        .await;
    assert!(
        (0..10_000).contains(&suspended_ms),
        "suspended for {suspended_ms} ms"
    );

    let output = app
        .yoink_command(YOINK)
        .args(["reconcile", "--sale", "drop", "--json", "--grace", "1"])
        .output()
        .expect("run yoink reconcile");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains(r#""status":"consistent""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_from_an_older_snapshot_mid_sale_breaks_no_202_and_sells_nothing_twice() {
    a_sale_whose_redis_goes_back(GoBack::RestartFromSnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_flushed_mid_sale_breaks_no_202_and_sells_nothing_twice() {
    a_sale_whose_redis_goes_back(GoBack::Flushall).await;
}
