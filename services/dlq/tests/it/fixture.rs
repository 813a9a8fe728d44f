//! A sale whose dead stream a real projector filled: one reservation PostgreSQL refuses
//! (a trigger in the test's own database raises a CHECK violation for user `refused`),
//! two reservations whose stream entries a "newer version" wrote (`units` instead of
//! `quantity`: this version cannot read them, a newer reader can), one garbage entry,
//! and one ordinary reservation that becomes an order.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamId;
use yoink_core::events::{EventError, SaleEvent};
use yoink_core::{ReservationId, SaleId, UserId, scripts, stream};
use yoink_dlq::{DeadLetter, Dlq, EntryRef, ReplayOptions};
use yoink_projector::ProjectorArgs;
use yoink_testkit::{TestApp, spawn_app};

pub struct Fixture {
    pub app: TestApp,
    pub sale: SaleId,
    /// Units each reservation took, by name.
    pub refused: ReservationId,
    pub newer: ReservationId,
    pub newer_too: ReservationId,
    /// The garbage entry's id in the sale stream.
    pub garbage_original: String,
    /// The newer-version entries' ids in the sale stream.
    pub newer_original: String,
    pub newer_too_original: String,
}

pub const STOCK: i64 = 10;

/// The reader of a newer version: it knows `units` as the quantity.
pub fn newer_reader(fields: &HashMap<String, String>) -> Result<SaleEvent, EventError> {
    let mut fields = fields.clone();
    if let Some(units) = fields.remove("units") {
        fields.entry("quantity".to_owned()).or_insert(units);
    }
    SaleEvent::from_fields(&fields)
}

/// Replay as the newer version would: its reader, the default bounds.
pub fn fixed() -> ReplayOptions {
    ReplayOptions {
        read: newer_reader,
        ..ReplayOptions::default()
    }
}

fn fast_args(consumer: &str) -> ProjectorArgs {
    ProjectorArgs {
        block_ms: 50,
        claim_idle_ms: 200,
        claim_interval_ms: 50,
        max_deliveries: 2,
        ..ProjectorArgs::local(consumer)
    }
}

async fn reserve(app: &TestApp, sale: &SaleId, user: &str, quantity: i64) -> ReservationId {
    let user = UserId::parse(user).expect("valid user id");
    let mut redis = app.redis.clone();
    scripts::reserve(
        &mut redis,
        app.keys(),
        &scripts::Reserve {
            reservation_id: ReservationId::for_sale(sale),
            sale_id: sale,
            user_id: &user,
            quantity,
            idempotency_key: None,
            floor: yoink_core::Position::ZERO,
        },
    )
    .await
    .expect("reserved")
    .reservation_id
}

/// Replaces `id`'s stream entry with the one a newer version would write (its units in
/// `units`), keeping the reservation taken in Redis. Returns the new entry's id.
async fn rewrite_as_newer_version(app: &TestApp, sale: &SaleId, id: ReservationId) -> String {
    let mut redis = app.redis.clone();
    let events = app.keys().events(sale);
    let entries = stream::read_range(&mut redis, &events, "-", "+")
        .await
        .expect("XRANGE");
    let entry: &StreamId = entries
        .iter()
        .find(|e| stream::fields(e).get("reservation_id") == Some(&id.to_string()))
        .expect("the reservation's entry");
    let mut fields: Vec<(String, String)> = stream::fields(entry)
        .into_iter()
        .map(|(k, v)| {
            if k == "quantity" {
                ("units".into(), v)
            } else {
                (k, v)
            }
        })
        .collect();
    fields.sort();
    let _: usize = redis.xdel(&events, &[&entry.id]).await.expect("XDEL");
    redis.xadd(&events, "*", &fields).await.expect("XADD")
}

/// Builds the sale and lets a projector dead-letter its four entries.
pub async fn dead_lettered_sale(name: &str) -> Fixture {
    let app = spawn_app().await;
    let sale = app.create_sale(name, STOCK, 0).await;
    app.db.refuse_orders_of_buyer_refused().await;

    assert!(app.reserve_direct(&sale, "buyer", 1).await);
    let refused = reserve(&app, &sale, "refused", 1).await;
    let newer = reserve(&app, &sale, "newer", 2).await;
    let newer_too = reserve(&app, &sale, "newer_too", 2).await;
    let newer_original = rewrite_as_newer_version(&app, &sale, newer).await;
    let newer_too_original = rewrite_as_newer_version(&app, &sale, newer_too).await;
    let mut redis = app.redis.clone();
    let garbage_original: String = redis
        .xadd(
            app.keys().events(&sale),
            "*",
            &[("type", "bought"), ("hello", "world")],
        )
        .await
        .expect("XADD garbage");

    let projector = app.projector_with(fast_args("dlq-test"));
    let dead = yoink_testkit::eventually(Duration::from_secs(20), || async {
        let mut redis = app.redis.clone();
        let copies: redis::streams::StreamRangeReply = redis
            .xrange_all(app.keys().dead_letters(&sale))
            .await
            .unwrap_or_default();
        copies.ids.len() >= 4
    })
    .await;
    assert!(dead, "the projector never dead-lettered the four entries");
    assert!(app.wait_drained(&sale, Duration::from_secs(10)).await);
    projector.stop().await;
    Fixture {
        app,
        sale,
        refused,
        newer,
        newer_too,
        garbage_original,
        newer_original,
        newer_too_original,
    }
}

impl Fixture {
    pub fn dlq(&self) -> Dlq {
        Dlq::new(
            self.app.redis.clone(),
            self.app.db.pool(),
            self.app.keys().clone(),
        )
    }

    /// Every dead letter of the sale.
    pub async fn letters(&self) -> Vec<DeadLetter> {
        let mut dlq = self.dlq();
        yoink_dlq::scan::list(&mut dlq, Some(self.sale.as_str()), None, 100)
            .await
            .expect("list")
            .entries
    }

    /// The dead letter of the stream entry `original`.
    pub async fn letter(&self, original: &str) -> DeadLetter {
        self.letters()
            .await
            .into_iter()
            .find(|e| e.original_id == original)
            .unwrap_or_else(|| panic!("no dead letter of {original}"))
    }

    /// The entry name of the dead letter of `original`.
    pub async fn entry(&self, original: &str) -> EntryRef {
        EntryRef::parse(&self.letter(original).await.entry, None).expect("listed names parse")
    }

    /// The sale-stream id of `id`'s dead letter (the refused one kept its own entry).
    pub async fn original_of(&self, id: ReservationId) -> String {
        self.letters()
            .await
            .into_iter()
            .find(|e| e.reservation_id == Some(id))
            .map(|e| e.original_id)
            .unwrap_or_else(|| panic!("no dead letter of reservation {id}"))
    }

    pub async fn orders_of(&self, id: ReservationId) -> i64 {
        self.app
            .db
            .scalar(&format!(
                "SELECT count(*) FROM orders WHERE reservation_id = '{id}'"
            ))
            .await
    }

    pub async fn remaining(&self) -> i64 {
        let mut redis = self.app.redis.clone();
        redis
            .get(self.app.keys().stock(&self.sale))
            .await
            .expect("stock")
    }

    pub async fn dead_copies(&self) -> usize {
        let mut redis = self.app.redis.clone();
        redis
            .xlen(self.app.keys().dead_letters(&self.sale))
            .await
            .expect("XLEN")
    }

    pub async fn replays_of(&self, original: &str) -> Option<u64> {
        let mut redis = self.app.redis.clone();
        redis
            .hget(self.app.keys().dead_letter_replays(&self.sale), original)
            .await
            .expect("HGET")
    }

    /// Units Redis and PostgreSQL agree on: stock = initial - confirmed - units of
    /// reservations PostgreSQL never decided (`undecided`); PostgreSQL's counters match
    /// its rows.
    pub async fn assert_units_add_up(&self, undecided: i64) {
        let confirmed = self
            .app
            .db
            .scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM orders")
            .await;
        let counted = self
            .app
            .db
            .scalar(&format!(
                "SELECT confirmed_units FROM sales WHERE sale_id = '{}'",
                self.sale
            ))
            .await;
        assert_eq!(
            counted, confirmed,
            "sales.confirmed_units counts the orders"
        );
        assert_eq!(
            self.remaining().await,
            STOCK - confirmed - undecided,
            "stock = initial - confirmed - undecided"
        );
    }
}
