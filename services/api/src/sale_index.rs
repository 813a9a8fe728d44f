//! Which sales a reservation id can belong to, so `GET /reservations/{id}` (no
//! authentication) asks Redis about one or two sales, never every sale ever made.
//!
//! The design: `/buy` makes reservation ids that carry 16 bits of a stable hash of
//! their sale (`ReservationId::for_sale`, a UUID v8 laid out like a v7), and this index
//! maps each tag to the sales that have it. With N sales a lookup tries about
//! N / 65,536 of them (1 in practice), and an id whose tag names no known sale, or an
//! id without a tag (v7: made before tags, or by no server of ours), costs Redis
//! nothing: PostgreSQL alone answers it. Chosen over a global id -> sale index written
//! by `/buy` (a second Redis round trip on the hot path: the reserve script may only
//! touch keys of the sale's hash tag) and over putting the sale in the URL (an API
//! change for every client).
//!
//! Kept complete without a query per request: every sale PostgreSQL holds, read once at
//! start (retried on each refresh until it succeeded), every active sale on each
//! refresh of the floors (`--fence-refresh-ms`), and every sale this instance saw a
//! reservation of. A sale is in PostgreSQL before Redis holds any key of it, so a
//! reservation made on another instance of a sale created since the last refresh is
//! found within one refresh; until then PostgreSQL alone answers (404 until projected).
//! Sales are never forgotten here: their undecided reservations may outlive them.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::GenericClient;
use yoink_core::SaleId;
use yoink_core::ids::SaleTag;

#[derive(Debug, Default)]
pub struct SaleIndex {
    by_tag: RwLock<HashMap<SaleTag, Vec<SaleId>>>,
    /// Every sale PostgreSQL held has been read once.
    loaded_all: AtomicBool,
}

impl SaleIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SaleTag, Vec<SaleId>>> {
        // Each update is one push into a Vec: a panic cannot leave an entry half
        // written, so a poisoned lock still holds a right index.
        self.by_tag
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SaleTag, Vec<SaleId>>> {
        self.by_tag
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The known sales whose reservation ids carry `tag`.
    pub fn candidates(&self, tag: SaleTag) -> Vec<SaleId> {
        self.read().get(&tag).cloned().unwrap_or_default()
    }

    /// Adds the sales not known yet (one write lock for all of them, none when every
    /// sale is known: the common case of a refresh).
    pub fn learn<'a>(&self, sales: impl IntoIterator<Item = &'a SaleId>) {
        let new: Vec<&SaleId> = {
            let index = self.read();
            sales
                .into_iter()
                .filter(|sale| {
                    index
                        .get(&SaleTag::of(sale))
                        .is_none_or(|known| !known.contains(sale))
                })
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let mut index = self.write();
        for sale in new {
            let known = index.entry(SaleTag::of(sale)).or_default();
            if !known.contains(sale) {
                known.push(sale.clone());
            }
        }
    }

    /// Sales known.
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every sale PostgreSQL holds, the first time it succeeds; later calls do
    /// nothing (new sales arrive through the active ones).
    pub async fn load_all(&self, client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        if self.loaded_all.load(Ordering::Acquire) {
            return Ok(());
        }
        let rows = client.query("SELECT sale_id FROM sales", &[]).await?;
        let sales: Vec<SaleId> = rows
            .iter()
            .filter_map(|r| SaleId::parse(r.get(0)).ok())
            .collect();
        self.learn(&sales);
        self.loaded_all.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(id: &str) -> SaleId {
        SaleId::parse(id).expect("valid id")
    }

    #[test]
    fn a_tag_names_only_the_sales_that_carry_it_and_each_once() {
        let index = SaleIndex::default();
        let sales: Vec<SaleId> = (0..1_000).map(|i| sale(&format!("many-{i}"))).collect();
        index.learn(&sales);
        index.learn(&sales[..10]);
        assert_eq!(index.len(), 1_000);
        let target = &sales[500];
        let candidates = index.candidates(SaleTag::of(target));
        assert!(candidates.contains(target));
        assert!(candidates.len() <= 3, "{candidates:?}");
        assert!(
            candidates
                .iter()
                .all(|s| SaleTag::of(s) == SaleTag::of(target))
        );
    }

    #[test]
    fn an_unknown_tag_has_no_candidates() {
        let index = SaleIndex::default();
        assert!(index.is_empty());
        assert!(index.candidates(SaleTag::of(&sale("never"))).is_empty());
    }
}
