//! Logs an expected refusal (an overload 503, a store that is down) once per interval
//! instead of once per request: at peak that is one line per rejected buyer, written
//! at the worst moment. The first occurrence is logged; later ones are only counted
//! until the interval has passed, and the next line says how many it stands for.
//!
//! Metrics (`yoink_http_requests_total{status}`, `yoink_reservations_total{outcome}`)
//! count every refusal exactly; this only keeps the log readable. Lock-free: it sits on
//! the path of every refused request. Never use it for faults (500s): those are logged
//! every time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a refusal of each kind may reach the log.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The occurrences a logged line stands for, beyond itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// Occurrences not logged since the previous line.
    pub count: u64,
    /// Time since the previous line (zero for the first line).
    pub over: Duration,
}

/// Admits one occurrence per interval; counts the others.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    /// Milliseconds (since `origin()`) of the last admitted occurrence, plus one;
    /// 0 = never admitted.
    last_plus_one: AtomicU64,
    suppressed: AtomicU64,
}

/// A process-wide monotonic origin, so times fit in an `AtomicU64`.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            last_plus_one: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some` when this occurrence should be logged now.
    pub fn admit(&self) -> Option<Suppressed> {
        self.admit_at(origin().elapsed().as_millis() as u64)
    }

    /// `admit` at `now_ms` (milliseconds on a monotonic clock).
    pub fn admit_at(&self, now_ms: u64) -> Option<Suppressed> {
        let last_plus_one = self.last_plus_one.load(Ordering::Acquire);
        let due = match last_plus_one.checked_sub(1) {
            None => true,
            Some(last) => now_ms.saturating_sub(last) >= self.interval_ms,
        };
        // Only one of the callers racing past the interval wins the line; the others
        // are counted in it or in the next one.
        if !due
            || self
                .last_plus_one
                .compare_exchange(
                    last_plus_one,
                    now_ms + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Suppressed {
            count: self.suppressed.swap(0, Ordering::Relaxed),
            over: Duration::from_millis(
                last_plus_one
                    .checked_sub(1)
                    .map_or(0, |last| now_ms.saturating_sub(last)),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_line_per_interval_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(
            limiter.admit_at(5),
            Some(Suppressed {
                count: 0,
                over: Duration::ZERO
            })
        );
        for ms in 6..10_005 {
            assert_eq!(limiter.admit_at(ms), None, "at {ms} ms");
        }
        assert_eq!(
            limiter.admit_at(10_005),
            Some(Suppressed {
                count: 9_999,
                over: Duration::from_secs(10)
            })
        );
        assert_eq!(limiter.admit_at(10_006), None);
        // A quiet spell: the next line says how long it covers.
        assert_eq!(
            limiter.admit_at(60_000),
            Some(Suppressed {
                count: 1,
                over: Duration::from_millis(49_995)
            })
        );
    }

    #[test]
    fn an_occurrence_at_time_zero_is_logged() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        assert!(limiter.admit_at(0).is_some());
        assert!(limiter.admit_at(999).is_none());
        assert!(limiter.admit_at(1_000).is_some());
    }

    #[test]
    fn racing_threads_get_one_line_per_interval_and_every_occurrence_is_counted() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        let logged: Vec<Option<Suppressed>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..10_000).map(|_| limiter.admit()).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert_eq!(logged.iter().filter(|l| l.is_some()).count(), 1);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 79_999);
    }
}
