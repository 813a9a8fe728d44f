//! The sold-out fast path: what this instance learnt from Redis's last `SOLD_OUT`
//! answers, so that the crowd arriving after a sale sold out is answered 409 without a
//! script call each.
//!
//! What a refusal proves: "fewer than `q` units were left" at that moment, so any buy of
//! `q` or more units would be refused too, as long as stock did not come back. Stock
//! comes back (a release, an expiry, a cancel) without this instance hearing of it, so a
//! refusal is believed for `window` only (`--sold-out-recheck-ms`, default 50 ms): after
//! that ONE buy asks Redis again (the probe), and its answer is the new knowledge, while
//! the others are still answered from memory; past `MAX_WINDOW` (100 ms), if no answer
//! came, every buy asks Redis. Without the single probe, the crowd in flight when the
//! window ends (hundreds of buys at 1,000 connections) would all run the script. A 202
//! forgets the sale at once.
//!
//! Must never: answer for longer than `MAX_WINDOW` after the refusal it rests on; answer a
//! buy with an `Idempotency-Key` (it may be the retry of a 202, which Redis replays);
//! refuse a quantity smaller than the one Redis refused.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use yoink_core::SaleId;

/// The longest a refusal may be believed: the bound on answering 409 while
/// stock is back.
pub const MAX_WINDOW: Duration = Duration::from_millis(100);

/// Per sale, the freshest, strongest `SOLD_OUT` this instance saw.
#[derive(Debug)]
pub struct SoldOut {
    window: Duration,
    refusals: RwLock<HashMap<SaleId, Refusal>>,
}

#[derive(Debug, Clone, Copy)]
struct Refusal {
    at: Instant,
    /// Redis refused this many units: fewer were left.
    quantity: i64,
    /// A buy past the window went to Redis to refresh this refusal.
    probing: bool,
}

/// What the memory says of one buy.
enum Verdict {
    /// Refused from memory.
    Refused,
    /// Ask Redis.
    Ask,
    /// Ask Redis, as the one probe of a refusal past its window.
    Probe,
}

impl SoldOut {
    /// `window` zero turns the fast path off.
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.min(MAX_WINDOW),
            refusals: RwLock::new(HashMap::new()),
        }
    }

    /// True when a buy of `quantity` units of `sale` would be refused by Redis, as far
    /// as a refusal younger than the window proves.
    pub fn refuses(&self, sale: &SaleId, quantity: i64) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let verdict = match self.refusals.read() {
            Ok(refusals) => self.verdict(refusals.get(sale), quantity),
            Err(_) => return false,
        };
        match verdict {
            Verdict::Refused => true,
            Verdict::Ask => false,
            // Claim the probe; whoever lost the race is answered from memory.
            Verdict::Probe => match self.refusals.write() {
                Ok(mut refusals) => match refusals.get_mut(sale) {
                    Some(r) if matches!(self.verdict(Some(r), quantity), Verdict::Probe) => {
                        r.probing = true;
                        false
                    }
                    r => matches!(self.verdict(r.as_deref(), quantity), Verdict::Refused),
                },
                Err(_) => false,
            },
        }
    }

    fn verdict(&self, refusal: Option<&Refusal>, quantity: i64) -> Verdict {
        let Some(r) = refusal.filter(|r| quantity >= r.quantity) else {
            return Verdict::Ask;
        };
        let age = r.at.elapsed();
        if age < self.window {
            Verdict::Refused
        } else if age >= MAX_WINDOW {
            Verdict::Ask
        } else if r.probing {
            Verdict::Refused
        } else {
            Verdict::Probe
        }
    }

    /// Redis answered `SOLD_OUT` to a buy of `quantity` units.
    pub fn refused(&self, sale: &SaleId, quantity: i64) {
        if self.window.is_zero() {
            return;
        }
        let Ok(mut refusals) = self.refusals.write() else {
            return;
        };
        let now = Instant::now();
        let fresh = Refusal {
            at: now,
            quantity,
            probing: false,
        };
        refusals
            .entry(sale.clone())
            .and_modify(|old| {
                // An older refusal of fewer units says more, while it is still fresh.
                let stronger_and_fresh = old.quantity < quantity
                    && now.duration_since(old.at) < self.window
                    && !old.probing;
                if !stronger_and_fresh {
                    *old = fresh;
                }
            })
            .or_insert(fresh);
        // Only sales refused within the window are worth keeping: the map stays as
        // small as the set of sales selling out right now.
        if refusals.len() > 64 {
            let window = self.window;
            refusals.retain(|_, r| now.duration_since(r.at) < window.max(MAX_WINDOW));
        }
    }

    /// Redis took units of `sale`: stock is there, whatever was refused before.
    pub fn took(&self, sale: &SaleId) {
        if self.window.is_zero() {
            return;
        }
        let known = self.refusals.read().is_ok_and(|r| r.contains_key(sale));
        if known && let Ok(mut refusals) = self.refusals.write() {
            refusals.remove(sale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale() -> SaleId {
        SaleId::parse("s1").expect("a valid id")
    }

    #[test]
    fn a_refusal_covers_the_same_or_more_units_and_never_fewer() {
        let memory = SoldOut::new(Duration::from_secs(60));
        memory.refused(&sale(), 3);
        assert!(memory.refuses(&sale(), 3));
        assert!(memory.refuses(&sale(), 10));
        assert!(!memory.refuses(&sale(), 2), "two units may still be left");
        memory.refused(&sale(), 1);
        assert!(memory.refuses(&sale(), 1), "the stronger refusal wins");
        memory.refused(&sale(), 5);
        assert!(memory.refuses(&sale(), 1), "a weaker one does not undo it");
    }

    #[test]
    fn a_refusal_is_believed_for_the_window_only() {
        let memory = SoldOut::new(Duration::from_millis(30));
        memory.refused(&sale(), 1);
        assert!(memory.refuses(&sale(), 1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!memory.refuses(&sale(), 1));
    }

    #[test]
    fn past_the_window_one_buy_probes_redis_and_the_rest_are_answered_until_100_ms() {
        let memory = SoldOut::new(Duration::from_millis(20));
        memory.refused(&sale(), 1);
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !memory.refuses(&sale(), 1),
            "the first buy past the window asks"
        );
        assert!(memory.refuses(&sale(), 1), "the others wait for its answer");
        memory.refused(&sale(), 1);
        assert!(memory.refuses(&sale(), 1), "the probe's refusal is fresh");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!memory.refuses(&sale(), 1), "a new probe");
        std::thread::sleep(MAX_WINDOW);
        assert!(
            !memory.refuses(&sale(), 1),
            "no answer in 100 ms: everyone asks"
        );
        assert!(!memory.refuses(&sale(), 1));
    }

    #[test]
    fn the_window_is_at_most_100_ms_and_zero_turns_it_off() {
        assert_eq!(SoldOut::new(Duration::from_secs(5)).window, MAX_WINDOW);
        let off = SoldOut::new(Duration::ZERO);
        off.refused(&sale(), 1);
        assert!(!off.refuses(&sale(), 1));
    }

    #[test]
    fn units_taken_forget_the_refusal() {
        let memory = SoldOut::new(Duration::from_secs(60));
        memory.refused(&sale(), 1);
        memory.took(&sale());
        assert!(!memory.refuses(&sale(), 1));
    }
}
