//! The fault schedule: a list of `(at_ms, fault, lasts_ms)` drawn from a seed before the
//! run starts, so the same seed (with the same `--seconds` and fault kinds) always
//! gives the same schedule, and a failing run can be replayed.
//!
//! Pure code: it must never look at the clock, the stores or the processes. Faults
//! never overlap: each one is healed before the next begins, so a run's outcome can be
//! traced to one fault, and the order of kinds is a seeded shuffle of all of them,
//! repeated, so even a short run meets several kinds.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A small deterministic PRNG (splitmix64): the schedule must not change with a
/// dependency's version, so it is written out here.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (`lo` when the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.between(0, i as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the API process; started again when the fault ends.
    KillApi,
    /// SIGKILL one projector process; started again (a new consumer name, as a new pid
    /// would have) when the fault ends.
    KillProjector,
    /// PostgreSQL stopped at once (`pg_ctl -m immediate`), started again at the end.
    PgRestart,
    /// Redis SIGKILLed, started again on its AOF at the end (it lost nothing).
    RedisRestart,
    /// A Redis snapshot taken at the start; at the end Redis is killed and started
    /// from that snapshot: back in time by the fault's length.
    RedisOlderSnapshot,
    /// `XGROUP SETID` moves the group's cursor back: entries already projected are
    /// delivered again.
    RewindCursor,
    /// A consumer that never acknowledges takes new entries (`XREADGROUP`) and steals
    /// the ones the projectors hold (`XCLAIM`); the projectors must reclaim them.
    ClaimToGhost,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillApi,
        FaultKind::KillProjector,
        FaultKind::PgRestart,
        FaultKind::RedisRestart,
        FaultKind::RedisOlderSnapshot,
        FaultKind::RewindCursor,
        FaultKind::ClaimToGhost,
    ];

    /// The kinds that need no control over the stores' or the API's processes: all a
    /// run against a deployment the user names may inject.
    pub const WITHOUT_PROCESS_CONTROL: [FaultKind; 2] =
        [FaultKind::RewindCursor, FaultKind::ClaimToGhost];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillApi => "kill-api",
            FaultKind::KillProjector => "kill-projector",
            FaultKind::PgRestart => "pg-restart",
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RedisOlderSnapshot => "redis-older-snapshot",
            FaultKind::RewindCursor => "rewind-cursor",
            FaultKind::ClaimToGhost => "claim-to-ghost",
        }
    }

    /// How long the fault lasts, in ms: the bounds of the draw.
    fn lasts_ms(self) -> (u64, u64) {
        match self {
            FaultKind::KillApi => (300, 1_500),
            FaultKind::KillProjector => (300, 2_000),
            FaultKind::PgRestart => (500, 2_500),
            FaultKind::RedisRestart => (200, 1_200),
            // How far back Redis goes.
            FaultKind::RedisOlderSnapshot => (500, 2_500),
            // Instant faults: the time given is what the projectors get to absorb them
            // before the next fault.
            FaultKind::RewindCursor | FaultKind::ClaimToGhost => (200, 1_000),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?}; known: {}", names.join(", "))
            })
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// When it begins, in ms from the start of the load.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long it lasts (for instant faults: the quiet time after it).
    pub lasts_ms: u64,
    /// Which projector (0 or 1) for `kill-projector`; how many entries to move back
    /// or take for the stream faults; 0 otherwise.
    pub arg: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} ms  {:<21} {:>5} ms",
            self.at_ms,
            self.kind.name(),
            self.lasts_ms
        )?;
        match self.kind {
            FaultKind::KillProjector => write!(f, "  projector {}", self.arg),
            FaultKind::RewindCursor => write!(f, "  back {} entries", self.arg),
            FaultKind::ClaimToGhost => write!(f, "  up to {} entries", self.arg),
            _ => Ok(()),
        }
    }
}

/// The first fault waits this long, so the sale is selling before anything breaks.
const FIRST_FAULT_MS: u64 = 1_500;
/// The last fault ends at least this long before the load stops.
const QUIET_END_MS: u64 = 1_000;
/// Time between two faults: the system's chance to recover.
const GAP_MS: (u64, u64) = (500, 2_000);

/// The schedule for `seed`, over a load of `seconds`, drawing from `kinds` (in their
/// given order; duplicates ignored).
pub fn draw(seed: u64, seconds: u64, kinds: &[FaultKind]) -> Vec<Fault> {
    let mut kinds: Vec<FaultKind> = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    let mut rng = SplitMix64::new(seed);
    let end = (seconds * 1_000).saturating_sub(QUIET_END_MS);
    let mut at = FIRST_FAULT_MS;
    let mut faults = Vec::new();
    let mut bag: Vec<FaultKind> = Vec::new();
    while !kinds.is_empty() {
        if bag.is_empty() {
            bag = kinds.clone();
            rng.shuffle(&mut bag);
        }
        let kind = bag.pop().expect("the bag was just refilled");
        let (lo, hi) = kind.lasts_ms();
        let lasts_ms = rng.between(lo, hi);
        let arg = match kind {
            FaultKind::KillProjector => rng.between(0, 1),
            FaultKind::RewindCursor => rng.between(10, 200),
            FaultKind::ClaimToGhost => rng.between(5, 50),
            _ => 0,
        };
        if at + lasts_ms > end {
            break;
        }
        faults.push(Fault {
            at_ms: at,
            kind,
            lasts_ms,
            arg,
        });
        at += lasts_ms + rng.between(GAP_MS.0, GAP_MS.1);
    }
    faults
}

/// The schedule as printed before a run (and by `--print-schedule`).
pub fn render(seed: u64, seconds: u64, faults: &[Fault]) -> String {
    let mut out = format!(
        "Schedule for seed {seed}, {seconds} s: {} faults\n",
        faults.len()
    );
    for fault in faults {
        out.push_str(&format!("  {fault}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let a = draw(42, 60, &FaultKind::ALL);
        let b = draw(42, 60, &FaultKind::ALL);
        assert_eq!(a, b);
        assert_ne!(a, draw(43, 60, &FaultKind::ALL));
    }

    #[test]
    fn faults_never_overlap_and_end_before_the_load_does() {
        for seed in 0..50 {
            let faults = draw(seed, 20, &FaultKind::ALL);
            assert!(!faults.is_empty());
            for pair in faults.windows(2) {
                assert!(pair[0].at_ms + pair[0].lasts_ms < pair[1].at_ms, "{pair:?}");
            }
            let last = faults.last().expect("not empty");
            assert!(last.at_ms + last.lasts_ms <= 20_000 - QUIET_END_MS);
        }
    }

    #[test]
    fn a_short_run_meets_several_kinds() {
        for seed in 0..50 {
            let faults = draw(seed, 15, &FaultKind::ALL);
            let mut kinds: Vec<FaultKind> = faults.iter().map(|f| f.kind).collect();
            kinds.sort();
            kinds.dedup();
            assert!(kinds.len() >= 3, "seed {seed}: {kinds:?}");
        }
    }

    #[test]
    fn only_the_kinds_asked_for_are_drawn() {
        let faults = draw(7, 60, &FaultKind::WITHOUT_PROCESS_CONTROL);
        assert!(
            faults
                .iter()
                .all(|f| FaultKind::WITHOUT_PROCESS_CONTROL.contains(&f.kind))
        );
        assert!(draw(7, 60, &[]).is_empty());
    }

    #[test]
    fn fault_names_parse_back() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>(), Ok(kind));
        }
        assert!("fire".parse::<FaultKind>().is_err());
    }
}
