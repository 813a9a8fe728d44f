//! Yoink's built-in load generator, for `yoink demo` and `yoink bench`: many concurrent
//! buyers, each a keep-alive HTTP/1.1 connection, sending `POST /buy` until a fixed number of
//! requests is sent, counted live in [`Progress`] and summed up in a [`LoadReport`].
//!
//! - `client`: the hyper client and one request, classified into an answer.
//! - `buyer`: one buyer's loop, drawing request numbers from a shared counter.
//! - `report`: the per-buyer tally and the merged report.
//!
//! It must never panic on what the network or the server does (a refused connection, a
//! timeout and a strange answer are all counted as `other`, with an example), never hang on
//! a server that stops answering (every request has a timeout), never take a lock per request,
//! and never read the environment: the caller passes everything in [`Load`].

mod buyer;
mod client;
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::task::JoinSet;

pub use report::LoadReport;

use buyer::Buyers;
use client::{Answer, Timeouts};
use report::Tally;

/// What to send: `requests` purchases of one sale, by `buyers` concurrent connections.
#[derive(Debug, Clone)]
pub struct Load {
    /// e.g. "http://127.0.0.1:8080"
    pub base_url: String,
    pub sale_id: String,
    /// Concurrent buyers (connections/tasks).
    pub buyers: usize,
    /// Total POST /buy requests, across all buyers; each request is a fresh buyer `{user_prefix}{n}`.
    ///
    /// `n` runs over `1..=requests`, each number used exactly once.
    pub requests: u64,
    pub user_prefix: String,
}

/// Live counters, read by a progress display while the load runs.
///
/// Each answer bumps its class first and `sent` second, so a reader never sees more classified
/// answers than `sent` for long; the exact totals are in the [`LoadReport`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests answered (any status) or failed.
    pub sent: AtomicU64,
    /// 202
    pub accepted: AtomicU64,
    /// 409 sold_out
    pub sold_out: AtomicU64,
    /// 503
    pub unavailable: AtomicU64,
    /// Any other status, or a transport error.
    pub other: AtomicU64,
}

impl Progress {
    fn count(&self, answer: &Answer) {
        let class = match answer {
            Answer::Accepted => &self.accepted,
            Answer::SoldOut => &self.sold_out,
            Answer::Unavailable => &self.unavailable,
            Answer::Other(_) => &self.other,
        };
        class.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a load could not run (or finish). Answers from the server are never errors: they are
/// counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `base_url` does not parse as a URL: nothing is sent.
    #[error("base URL {base_url:?} is not a valid URL")]
    InvalidBaseUrl {
        base_url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// `base_url` is not `http://HOST[:PORT][/PATH]` (HTTPS is not spoken here): nothing is sent.
    #[error("base URL {base_url:?} must look like http://HOST[:PORT] (plain HTTP, no query)")]
    UnsupportedBaseUrl { base_url: String },
    /// `buyers` is 0 while there are requests to send: nothing is sent.
    #[error("no buyers to send {requests} requests")]
    NoBuyers { requests: u64 },
    /// A buyer task panicked or was aborted: the load stopped, and its counts are lost.
    #[error("a buyer task failed")]
    Buyer(#[from] tokio::task::JoinError),
}

/// Runs the load: `buyers` tasks share one counter of request numbers until `requests` are sent; every
/// answer is counted in `progress` as it arrives and its latency recorded (per-task histograms merged at
/// the end, no lock per request).
///
/// Dropping the returned future stops the load: the buyer tasks are aborted with it.
pub async fn run(load: &Load, progress: Arc<Progress>) -> Result<LoadReport, LoadError> {
    run_with(load, progress, Timeouts::default()).await
}

async fn run_with(
    load: &Load,
    progress: Arc<Progress>,
    timeouts: Timeouts,
) -> Result<LoadReport, LoadError> {
    let uri = client::buy_uri(&load.base_url)?;
    if load.buyers == 0 && load.requests > 0 {
        return Err(LoadError::NoBuyers {
            requests: load.requests,
        });
    }
    // More tasks than requests would only open connections that never send anything.
    let tasks = load
        .buyers
        .min(usize::try_from(load.requests).unwrap_or(usize::MAX));

    let start = Instant::now();
    let buyers = Arc::new(Buyers {
        client: client::build(load.buyers, &timeouts),
        uri,
        request_timeout: timeouts.request,
        sale_id: load.sale_id.clone(),
        user_prefix: load.user_prefix.clone(),
        requests: load.requests,
        next: AtomicU64::new(1),
        progress,
        start,
    });

    let mut set = JoinSet::new();
    for _ in 0..tasks {
        set.spawn(buyer::run(Arc::clone(&buyers)));
    }
    let mut total = Tally::new();
    while let Some(tally) = set.join_next().await {
        total.merge(tally?);
    }
    Ok(total.into_report(start.elapsed()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// A server that accepts connections and never answers, holding them open.
    async fn silent_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0 on loopback");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_server_that_never_answers_counts_as_other_after_the_request_timeout() {
        let load = Load {
            base_url: silent_server().await,
            sale_id: "s1".into(),
            buyers: 2,
            requests: 4,
            user_prefix: "u".into(),
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(200),
        };
        let progress = Arc::new(Progress::default());
        let report = tokio::time::timeout(
            Duration::from_secs(10),
            run_with(&load, Arc::clone(&progress), timeouts),
        )
        .await
        .expect("the request timeout ends the load")
        .expect("the load runs");

        assert_eq!(report.other, 4);
        assert_eq!(progress.sent.load(Ordering::Relaxed), 4);
        assert_eq!(report.latency.len(), 0, "no request was answered");
        assert_eq!(
            report.other_examples.len(),
            1,
            "{:?}",
            report.other_examples
        );
        assert!(
            report.other_examples[0].contains("timed out"),
            "{:?}",
            report.other_examples
        );
    }

    #[tokio::test]
    async fn zero_requests_send_nothing_and_report_zeros() {
        let load = Load {
            base_url: "http://127.0.0.1:9".into(),
            sale_id: "s1".into(),
            buyers: 0,
            requests: 0,
            user_prefix: "u".into(),
        };
        let report = run(&load, Arc::default()).await.expect("nothing to fail");
        assert_eq!(
            report.accepted + report.sold_out + report.unavailable + report.other,
            0
        );
        assert_eq!(report.percentile(99.0), Duration::ZERO);
    }
}
