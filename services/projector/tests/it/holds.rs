//! Holds in the pipeline: recorded, not confirmed; expired by the projectors themselves,
//! exactly once however many sweep; kept with their deadlines by a rebuild.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use yoink_core::holds::{self, Action, FromRedis, HoldError, HoldState};
use yoink_core::scripts::{self, ReserveError, SaleTerms};
use yoink_core::stream::read_range;
use yoink_core::{Position, ReservationId, SaleId, UserId, rebuild};
use yoink_testkit::{TestApp, eventually, spawn_app};

fn hold_terms(stock: i64, limit_per_user: i64, hold_seconds: i64) -> SaleTerms {
    SaleTerms {
        initial_stock: stock,
        limit_per_user,
        hold_seconds,
        ..SaleTerms::default()
    }
}

async fn reserve(app: &TestApp, sale: &SaleId, user: &str) -> Result<ReservationId, ReserveError> {
    let user = UserId::parse(user).expect("valid user");
    let mut redis = app.redis.clone();
    let request = scripts::Reserve {
        reservation_id: ReservationId::for_sale(sale),
        sale_id: sale,
        user_id: &user,
        quantity: 1,
        idempotency_key: None,
        floor: Position::ZERO,
    };
    scripts::reserve(&mut redis, app.keys(), &request)
        .await
        .map(|r| r.reservation_id)
}

async fn stock(app: &TestApp, sale: &SaleId) -> i64 {
    let mut redis = app.redis.clone();
    redis.get(app.keys().stock(sale)).await.expect("stock")
}

async fn waiting_in_redis(app: &TestApp, sale: &SaleId) -> HashMap<String, i64> {
    let mut redis = app.redis.clone();
    redis
        .zrange_withscores(app.keys().holds(sale), 0, -1)
        .await
        .expect("holds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_are_recorded_not_confirmed_and_expire_by_themselves_freeing_the_limit() {
    let app = spawn_app().await;
    let sale = app.create_sale_with("expire", hold_terms(300, 1, 1)).await;
    app.reserve_many(&sale, "u", 200).await;
    // The limit counts a held unit.
    assert!(matches!(
        reserve(&app, &sale, "u0").await,
        Err(ReserveError::LimitExceeded)
    ));
    assert_eq!(waiting_in_redis(&app, &sale).await.len(), 200);

    let projector = app.projector("p1");
    let recorded = eventually(Duration::from_secs(10), || async {
        app.db.scalar("SELECT count(*) FROM holds").await == 200
    })
    .await;
    assert!(recorded, "every hold recorded in PostgreSQL");
    assert_eq!(
        app.db.scalar("SELECT count(*) FROM orders").await,
        0,
        "a hold is no order"
    );

    let expired = eventually(Duration::from_secs(10), || async {
        stock(&app, &sale).await == 300
    })
    .await;
    assert!(
        expired,
        "units back on sale after the deadline: {}",
        stock(&app, &sale).await
    );
    projector.stop().await;
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM reservation_fates WHERE fate = 'released' AND reason = 'expired'")
            .await,
        200
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM holds WHERE state = 'expired'")
            .await,
        200
    );
    assert_eq!(app.db.scalar("SELECT released_units FROM sales").await, 200);
    assert!(waiting_in_redis(&app, &sale).await.is_empty());
    // The expired hold freed the buyer's limit.
    assert!(reserve(&app, &sale, "u0").await.is_ok(), "u0 may buy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_projectors_sweeping_one_sale_expire_each_hold_exactly_once() {
    let app = spawn_app().await;
    let sale = app.create_sale_with("three", hold_terms(1_000, 0, 1)).await;
    app.reserve_many(&sale, "u", 1_000).await;
    let projectors = [app.projector("a"), app.projector("b"), app.projector("c")];
    let back = eventually(Duration::from_secs(20), || async {
        stock(&app, &sale).await == 1_000
    })
    .await;
    for p in projectors {
        p.stop().await;
    }
    assert!(back, "every unit back: {}", stock(&app, &sale).await);
    let mut redis = app.redis.clone();
    let released: i64 = redis
        .hget(app.keys().meta(&sale), "released")
        .await
        .expect("meta");
    assert_eq!(released, 1_000, "each unit given back once in Redis");
    assert_eq!(
        app.db.scalar("SELECT released_units FROM sales").await,
        1_000
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM outbox WHERE event_type = 'reservation.released'")
            .await,
        1_000,
        "one outbox event per expiry"
    );
    let released_events = app
        .db
        .scalar("SELECT count(DISTINCT reservation_id) FROM reservation_fates")
        .await;
    assert_eq!(released_events, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_keeps_waiting_holds_with_their_deadlines_and_holds_the_unrecorded_ones() {
    let app = spawn_app().await;
    let sale = app
        .create_sale_with("rebuilt", hold_terms(100, 2, 60))
        .await;
    app.reserve_many(&sale, "u", 40).await;
    let projector = app.projector("p1");
    let recorded = eventually(Duration::from_secs(10), || async {
        app.db.scalar("SELECT count(*) FROM holds").await == 40
    })
    .await;
    projector.stop().await;
    assert!(recorded);
    // Ten more the projector never saw, and one confirmed, one cancelled.
    app.reserve_many(&sale, "late", 10).await;
    let pool = app.db.pool();
    let ids: Vec<ReservationId> = pool
        .get()
        .await
        .expect("db")
        .query(
            "SELECT reservation_id FROM holds ORDER BY reservation_id",
            &[],
        )
        .await
        .expect("holds")
        .iter()
        .map(|r| ReservationId::from_uuid(r.get(0)))
        .collect();
    let mut decided = Vec::new();
    for (id, action) in ids.iter().zip([Action::Confirm, Action::Cancel]) {
        if let Some((hold, _)) = holds::act(&pool, *id, action).await.expect("act") {
            let mut redis = app.redis.clone();
            holds::apply(&mut redis, app.keys(), &hold)
                .await
                .expect("apply");
            decided.push(hold);
        }
    }
    assert_eq!(decided.len(), 2, "both were recorded holds");
    let before = waiting_in_redis(&app, &sale).await;
    assert_eq!(before.len(), 48);
    let stock_before = stock(&app, &sale).await;

    let mut redis = app.redis.clone();
    scripts::fence(&mut redis, app.keys(), &sale, Position::ZERO, "test", true)
        .await
        .expect("suspend");
    let outcome = rebuild::recover(&mut redis, app.keys(), &pool, &sale, "test")
        .await
        .expect("rebuild");
    assert!(
        matches!(outcome, rebuild::Outcome::Recovered(_)),
        "{outcome:?}"
    );

    assert_eq!(
        waiting_in_redis(&app, &sale).await,
        before,
        "same holds, same deadlines"
    );
    assert_eq!(
        stock(&app, &sale).await,
        stock_before,
        "held units stay taken"
    );
    assert_eq!(stock_before, 100 - 49, "49 held or confirmed, 1 cancelled");
    assert_eq!(
        app.db.scalar("SELECT count(*) FROM orders").await,
        1,
        "only the confirmed hold"
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM holds WHERE state = 'held'")
            .await,
        48,
        "the ten unseen reservations were recorded as holds, not confirmed"
    );
    let hold_ms: i64 = redis
        .hget(app.keys().meta(&sale), "hold_ms")
        .await
        .expect("meta");
    assert_eq!(hold_ms, 60_000, "the sale still has holds");
    // The limit still counts held units: each `u` buyer holds one of two.
    let buyer: i64 = redis
        .hget(app.keys().buyers(&sale), "late3")
        .await
        .expect("buyers");
    assert_eq!(buyer, 1);

    // And a waiting hold can still be confirmed after the rebuild.
    let waiting = ids
        .iter()
        .find(|id| !decided.iter().any(|h| h.reserved.reservation_id == **id))
        .copied()
        .expect("a waiting hold");
    let (hold, _) = holds::act(&pool, waiting, Action::Confirm)
        .await
        .expect("act")
        .expect("recorded");
    assert_eq!(hold.state, HoldState::Confirmed);
    assert_eq!(
        holds::apply(&mut redis, app.keys(), &hold)
            .await
            .expect("apply"),
        holds::Applied::Now
    );
}

/// A confirm that looked in PostgreSQL before the projector recorded its hold, then in
/// Redis after the trimmer removed the stream entry, finds the hold PostgreSQL has now
/// (it used to answer 500). An entry gone with nothing in PostgreSQL stays unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_whose_entry_was_trimmed_is_read_from_postgresql() {
    let app = spawn_app().await;
    let held = app.create_sale_with("trimmed", hold_terms(10, 5, 60)).await;
    let plain = app
        .create_sale_with("trimmed-plain", hold_terms(10, 5, 0))
        .await;
    let recorded = reserve(&app, &held, "u1").await.expect("a hold");
    let ordered = reserve(&app, &plain, "u3").await.expect("a reservation");
    let pool = app.db.pool();
    let mut redis = app.redis.clone();
    assert_eq!(
        holds::record_from_redis(&mut redis, app.keys(), &pool, &held, recorded)
            .await
            .expect("record"),
        FromRedis::Recorded
    );
    let projector = app.projector("p1");
    let projected = eventually(Duration::from_secs(10), || async {
        app.db.scalar("SELECT count(*) FROM orders").await == 1
    })
    .await;
    projector.stop().await;
    assert!(projected, "the plain reservation became an order");
    let never_recorded = reserve(&app, &held, "u2").await.expect("a hold");

    for sale in [&held, &plain] {
        let key = app.keys().events(sale);
        let ids: Vec<String> = read_range(&mut redis, &key, "-", "+")
            .await
            .expect("XRANGE")
            .into_iter()
            .map(|e| e.id)
            .collect();
        let _: i64 = redis.xdel(&key, &ids).await.expect("XDEL");
    }
    assert_eq!(
        holds::record_from_redis(&mut redis, app.keys(), &pool, &held, recorded)
            .await
            .expect("a trimmed hold PostgreSQL has"),
        FromRedis::Recorded
    );
    assert_eq!(
        holds::record_from_redis(&mut redis, app.keys(), &pool, &plain, ordered)
            .await
            .expect("a trimmed reservation PostgreSQL decided"),
        FromRedis::NotAHold
    );
    assert!(matches!(
        holds::record_from_redis(&mut redis, app.keys(), &pool, &held, never_recorded).await,
        Err(HoldError::Unreadable(id, _)) if id == never_recorded
    ));
}
