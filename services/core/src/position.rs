//! A sale's position in Redis: `(epoch, seq)`, the fence that tells a Redis that went
//! back in time from one that did not.
//!
//! `reserve.lua` counts every reservation of a sale (`seq`); a rebuild of Redis from
//! PostgreSQL starts a new `epoch` with `seq` 0. Redis's position therefore only grows,
//! and every position anyone saw Redis hand out is a floor for it: a Redis below a
//! floor has forgotten reservations. Nothing here may ever lower a floor.

use serde::Serialize;

/// Ordered by epoch, then seq.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    /// Which rebuild of the sale's Redis state (1 from creation; 0 = Redis has no sale).
    pub epoch: i64,
    /// Reservations taken in this epoch.
    pub seq: i64,
}

impl Position {
    /// No floor at all: any Redis state is at or above it.
    pub const ZERO: Position = Position { epoch: 0, seq: 0 };

    pub fn new(epoch: i64, seq: i64) -> Self {
        Self { epoch, seq }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn a_new_epoch_is_ahead_of_any_seq_of_an_older_one() {
        assert!(Position::new(2, 0) > Position::new(1, 1_000_000));
        assert!(Position::new(1, 601) < Position::new(1, 1_200));
        assert!(Position::ZERO < Position::new(1, 0));
        assert_eq!(
            Position::new(1, 5).max(Position::new(1, 9)),
            Position::new(1, 9)
        );
    }
}
