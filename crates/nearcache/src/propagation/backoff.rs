//! The waits between attempts at a backplane operation that keeps failing (subscribing,
//! publishing, reading the replay log): doubling from `reconnect_initial_delay` up to a cap,
//! each drawn at random so that instances which lost the backplane together do not retry in
//! step when it comes back.
//!
//! The doubling and the randomness are [`backon`]'s. Its jitter *adds* up to the whole delay,
//! so it is given half of each bound: attempt `n` waits a random time in `[d/2, d)`, where
//! `d = min(cap, initial × 2ⁿ)` — never longer than the configured delays, the same spread
//! as the Redis subscriber's default `jitter` of 0.5.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The shortest first delay: a nonzero `reconnect_initial_delay` shorter than this (`"1ns"`)
/// would halve to zero, and a zero delay doubles to zero forever — a retry loop without a
/// pause.
const SHORTEST_INITIAL: Duration = Duration::from_millis(1);

/// The delays of one run of retries; a new run starts from the initial delay again.
#[derive(Debug)]
pub(crate) struct Retry {
    delays: ExponentialBackoff,
    cap: Duration,
}

impl Retry {
    /// Delays doubling from `initial` (at least 1 ms) up to `cap` (`initial` above `cap`
    /// starts at `cap`).
    pub(crate) fn new(initial: Duration, cap: Duration) -> Self {
        let cap = cap.max(SHORTEST_INITIAL);
        let initial = initial.clamp(SHORTEST_INITIAL, cap);
        let delays = ExponentialBuilder::default()
            .with_min_delay(initial / 2)
            .with_max_delay(cap / 2)
            .with_jitter()
            .without_max_times()
            .build();
        Self { delays, cap }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a limit on the number of attempts the iterator never ends; the cap stands
        // in should that change.
        self.delays.next().unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_within_the_configured_delays() {
        for _ in 0..200 {
            let mut retry = Retry::new(100 * MS, 1000 * MS);
            for ceiling in [100, 200, 400, 800, 1000, 1000, 1000] {
                let delay = retry.next_delay();
                assert!(delay <= ceiling * MS, "{delay:?} above {ceiling} ms");
                assert!(
                    delay >= ceiling * MS / 2,
                    "{delay:?} below half of {ceiling} ms"
                );
            }
        }
    }

    #[test]
    fn the_delays_are_spread() {
        let firsts: std::collections::HashSet<Duration> = (0..50)
            .map(|_| Retry::new(1000 * MS, 5000 * MS).next_delay())
            .collect();
        assert!(firsts.len() > 40, "{} distinct first delays", firsts.len());
    }

    #[test]
    fn a_nanosecond_initial_delay_still_pauses_and_doubles() {
        let mut retry = Retry::new(Duration::from_nanos(1), Duration::from_nanos(1));
        assert!(retry.next_delay() >= MS / 2, "no pause between attempts");
        let mut retry = Retry::new(Duration::from_nanos(1), 1000 * MS);
        let delays: Vec<Duration> = (0..6).map(|_| retry.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= MS / 2), "{delays:?}");
        assert!(delays[5] >= 16 * MS, "it doubles: {delays:?}");
    }

    #[test]
    fn an_initial_delay_above_the_cap_starts_at_the_cap() {
        let mut retry = Retry::new(10_000 * MS, 500 * MS);
        for _ in 0..5 {
            let delay = retry.next_delay();
            assert!(delay <= 500 * MS && delay >= 250 * MS, "{delay:?}");
        }
    }
}
