//! The store's clock: nanoseconds since the store was created, read through `quanta`.
//!
//! Entries keep their deadlines as `u64` nanoseconds on this clock. `quanta::Clock::now` reads
//! the CPU's time-stamp counter where it can (no system call), so checking a sliding entry on
//! the hit path stays cheap; tests inject `quanta::Clock::mock()` and move time by hand.

use std::time::Duration;

/// A deadline or window that never arrives.
pub(crate) const NEVER: u64 = u64::MAX;

/// Nanoseconds since the store was created, on an injectable clock.
#[derive(Debug, Clone)]
pub(crate) struct StoreClock {
    clock: quanta::Clock,
    /// The clock's raw reading at the origin.
    origin: u64,
}

impl StoreClock {
    pub(crate) fn new(clock: quanta::Clock) -> Self {
        let origin = clock.raw();
        StoreClock { clock, origin }
    }

    /// Now, in nanoseconds since the store's origin: one raw read scaled once (no `Duration`
    /// round trip, which cost a sliding hit about 25 instructions).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// `duration` in nanoseconds, saturating at [`NEVER`] (so `Duration::MAX` means "never").
#[inline]
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(NEVER)
}

/// `now + duration`, saturating at [`NEVER`]: an overflowing duration never expires.
#[inline]
pub(crate) fn deadline_after(now: u64, duration: Duration) -> u64 {
    now.saturating_add(nanos(duration))
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn mock_time_moves_only_when_told() {
        let (clock, mock) = quanta::Clock::mock();
        let clock = StoreClock::new(clock);
        assert_eq!(clock.now(), 0);
        mock.increment(Duration::from_millis(1500));
        assert_eq!(clock.now(), 1_500_000_000);
    }

    #[test]
    fn overflowing_durations_saturate_to_never() {
        assert_eq!(nanos(Duration::MAX), NEVER);
        assert_eq!(deadline_after(10, Duration::MAX), NEVER);
        assert_eq!(deadline_after(NEVER - 1, Duration::from_secs(1)), NEVER);
        assert_eq!(deadline_after(10, Duration::from_nanos(5)), 15);
        assert_eq!(deadline_after(10, Duration::ZERO), 10);
    }

    #[test]
    fn real_clock_is_monotonic() {
        let clock = StoreClock::new(quanta::Clock::new());
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
