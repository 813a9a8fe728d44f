//! Replay's guarantees: resumable after a kill, never doubled, copies deduplicated,
//! bounded by its loop guard.

use redis::AsyncCommands;
use yoink_dlq::{Outcome, ReplayOptions, exit, replay};
use yoink_projector::entry::Entry;

use crate::fixture::{dead_lettered_sale, fixed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_after_its_commit_and_run_again_ends_with_one_order_and_no_dead_letter() {
    let f = dead_lettered_sale("killed").await;
    let mut dlq = f.dlq();
    let fixed = fixed();
    let before = f.dead_copies().await;

    // Killed midway: PostgreSQL committed the order, the dead letter was not removed.
    let letter = f.letter(&f.newer_original).await;
    let decided = replay::decide(&mut dlq, &letter, &fixed)
        .await
        .expect("first step");
    assert_eq!(decided.outcome, Outcome::Projected);
    assert_eq!(f.orders_of(f.newer).await, 1);
    assert_eq!(f.dead_copies().await, before, "still in the dead stream");
    assert_eq!(f.replays_of(&f.newer_original).await, Some(1));

    // Run again: it finds the order, writes nothing, removes the entry.
    let entry = f.entry(&f.newer_original).await;
    let report = replay::replay_entry(&mut dlq, &entry, &fixed)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::AlreadyConfirmed);
    assert!(report.entries[0].removed);
    assert_eq!(report.exit_code, exit::DONE);
    assert_eq!(f.orders_of(f.newer).await, 1, "never doubled");
    assert_eq!(f.dead_copies().await, before - 1);
    assert_eq!(f.replays_of(&f.newer_original).await, None);

    // And the same with `--all`, killed after the commit of the other one.
    let letter = f.letter(&f.newer_too_original).await;
    replay::decide(&mut dlq, &letter, &fixed)
        .await
        .expect("first step");
    let report = replay::replay_all(&mut dlq, Some(f.sale.as_str()), 100, &fixed)
        .await
        .expect("replay --all");
    let resumed = report
        .entries
        .iter()
        .find(|e| e.original_id == f.newer_too_original)
        .expect("replayed");
    assert_eq!(resumed.outcome, Outcome::AlreadyConfirmed);
    assert_eq!(f.orders_of(f.newer_too).await, 1);
    assert_eq!(
        f.app.db.scalar("SELECT count(*) FROM orders").await,
        3,
        "the buyer's and the two replayed ones"
    );
    f.assert_units_add_up(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_entry_are_one_dead_letter_replayed_and_removed_together() {
    let f = dead_lettered_sale("copies").await;
    let mut dlq = f.dlq();
    // A projector killed mid dead-letter repeats it on redelivery: a second copy.
    let mut redis = f.app.redis.clone();
    let events = f.app.keys().events(&f.sale);
    let raw =
        yoink_core::stream::read_range(&mut redis, &events, &f.newer_original, &f.newer_original)
            .await
            .expect("XRANGE");
    let entry = Entry::from_stream(raw.into_iter().next().expect("the entry"));
    let reason = entry
        .event
        .clone()
        .expect_err("unreadable here")
        .to_string();
    yoink_projector::dead_letter::dead_letter(
        &mut redis,
        f.app.keys(),
        &f.app.db.pool(),
        &f.sale,
        yoink_projector::dead_letter::GaveUp {
            consumer: "repeat",
            deliveries: 1,
        },
        &entry,
        &format!("malformed event: {reason}"),
    )
    .await
    .expect("dead-letter again");

    let letter = f.letter(&f.newer_original).await;
    assert_eq!(letter.copies.len(), 2, "{letter:?}");
    let listing = yoink_dlq::scan::list(&mut dlq, Some(f.sale.as_str()), None, 100)
        .await
        .expect("list");
    assert_eq!(listing.entries.len(), 4, "one dead letter, two copies");
    assert_eq!(listing.copies_in_streams, 5);

    // Naming the second copy replays the entry once and removes both copies.
    let second =
        yoink_dlq::EntryRef::parse(&letter.copies[1], Some(f.sale.as_str())).expect("entry");
    let fixed = fixed();
    let report = replay::replay_entry(&mut dlq, &second, &fixed)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::Projected);
    assert_eq!(report.entries[0].copies.len(), 2);
    assert_eq!(f.orders_of(f.newer).await, 1);
    let left: usize = redis
        .xlen(f.app.keys().dead_letters(&f.sale))
        .await
        .expect("XLEN");
    assert_eq!(left, 3, "both copies removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_guard_stops_an_entry_that_keeps_failing_at_its_bound() {
    let f = dead_lettered_sale("guard").await;
    let mut dlq = f.dlq();
    let entry = f.entry(&f.garbage_original).await;
    let options = ReplayOptions::default();
    for attempt in 1..=3 {
        let report = replay::replay_entry(&mut dlq, &entry, &options)
            .await
            .expect("replay");
        assert_eq!(report.entries[0].outcome, Outcome::StillFailing);
        assert_eq!(report.entries[0].replays, attempt);
        assert_eq!(report.exit_code, exit::UNRESOLVED);
    }
    let report = replay::replay_entry(&mut dlq, &entry, &options)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::LoopGuard);
    assert_eq!(report.exit_code, exit::UNRESOLVED);
    assert_eq!(
        f.replays_of(&f.garbage_original).await,
        Some(3),
        "a stopped replay is not an attempt"
    );
    // The count lives in Redis: a new process sees it too, and a higher bound lets
    // one more attempt through.
    let mut fresh = f.dlq();
    let report = replay::replay_entry(&mut fresh, &entry, &options)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::LoopGuard);
    let raised = ReplayOptions {
        max_replays: 4,
        ..options
    };
    let report = replay::replay_entry(&mut fresh, &entry, &raised)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::StillFailing);
    assert_eq!(f.replays_of(&f.garbage_original).await, Some(4));
    assert_eq!(f.dead_copies().await, 4, "nothing removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_writes_no_order_for_units_redis_gave_back_nor_on_a_suspended_sale() {
    let f = dead_lettered_sale("not-held").await;
    let mut dlq = f.dlq();
    let fixed = fixed();
    // The sale is suspended (Redis went back in time): nothing is projected, exit 2.
    let mut redis = f.app.redis.clone();
    let meta = f.app.keys().meta(&f.sale);
    let _: () = redis.hset(&meta, "suspended", "1.0").await.expect("HSET");
    let entry = f.entry(&f.newer_original).await;
    let err = replay::replay_entry(&mut dlq, &entry, &fixed)
        .await
        .expect_err("suspended");
    assert_eq!(err.exit_code(), exit::STORE);
    assert_eq!(f.orders_of(f.newer).await, 0);
    assert_eq!(
        f.replays_of(&f.newer_original).await,
        None,
        "waiting for a rebuild is not an attempt"
    );
    let _: () = redis.hdel(&meta, "suspended").await.expect("HDEL");

    // Redis gave the units back (as a rebuild that never saw the entry would): an order
    // now would sell them twice.
    let released = yoink_core::scripts::release(&mut redis, f.app.keys(), &f.sale, f.newer, "test")
        .await
        .expect("release");
    assert_eq!(released, yoink_core::scripts::ReleaseOutcome::Released(2));
    let report = replay::replay_entry(&mut dlq, &entry, &fixed)
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::StillFailing);
    assert!(
        report.entries[0].detail.contains("Redis released"),
        "{}",
        report.entries[0].detail
    );
    assert_eq!(f.orders_of(f.newer).await, 0);
    assert!(!report.entries[0].removed);
}
