//! Timestamps that the writer, the readers and the stale-read check can compare.
//!
//! The writer stamps each write in the database and every reader stamps its reads with the
//! wall clock of the same host, so both sides read one clock, also across processes (the
//! demo's `--processes` mode runs every process on one host).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub(crate) type Micros = u64;

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now();
        assert!(b >= a + 2_000, "{a} then {b}");
    }
}
