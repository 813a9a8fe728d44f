//! What `yoink status` reports of a sale, as one flat record with stable snake_case
//! names (durations in milliseconds), built from what each store answered. Pure code,
//! no I/O. A figure whose store could not be read is `None` (JSON `null`) and the
//! store's error is in `errors`: a missing side is never shown as zero.

use serde::Serialize;
use yoink_core::SaleId;

use crate::postgres_side::{OutboxTotal, PostgresSale};
use crate::redis_side::{RedisReading, id_ms};

/// One consumer of the projectors' group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: i64,
    /// Milliseconds since it last read or claimed anything.
    pub idle_ms: i64,
    /// Milliseconds since its last successful read (Redis 7.2+; `None` before).
    pub inactive_ms: Option<i64>,
}

/// One sale at a glance. Field docs say which store each figure comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaleStatus {
    pub sale_id: SaleId,
    /// When Redis read its figures (its own clock), epoch ms; the local clock when
    /// Redis could not be read.
    pub at_ms: i64,
    /// Redis holds the sale (its meta hash or its stream).
    pub in_redis: Option<bool>,
    /// PostgreSQL has the sale's row.
    pub in_postgres: Option<bool>,
    /// Redis: buys are suspended until Redis is rebuilt from PostgreSQL.
    pub suspended: Option<bool>,

    /// PostgreSQL's definition (Redis's when PostgreSQL has none).
    pub initial_stock: Option<i64>,
    /// Redis: units on sale now.
    pub stock: Option<i64>,
    /// Redis: units ever taken by buyers.
    pub reserved: Option<i64>,
    /// Redis: units ever given back (cancels, expiries, dead letters).
    pub released_in_redis: Option<i64>,
    /// PostgreSQL: units in orders.
    pub confirmed: Option<i64>,
    /// PostgreSQL: order rows.
    pub orders: Option<i64>,
    /// PostgreSQL: units whose fate is `released`.
    pub released: Option<i64>,
    /// PostgreSQL: units of holds still waiting for a confirm, a cancel or expiry.
    pub held: Option<i64>,

    /// Redis: entries in the sale's event stream.
    pub stream_length: Option<i64>,
    /// Redis: the projectors' group exists (no projector ever read the sale otherwise).
    pub group_exists: Option<bool>,
    /// Redis: entries no projector was given yet (the whole stream without a group;
    /// `None` also when Redis cannot tell, e.g. after an `XDEL`).
    pub lag: Option<i64>,
    /// How long the oldest of those has waited (`None`: none waits).
    pub oldest_undelivered_age_ms: Option<i64>,
    pub last_delivered_id: Option<String>,
    /// Redis: entries delivered to a projector and not acknowledged yet.
    pub pending: Option<i64>,
    /// The oldest pending entry (`None`: nothing pending): its id, its age (since it
    /// was appended), how long since it was last delivered or claimed, how many times
    /// it was delivered, and who holds it.
    pub oldest_pending_id: Option<String>,
    pub oldest_pending_age_ms: Option<i64>,
    pub oldest_pending_idle_ms: Option<i64>,
    pub oldest_pending_deliveries: Option<i64>,
    pub oldest_pending_consumer: Option<String>,
    /// Redis: consumers in the group; `consumers` lists at most
    /// `redis_side::MAX_CONSUMERS` of them, those with most pending first.
    pub consumers_total: Option<i64>,
    pub consumers: Option<Vec<ConsumerStatus>>,

    /// Redis: entries in the sale's dead-letter stream (a crash mid-way may copy one
    /// twice), and the oldest one.
    pub dead_letters: Option<i64>,
    pub oldest_dead_letter_id: Option<String>,
    pub oldest_dead_letter_age_ms: Option<i64>,
    pub oldest_dead_letter_reason: Option<String>,

    /// PostgreSQL: the sale's outbox rows not published yet, and the oldest one's age.
    pub outbox_backlog: Option<i64>,
    pub outbox_oldest_age_ms: Option<i64>,
    /// The same over every sale's rows.
    pub outbox_backlog_all_sales: Option<i64>,
    pub outbox_oldest_age_all_sales_ms: Option<i64>,

    /// Why figures are missing: a store that could not be read, one line each.
    pub errors: Vec<String>,
}

/// How long ago a stream id was appended, as of `now_ms` (never negative).
fn age_of(id: &str, now_ms: i64) -> Option<i64> {
    id_ms(id).map(|ms| (now_ms - ms).max(0))
}

fn number(raw: &Option<String>) -> Option<i64> {
    raw.as_deref().and_then(|s| s.parse().ok())
}

impl SaleStatus {
    /// The record of `sale` from what each store answered: `None` for a store that
    /// could not be read (its error is in `errors`). `local_now_ms` dates a reading
    /// Redis could not.
    pub fn build(
        sale: SaleId,
        redis: Option<&RedisReading>,
        postgres: Option<(&PostgresSale, OutboxTotal)>,
        errors: Vec<String>,
        local_now_ms: i64,
    ) -> Self {
        let mut s = SaleStatus {
            sale_id: sale,
            at_ms: local_now_ms,
            in_redis: None,
            in_postgres: None,
            suspended: None,
            initial_stock: None,
            stock: None,
            reserved: None,
            released_in_redis: None,
            confirmed: None,
            orders: None,
            released: None,
            held: None,
            stream_length: None,
            group_exists: None,
            lag: None,
            oldest_undelivered_age_ms: None,
            last_delivered_id: None,
            pending: None,
            oldest_pending_id: None,
            oldest_pending_age_ms: None,
            oldest_pending_idle_ms: None,
            oldest_pending_deliveries: None,
            oldest_pending_consumer: None,
            consumers_total: None,
            consumers: None,
            dead_letters: None,
            oldest_dead_letter_id: None,
            oldest_dead_letter_age_ms: None,
            oldest_dead_letter_reason: None,
            outbox_backlog: None,
            outbox_oldest_age_ms: None,
            outbox_backlog_all_sales: None,
            outbox_oldest_age_all_sales_ms: None,
            errors,
        };
        if let Some(r) = redis {
            s.fill_redis(r);
        }
        if let Some((p, outbox)) = postgres {
            s.in_postgres = Some(p.known);
            s.initial_stock = p.initial_stock.or(s.initial_stock);
            s.confirmed = Some(p.confirmed_units);
            s.orders = Some(p.orders);
            s.released = Some(p.released_units);
            s.held = Some(p.held_units);
            s.outbox_backlog = Some(p.outbox_backlog);
            s.outbox_oldest_age_ms = p.outbox_oldest_age_ms;
            s.outbox_backlog_all_sales = Some(outbox.backlog);
            s.outbox_oldest_age_all_sales_ms = outbox.oldest_age_ms;
        }
        s
    }

    fn fill_redis(&mut self, r: &RedisReading) {
        let now = r.now_ms;
        self.at_ms = now;
        self.in_redis = Some(r.knows_sale());
        self.suspended = Some(r.suspended);
        self.initial_stock = number(&r.initial);
        self.stock = number(&r.stock);
        self.reserved = number(&r.reserved);
        self.released_in_redis = number(&r.released);
        self.stream_length = Some(r.stream_length);
        self.group_exists = Some(r.group.is_some());
        self.oldest_undelivered_age_ms = r
            .first_undelivered_id
            .as_deref()
            .and_then(|id| age_of(id, now));
        match &r.group {
            Some(g) => {
                // Nothing after the group's last-delivered id means nothing waits,
                // whatever XINFO's `lag` says: after Redis came back from an older
                // state it was seen reporting 107 for a fully delivered stream.
                self.lag = match r.first_undelivered_id {
                    None => Some(0),
                    Some(_) => g.lag,
                };
                self.last_delivered_id = Some(g.last_delivered_id.clone());
                self.pending = Some(g.pending);
                if let Some(p) = &g.oldest_pending {
                    self.oldest_pending_id = Some(p.id.clone());
                    self.oldest_pending_age_ms = age_of(&p.id, now);
                    self.oldest_pending_idle_ms = Some(p.idle_ms);
                    self.oldest_pending_deliveries = Some(p.deliveries);
                    self.oldest_pending_consumer = Some(p.consumer.clone());
                }
                self.consumers_total = Some(g.consumers);
                self.consumers = Some(
                    g.consumer_list
                        .iter()
                        .map(|c| ConsumerStatus {
                            name: c.name.clone(),
                            pending: c.pending,
                            idle_ms: c.idle_ms,
                            inactive_ms: c.inactive_ms,
                        })
                        .collect(),
                );
            }
            None => {
                // No projector ever read the stream: every entry waits.
                self.lag = Some(r.stream_length);
                self.pending = Some(0);
                self.consumers_total = Some(0);
                self.consumers = Some(Vec::new());
            }
        }
        self.dead_letters = Some(r.dead_letters);
        if let Some(d) = &r.oldest_dead {
            self.oldest_dead_letter_id = Some(d.id.clone());
            self.oldest_dead_letter_age_ms = age_of(&d.id, now);
            self.oldest_dead_letter_reason = Some(d.reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_side::{DeadReading, GroupReading, PendingReading};

    fn sale() -> SaleId {
        SaleId::parse("s1").expect("valid id")
    }

    #[test]
    fn a_store_that_could_not_be_read_leaves_its_figures_null_never_zero() {
        let s = SaleStatus::build(sale(), None, None, vec!["Redis: down".into()], 42);
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["stock"], serde_json::Value::Null);
        assert_eq!(json["confirmed"], serde_json::Value::Null);
        assert_eq!(json["pending"], serde_json::Value::Null);
        assert_eq!(json["at_ms"], 42);
        assert_eq!(json["errors"][0], "Redis: down");
    }

    #[test]
    fn ages_are_measured_on_redis_clock_from_the_stream_ids() {
        let reading = RedisReading {
            now_ms: 10_000,
            meta_exists: true,
            stock: Some("7".into()),
            stream_exists: true,
            stream_length: 5,
            first_undelivered_id: Some("9000-0".into()),
            group: Some(GroupReading {
                pending: 2,
                consumers: 1,
                last_delivered_id: "8000-1".into(),
                lag: Some(1),
                oldest_pending: Some(PendingReading {
                    id: "6000-0".into(),
                    consumer: "ghost".into(),
                    idle_ms: 1_500,
                    deliveries: 2,
                }),
                consumer_list: Vec::new(),
            }),
            dead_letters: 1,
            oldest_dead: Some(DeadReading {
                id: "12000-0".into(),
                reason: "why".into(),
            }),
            ..RedisReading::default()
        };
        let s = SaleStatus::build(sale(), Some(&reading), None, Vec::new(), 0);
        assert_eq!(s.at_ms, 10_000);
        assert_eq!(s.stock, Some(7));
        assert_eq!(s.reserved, None, "no such field in meta");
        assert_eq!(s.oldest_undelivered_age_ms, Some(1_000));
        assert_eq!(s.oldest_pending_age_ms, Some(4_000));
        assert_eq!(s.oldest_pending_idle_ms, Some(1_500));
        assert_eq!(
            s.oldest_dead_letter_age_ms,
            Some(0),
            "a clock step never shows a negative age"
        );
    }

    #[test]
    fn a_stream_without_the_group_counts_every_entry_as_lag() {
        let reading = RedisReading {
            stream_exists: true,
            stream_length: 3,
            ..RedisReading::default()
        };
        let s = SaleStatus::build(sale(), Some(&reading), None, Vec::new(), 0);
        assert_eq!(
            (s.group_exists, s.lag, s.pending),
            (Some(false), Some(3), Some(0))
        );
    }

    #[test]
    fn a_fully_delivered_stream_has_no_lag_whatever_xinfo_says() {
        let reading = RedisReading {
            stream_exists: true,
            stream_length: 107,
            group: Some(GroupReading {
                last_delivered_id: "9000-0".into(),
                // What XINFO GROUPS answered after Redis came back from an older state.
                lag: Some(107),
                ..GroupReading::default()
            }),
            first_undelivered_id: None,
            ..RedisReading::default()
        };
        let s = SaleStatus::build(sale(), Some(&reading), None, Vec::new(), 0);
        assert_eq!(s.lag, Some(0));
    }
}
