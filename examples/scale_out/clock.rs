//! Timestamps that the writer, the readers and the stale-read check can compare.
//!
//! In one process a monotonic clock is exact. Across processes the database (Redis) stamps
//! each write with its own `TIME` and every reader stamps its reads with the wall clock of
//! the same host, so both sides read one clock (the demo's `--processes` mode runs every
//! process on one host).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds on a [`DemoClock`].
pub(crate) type Micros = u64;

/// The clock of one demo run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DemoClock {
    /// Microseconds since `Instant` (one process: monotonic).
    Monotonic(Instant),
    /// Microseconds since the Unix epoch (several processes on one host; Redis `TIME`).
    Wall,
}

impl DemoClock {
    /// A monotonic clock starting now.
    pub(crate) fn monotonic() -> DemoClock {
        DemoClock::Monotonic(Instant::now())
    }

    /// Now, in microseconds.
    pub(crate) fn now(&self) -> Micros {
        match self {
            DemoClock::Monotonic(start) => saturating_micros(start.elapsed().as_micros()),
            DemoClock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| saturating_micros(since.as_micros()))
                .unwrap_or(0),
        }
    }
}

fn saturating_micros(micros: u128) -> Micros {
    u64::try_from(micros).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_move_forward() {
        for clock in [DemoClock::monotonic(), DemoClock::Wall] {
            let a = clock.now();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let b = clock.now();
            assert!(b >= a + 2_000, "{clock:?}: {a} then {b}");
        }
    }
}
