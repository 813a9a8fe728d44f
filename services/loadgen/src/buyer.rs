//! One buyer: a task that draws request numbers from the shared counter and sends a
//! `POST /buy` for each, until all requests are taken.
//!
//! It must never take a lock per request: answers go to atomic counters ([`Progress`]) and
//! to the task's own [`Tally`], merged once the task ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Uri;

use crate::Progress;
use crate::client::{self, HttpClient};
use crate::report::Tally;

/// What all buyers of one load share.
pub(crate) struct Buyers {
    /// One client, so one pool of keep-alive connections.
    pub client: HttpClient,
    pub uri: Uri,
    pub request_timeout: Duration,
    pub sale_id: String,
    pub user_prefix: String,
    pub requests: u64,
    /// The next request number to take, starting at 1.
    pub next: AtomicU64,
    pub progress: Arc<Progress>,
    /// The load's start, from which `sold_out_after` is measured.
    pub start: Instant,
}

/// Sends requests until the shared counter passes `requests`, and returns what it saw.
pub(crate) async fn run(buyers: Arc<Buyers>) -> Tally {
    let mut tally = Tally::new();
    loop {
        let n = buyers.next.fetch_add(1, Ordering::Relaxed);
        if n > buyers.requests {
            break;
        }
        let user_id = format!("{}{n}", buyers.user_prefix);
        let outcome = client::buy(
            &buyers.client,
            &buyers.uri,
            &buyers.sale_id,
            &user_id,
            buyers.request_timeout,
        )
        .await;
        buyers.progress.count(&outcome.answer);
        tally.count(outcome, buyers.start.elapsed());
    }
    tally
}
