//! What a load came to: each buyer's [`Tally`], kept without locks while it runs, and the
//! [`LoadReport`] they merge into at the end.
//!
//! It must never grow without bound: examples are capped, and histograms only grow to the
//! largest latency seen (which the request timeout bounds).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::client::{Answer, Outcome};

/// At most this many distinct examples of `other` answers are kept.
const MAX_EXAMPLES: usize = 5;
/// Three significant figures: 0.1 % precision on every percentile.
const SIGNIFICANT_FIGURES: u8 = 3;

/// What a load came to, once every buyer is done.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of every answered request, microseconds.
    pub latency: Histogram<u64>,
    /// 202
    pub accepted: u64,
    /// 409 sold_out
    pub sold_out: u64,
    /// 503
    pub unavailable: u64,
    /// Any other status, or a transport error (timeouts included).
    pub other: u64,
    /// Since the start, when the first 409 sold_out was answered (None: never sold out).
    pub sold_out_after: Option<Duration>,
    /// A few distinct examples of `other` answers (status + body, or the transport error), at most 5.
    pub other_examples: Vec<String>,
}

impl LoadReport {
    /// Requests sent (answered or failed) per second of `elapsed`; 0 when nothing took time.
    pub fn requests_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.total() as f64 / seconds
        } else {
            0.0
        }
    }

    /// p in [0, 100], as a Duration.
    ///
    /// p outside [0, 100] is clamped; with no answered request, every percentile is zero.
    pub fn percentile(&self, p: f64) -> Duration {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        Duration::from_micros(self.latency.value_at_percentile(p))
    }

    fn total(&self) -> u64 {
        self.accepted + self.sold_out + self.unavailable + self.other
    }
}

/// One buyer's counts, merged into the others' when the load ends.
#[derive(Debug)]
pub(crate) struct Tally {
    latency: Histogram<u64>,
    accepted: u64,
    sold_out: u64,
    unavailable: u64,
    other: u64,
    sold_out_after: Option<Duration>,
    other_examples: Vec<String>,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            latency: new_histogram(),
            accepted: 0,
            sold_out: 0,
            unavailable: 0,
            other: 0,
            sold_out_after: None,
            other_examples: Vec::new(),
        }
    }

    /// Counts one outcome, answered `since_start` after the load began.
    pub fn count(&mut self, outcome: Outcome, since_start: Duration) {
        if let Some(latency) = outcome.latency {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            // Only a resize beyond the address space fails; clamping is then the honest answer.
            if self.latency.record(micros).is_err() {
                self.latency.saturating_record(micros);
            }
        }
        match outcome.answer {
            Answer::Accepted => self.accepted += 1,
            Answer::SoldOut => {
                self.sold_out += 1;
                self.sold_out_after.get_or_insert(since_start);
            }
            Answer::Unavailable => self.unavailable += 1,
            Answer::Other(example) => {
                self.other += 1;
                self.keep_example(example);
            }
        }
    }

    pub fn merge(&mut self, other: Tally) {
        // Both histograms auto-resize, so adding only fails if a resize cannot be addressed,
        // which latencies bounded by the request timeout never need.
        self.latency
            .add(&other.latency)
            .expect("auto-resizing histograms of timeout-bounded latencies always add");
        self.accepted += other.accepted;
        self.sold_out += other.sold_out;
        self.unavailable += other.unavailable;
        self.other += other.other;
        self.sold_out_after = match (self.sold_out_after, other.sold_out_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for example in other.other_examples {
            self.keep_example(example);
        }
    }

    pub fn into_report(self, elapsed: Duration) -> LoadReport {
        LoadReport {
            elapsed,
            latency: self.latency,
            accepted: self.accepted,
            sold_out: self.sold_out,
            unavailable: self.unavailable,
            other: self.other,
            sold_out_after: self.sold_out_after,
            other_examples: self.other_examples,
        }
    }

    fn keep_example(&mut self, example: String) {
        if self.other_examples.len() < MAX_EXAMPLES && !self.other_examples.contains(&example) {
            self.other_examples.push(example);
        }
    }
}

/// Starts small and grows to the largest latency recorded, so a thousand idle buyers cost little.
fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_FIGURES)
        .expect("3 significant figures is within hdrhistogram's 0..=5")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(answer: Answer, micros: u64) -> Outcome {
        Outcome {
            answer,
            latency: Some(Duration::from_micros(micros)),
        }
    }

    fn failed(text: &str) -> Outcome {
        Outcome {
            answer: Answer::Other(text.into()),
            latency: None,
        }
    }

    #[test]
    fn merged_tallies_add_counts_and_keep_the_earliest_sell_out() {
        let mut a = Tally::new();
        a.count(answered(Answer::Accepted, 100), Duration::from_millis(1));
        a.count(answered(Answer::SoldOut, 300), Duration::from_millis(9));
        let mut b = Tally::new();
        b.count(answered(Answer::SoldOut, 200), Duration::from_millis(5));
        b.count(answered(Answer::Unavailable, 50), Duration::from_millis(6));
        b.count(failed("refused"), Duration::from_millis(7));

        a.merge(b);
        let report = a.into_report(Duration::from_secs(2));
        assert_eq!(
            (
                report.accepted,
                report.sold_out,
                report.unavailable,
                report.other
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(report.sold_out_after, Some(Duration::from_millis(5)));
        assert_eq!(
            report.latency.len(),
            4,
            "the transport error has no latency"
        );
        assert_eq!(report.requests_per_second(), 2.5);
    }

    #[test]
    fn examples_are_distinct_and_at_most_five() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for i in 0..4 {
            a.count(failed(&format!("error {i}")), Duration::ZERO);
            b.count(failed(&format!("error {}", i + 2)), Duration::ZERO);
        }
        a.count(failed("error 0"), Duration::ZERO);
        a.merge(b);
        let report = a.into_report(Duration::from_secs(1));
        assert_eq!(report.other, 9);
        assert_eq!(
            report.other_examples,
            ["error 0", "error 1", "error 2", "error 3", "error 4"]
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram_and_clamp_p() {
        let mut tally = Tally::new();
        for micros in 1..=1000 {
            tally.count(answered(Answer::Accepted, micros), Duration::ZERO);
        }
        let report = tally.into_report(Duration::from_secs(1));
        let p50 = report.percentile(50.0);
        assert!(
            p50 >= Duration::from_micros(499) && p50 <= Duration::from_micros(501),
            "{p50:?}"
        );
        assert_eq!(report.percentile(100.0), Duration::from_micros(1000));
        assert_eq!(report.percentile(250.0), report.percentile(100.0));
        assert_eq!(report.percentile(-1.0), report.percentile(0.0));
        assert_eq!(report.percentile(f64::NAN), report.percentile(0.0));
    }

    #[test]
    fn an_empty_report_has_zero_rate_and_latency() {
        let report = Tally::new().into_report(Duration::ZERO);
        assert_eq!(report.requests_per_second(), 0.0);
        assert_eq!(report.percentile(99.0), Duration::ZERO);
    }
}
