//! The whole round on one sale: list, show, replay, purge.

use yoink_dlq::{Fate, Outcome, ReplayOptions, exit, purge, replay, scan};

use crate::fixture::{dead_lettered_sale, fixed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_replay_and_purge_a_garbage_entry_and_a_reservation_postgres_refused() {
    let f = dead_lettered_sale("workflow").await;
    let mut dlq = f.dlq();
    // One order (the ordinary buyer), one release (the refused one, its unit back), and
    // the two newer-version reservations undecided with their units still taken.
    f.assert_units_add_up(4).await;
    assert_eq!(f.remaining().await, 10 - 1 - 4);

    // list: every dead letter once, with its reason, and the counts by reason.
    let listing = scan::list(&mut dlq, Some(f.sale.as_str()), None, 100)
        .await
        .expect("list");
    assert_eq!(listing.entries.len(), 4, "{:#?}", listing.entries);
    assert_eq!(listing.counts_by_reason.get("malformed"), Some(&3));
    assert_eq!(listing.counts_by_reason.get("refused:23514"), Some(&1));
    assert!(!listing.truncated);
    let refused_only = scan::list(&mut dlq, None, Some("refused:23514"), 100)
        .await
        .expect("list --reason");
    assert_eq!(refused_only.entries.len(), 1);
    assert_eq!(refused_only.entries[0].reservation_id, Some(f.refused));
    let limited = scan::list(&mut dlq, Some(f.sale.as_str()), None, 2)
        .await
        .expect("list --limit 2");
    assert_eq!(limited.entries.len(), 2);
    assert!(limited.truncated);

    // show: the original event, the reason and the fate.
    let refused_original = f.original_of(f.refused).await;
    let refused_entry = f.entry(&refused_original).await;
    let shown = yoink_dlq::show(&mut dlq, &refused_entry)
        .await
        .expect("show");
    assert!(
        shown.letter.reason.contains("23514"),
        "{}",
        shown.letter.reason
    );
    assert_eq!(
        shown.event.get("user_id").map(String::as_str),
        Some("refused")
    );
    assert!(shown.parse_error.is_none());
    assert_eq!(
        shown.letter.deliveries,
        Some(2),
        "the projector gave up at --max-deliveries and wrote it on the copy"
    );
    assert!(
        matches!(&shown.fate, Some(Fate::Released { reason }) if reason.contains("23514")),
        "{:?}",
        shown.fate
    );
    let newer_entry = f.entry(&f.newer_original).await;
    let shown = yoink_dlq::show(&mut dlq, &newer_entry).await.expect("show");
    assert_eq!(shown.fate, Some(Fate::None), "never decided");
    assert!(
        shown
            .parse_error
            .as_deref()
            .is_some_and(|e| e.contains("quantity")),
        "{:?}",
        shown.parse_error
    );
    let garbage_entry = f.entry(&f.garbage_original).await;
    let shown = yoink_dlq::show(&mut dlq, &garbage_entry)
        .await
        .expect("show");
    assert_eq!(shown.fate, None, "garbage names no reservation");
    assert_eq!(shown.event.get("hello").map(String::as_str), Some("world"));

    // replay of the released one: refused, said plainly; it stays, nothing written.
    let report = replay::replay_entry(&mut dlq, &refused_entry, &ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::ReleasedFinal);
    assert!(report.entries[0].detail.contains("cannot become an order"));
    assert!(!report.entries[0].removed);
    assert_eq!(report.exit_code, exit::UNRESOLVED);
    assert_eq!(f.orders_of(f.refused).await, 0);
    assert_eq!(
        f.replays_of(&refused_original).await,
        None,
        "not an attempt"
    );

    // replay before the fix: still failing, counted.
    let report = replay::replay_entry(&mut dlq, &newer_entry, &ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.entries[0].outcome, Outcome::StillFailing);
    assert_eq!(report.entries[0].replays, 1);
    assert_eq!(f.replays_of(&f.newer_original).await, Some(1));

    // A dry run with the fix says it would project, and writes nothing.
    let fixed = fixed();
    let dry = ReplayOptions {
        dry_run: true,
        ..fixed
    };
    let report = replay::replay_entry(&mut dlq, &newer_entry, &dry)
        .await
        .expect("dry run");
    assert_eq!(report.entries[0].outcome, Outcome::Projected);
    assert!(!report.entries[0].removed);
    assert_eq!(f.orders_of(f.newer).await, 0, "a dry run writes nothing");
    assert_eq!(f.replays_of(&f.newer_original).await, Some(1));

    // Once fixed: projected, exactly one order, out of the dead stream.
    let report = replay::replay_entry(&mut dlq, &newer_entry, &fixed)
        .await
        .expect("replay");
    assert_eq!(
        report.entries[0].outcome,
        Outcome::Projected,
        "{:?}",
        report.entries[0]
    );
    assert!(report.entries[0].removed);
    assert_eq!(report.exit_code, exit::DONE);
    assert_eq!(f.orders_of(f.newer).await, 1);
    assert_eq!(
        f.replays_of(&f.newer_original).await,
        None,
        "counter removed with it"
    );
    let again = replay::replay_entry(&mut dlq, &newer_entry, &fixed).await;
    let err = again.expect_err("the entry is gone");
    assert_eq!(err.exit_code(), exit::NOT_FOUND);

    // --all: the other newer-version entry is projected, the rest stay unresolved.
    let report = replay::replay_all(&mut dlq, Some(f.sale.as_str()), 100, &fixed)
        .await
        .expect("replay --all");
    let outcome_of = |original: &str| {
        report
            .entries
            .iter()
            .find(|e| e.original_id == original)
            .map(|e| e.outcome)
    };
    assert_eq!(report.entries.len(), 3, "{:#?}", report.entries);
    assert_eq!(outcome_of(&refused_original), Some(Outcome::ReleasedFinal));
    assert_eq!(outcome_of(&f.newer_too_original), Some(Outcome::Projected));
    assert_eq!(outcome_of(&f.garbage_original), Some(Outcome::StillFailing));
    assert_eq!(report.exit_code, exit::UNRESOLVED);
    assert_eq!(f.orders_of(f.newer_too).await, 1);
    assert_eq!(f.orders_of(f.refused).await, 0);
    assert_eq!(f.dead_copies().await, 2);
    f.assert_units_add_up(0).await;
    assert_eq!(f.remaining().await, 10 - 1 - 2 - 2);

    // purge: one entry, then everything; the counters go with them.
    let purged = purge::purge_entry(&mut dlq, &garbage_entry)
        .await
        .expect("purge ENTRY");
    assert_eq!(purged.copies_removed, 1);
    assert_eq!(f.replays_of(&f.garbage_original).await, None);
    let purged = purge::purge_all(&mut dlq, Some(f.sale.as_str()))
        .await
        .expect("purge --all");
    assert_eq!(purged.copies_removed, 1);
    assert_eq!(f.dead_copies().await, 0);
    let listing = scan::list(&mut dlq, None, None, 100).await.expect("list");
    assert!(listing.entries.is_empty());
    let mut redis = f.app.redis.clone();
    let counters: bool =
        redis::AsyncCommands::exists(&mut redis, f.app.keys().dead_letter_replays(&f.sale))
            .await
            .expect("EXISTS");
    assert!(!counters, "no replay counter outlives its dead letters");
    // Purging decided nothing: the orders and the stock are as replay left them.
    f.assert_units_add_up(0).await;
    assert_eq!(
        f.app
            .db
            .scalar("SELECT count(*) FROM reservation_fates WHERE fate = 'released'")
            .await,
        1
    );
}
