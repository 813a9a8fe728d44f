//! Capped exponential backoff for everything that waits for a store to come back:
//! projectors, the relay, and processes starting before their stores. One type, so
//! every retry loop in Yoink waits the same way and stops at once on shutdown.

use std::time::Duration;

use tokio::sync::watch;

/// Waits 100 ms, 200 ms, 400 ms ... up to 5 s; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
}

const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { delay: FIRST }
    }

    pub fn reset(&mut self) {
        self.delay = FIRST;
    }

    /// The next delay (and doubles the one after, up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(LONGEST);
        delay
    }

    /// Sleeps the next delay; true when shutdown was asked for meanwhile (or before).
    pub async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => *shutdown.borrow(),
            _ = shutdown.changed() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds_and_starts_over_after_a_success() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
