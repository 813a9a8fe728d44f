//! Every Redis key Yoink uses, in one place.
//!
//! All keys of one sale carry the hash tag `{sale:ID}`, so a script that touches them
//! runs on a single Redis Cluster slot. Code elsewhere must never format a key by hand.
//! A `Keyspace` prefix (empty in production) keeps tests and tenants apart; the prefix
//! stays outside the braces so it never changes which keys share a slot.

use crate::ids::SaleId;

/// Consumer group of the projectors on every sale stream.
pub const PROJECTOR_GROUP: &str = "projectors";

/// The keys of one Redis deployment, under an optional prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn sale_key(&self, sale: &SaleId, suffix: &str) -> String {
        format!("{}:{}", self.sale_tag(sale), suffix)
    }

    /// The prefix and hash tag every key of `sale` starts with: `{prefix}{sale:ID}`.
    /// `SCAN MATCH` on it (glob characters escaped) finds every key of the sale.
    pub fn sale_tag(&self, sale: &SaleId) -> String {
        format!("{}{{sale:{}}}", self.prefix, sale.as_str())
    }

    /// Every key a sale can have, staged rebuild copies included: what archiving a sale
    /// removes. A new per-sale key must be added here.
    pub fn all_of_sale(&self, sale: &SaleId) -> Vec<String> {
        let mut all = vec![
            self.meta(sale),
            self.stock(sale),
            self.buyers(sale),
            self.idempotency(sale),
            self.reservations(sale),
            self.events(sale),
            self.holds(sale),
            self.dead_letters(sale),
            self.dead_letter_replays(sale),
        ];
        for staged in [
            self.buyers(sale),
            self.idempotency(sale),
            self.reservations(sale),
            self.holds(sale),
        ] {
            all.push(self.staged(&staged));
        }
        all
    }

    /// Hash: `initial`, `limit`, `starts_at_ms`, `ends_at_ms`, `reserved`, `released`,
    /// the position `epoch` and `seq`, and while the sale is suspended `suspended` (a
    /// token) and `suspended_reason`.
    pub fn meta(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "meta")
    }

    /// String: units still on sale.
    pub fn stock(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "stock")
    }

    /// Hash: user id -> units held (reserved minus released).
    pub fn buyers(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "buyers")
    }

    /// Hash: Idempotency-Key -> reservation id.
    pub fn idempotency(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "idem")
    }

    /// Hash: reservation id -> `state|user|quantity|stream_id|reserved_at_ms`.
    pub fn reservations(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "reservations")
    }

    /// Stream: the sale's `reserved`, `released`, `confirmed` and `extended` events (the
    /// Redis-side outbox).
    pub fn events(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "events")
    }

    /// Sorted set: reservation id -> `expires_at_ms`, for the holds of a sale with
    /// `hold_seconds` that Redis has not settled yet (confirmed, or released by a cancel
    /// or an expiry). The projectors' expiry sweep reads the due ones.
    pub fn holds(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "holds")
    }

    /// Stream: entries the projectors gave up on, with the reason.
    pub fn dead_letters(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "dead")
    }

    /// Hash: a dead letter's `original_id` -> how many times `yoink dlq replay` tried
    /// it, so its loop guard survives restarts. In the sale's slot, beside `dead`.
    pub fn dead_letter_replays(&self, sale: &SaleId) -> String {
        self.sale_key(sale, "dead:replays")
    }

    /// Where a rebuild stages a replacement for one of the sale's hashes (`buyers`,
    /// `idempotency`, `reservations`) before swapping it in atomically; it keeps the
    /// key's hash tag, so the swap runs in one slot.
    pub fn staged(&self, key: &str) -> String {
        format!("{key}:rebuild")
    }

    /// Set of every sale id, so projectors and lookups find sales without a scan.
    /// Not in any sale's slot: it is only ever touched on its own, never inside a script.
    pub fn sales_registry(&self) -> String {
        format!("{}yoink:sales", self.prefix)
    }

    /// Counter `serve --durability replica` increments right before each `WAIT`, so the
    /// `WAIT` covers every earlier write of every client. Not in any sale's slot.
    pub fn durability_probe(&self) -> String {
        format!("{}yoink:durability-probe", self.prefix)
    }

    /// Stream the outbox relay publishes order events to, for downstream consumers.
    pub fn order_events(&self) -> String {
        format!("{}yoink:order-events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("every sale key has a hash tag");
        let close = key[open..].find('}').expect("the hash tag is closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_sale_shares_one_hash_tag() {
        let sale = SaleId::parse("s-1").expect("valid id");
        for ks in [Keyspace::default(), Keyspace::new("t42:")] {
            let keys = [
                ks.meta(&sale),
                ks.stock(&sale),
                ks.buyers(&sale),
                ks.idempotency(&sale),
                ks.reservations(&sale),
                ks.events(&sale),
                ks.dead_letters(&sale),
                ks.staged(&ks.buyers(&sale)),
                ks.staged(&ks.reservations(&sale)),
                ks.holds(&sale),
                ks.staged(&ks.holds(&sale)),
            ];
            for key in keys.iter().chain(&ks.all_of_sale(&sale)) {
                assert_eq!(hash_tag(key), "sale:s-1", "{key}");
                assert!(key.starts_with(&ks.sale_tag(&sale)));
            }
        }
    }

    #[test]
    fn default_keys_match_the_documented_layout() {
        let sale = SaleId::parse("s1").expect("valid id");
        let ks = Keyspace::default();
        assert_eq!(ks.stock(&sale), "{sale:s1}:stock");
        assert_eq!(ks.events(&sale), "{sale:s1}:events");
        assert_eq!(ks.sales_registry(), "yoink:sales");
    }

    #[test]
    fn the_keys_an_archive_removes_are_every_documented_key_of_the_sale() {
        let sale = SaleId::parse("s1").expect("valid id");
        let all = Keyspace::default().all_of_sale(&sale);
        for suffix in [
            "meta",
            "stock",
            "buyers",
            "idem",
            "reservations",
            "events",
            "holds",
            "dead",
            "dead:replays",
            "buyers:rebuild",
            "idem:rebuild",
            "reservations:rebuild",
            "holds:rebuild",
        ] {
            assert!(all.contains(&format!("{{sale:s1}}:{suffix}")), "{suffix}");
        }
        assert_eq!(all.len(), 13);
    }
}
