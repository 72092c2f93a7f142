//! The delays between reconnection attempts, computed from a [`ReconnectBackoff`].
//!
//! The doubling is [`backon`]'s; the jitter is ours, because [`ReconnectBackoff::jitter`] is a
//! configured fraction the delay is *shortened* by (so `max` stays the longest wait), where
//! backon's jitter adds a random part of up to the whole delay. Kept apart from the
//! subscriber loop so the arithmetic is tested without a server or a clock.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

use crate::config::ReconnectBackoff;

/// The shortest delay handed out, whatever the policy says: a zero delay would turn the
/// reconnect loop into a busy loop against a dead server.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(10);

/// The state of one outage's backoff: attempt `n` waits `min(max, initial × 2ⁿ)` minus jitter,
/// and never less than [`MIN_DELAY`].
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectBackoff,
    ceilings: ExponentialBackoff,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectBackoff) -> Self {
        Self {
            policy,
            ceilings: ceilings(policy),
            attempt: 0,
        }
    }

    /// How many delays were handed out since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from the initial delay (after a successful reconnection).
    pub(crate) fn reset(&mut self) {
        self.ceilings = ceilings(self.policy);
        self.attempt = 0;
    }

    /// The next delay, with a random jitter from `rng`.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let max = self.policy.max.max(self.policy.initial);
        let full = self.ceilings.next().unwrap_or(max).max(MIN_DELAY);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || jitter.is_nan() {
            return full;
        }
        let cut = rng.random_range(0.0..=jitter);
        Duration::try_from_secs_f64(full.as_secs_f64() * (1.0 - cut))
            .map_or(full, |delay| delay.min(full))
            .max(MIN_DELAY)
    }
}

/// The delays before jitter: doubling from `initial` up to `max` (or `initial`, if larger),
/// without end.
fn ceilings(policy: ReconnectBackoff) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(policy.initial)
        .with_max_delay(policy.max.max(policy.initial))
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy(initial_ms: u64, max_ms: u64, jitter: f64) -> ReconnectBackoff {
        ReconnectBackoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    #[test]
    fn doubles_up_to_the_cap_without_jitter() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new(policy(100, 1000, 0.0));
        let delays: Vec<u128> = (0..7)
            .map(|_| backoff.next_delay(&mut rng).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.attempts(), 7);
        backoff.reset();
        assert_eq!(backoff.next_delay(&mut rng), Duration::from_millis(100));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let mut backoff = Backoff::new(policy(1000, 1000, 0.25));
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= Duration::from_millis(1000), "{delay:?}");
            assert!(delay >= Duration::from_millis(750), "{delay:?}");
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut rng = StdRng::seed_from_u64(3);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| Backoff::new(policy(1000, 1000, 0.5)).next_delay(&mut rng))
            .collect();
        assert!(delays.len() > 40, "{} distinct delays", delays.len());
    }

    #[test]
    fn odd_policies_neither_panic_nor_overflow() {
        let mut rng = StdRng::seed_from_u64(5);
        // max below initial, jitter out of range, a huge number of attempts.
        let mut backoff = Backoff::new(policy(500, 10, 7.0));
        for _ in 0..100 {
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= Duration::from_millis(500), "{delay:?}");
        }
        for jitter in [-1.0, 0.5, f64::NAN] {
            let mut backoff = Backoff::new(ReconnectBackoff {
                initial: Duration::MAX,
                max: Duration::MAX,
                jitter,
            });
            assert!(backoff.next_delay(&mut rng) >= Duration::from_secs(1 << 62));
            assert!(backoff.next_delay(&mut rng) >= Duration::from_secs(1 << 62));
        }
    }

    #[test]
    fn a_zero_policy_still_waits() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut zero = Backoff::new(policy(0, 0, 1.0));
        for _ in 0..100 {
            assert!(zero.next_delay(&mut rng) >= MIN_DELAY);
        }
    }
}
