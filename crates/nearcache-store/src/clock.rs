//! The store's clock: instants and spans in the clock's own ticks, read through `quanta`.
//!
//! `quanta::Clock::raw` reads the CPU's time-stamp counter where it can (no system call).
//! Entries keep their deadlines as [`StoreInstant`]s — raw readings of that counter — and
//! their windows as [`StoreSpan`]s in the same ticks, so checking a sliding entry on the hit
//! path is one raw read and integer comparisons: no scaling of the reading to nanoseconds
//! (about 15 instructions on every timed hit). Durations are converted to ticks once, when an
//! entry is stored. On the mock clock (`quanta::Clock::mock()`, which tests inject and move by
//! hand) and on quanta's fallback clock a tick is a nanosecond.

use std::time::Duration;

/// An instant on a store's clock, in its raw ticks. Only instants of the same store's clock
/// compare meaningfully; [`NEVER`](Self::NEVER) never arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StoreInstant(u64);

/// A span of time in a store's clock ticks, [`NEVER`](Self::NEVER) for one that never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StoreSpan(u64);

impl StoreInstant {
    /// The instant that never arrives: a deadline of "never".
    pub(crate) const NEVER: StoreInstant = StoreInstant(u64::MAX);

    /// The instant held in an atomic (see [`raw`](Self::raw)).
    #[inline]
    pub(crate) const fn from_raw(raw: u64) -> Self {
        StoreInstant(raw)
    }

    /// The ticks, for keeping an instant in an `AtomicU64`.
    #[inline]
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    /// `span` after this instant, saturating at [`NEVER`](Self::NEVER): an overflowing span
    /// never ends.
    #[inline]
    pub(crate) const fn after(self, span: StoreSpan) -> StoreInstant {
        StoreInstant(self.0.saturating_add(span.0))
    }

    /// The time from `earlier` to this instant; zero if `earlier` is not earlier.
    #[inline]
    pub(crate) const fn since(self, earlier: StoreInstant) -> StoreSpan {
        StoreSpan(self.0.saturating_sub(earlier.0))
    }
}

impl StoreSpan {
    /// No time at all.
    pub(crate) const ZERO: StoreSpan = StoreSpan(0);
    /// The span that never ends.
    pub(crate) const NEVER: StoreSpan = StoreSpan(u64::MAX);

    /// `fraction` (in [0, 1]) of this span, rounded down.
    #[inline]
    pub(crate) fn fraction(self, fraction: f64) -> StoreSpan {
        // Exact enough: a fraction of at most 2^64 ticks, rounded.
        StoreSpan((self.0 as f64 * fraction) as u64)
    }
}

/// A store's clock: [`StoreInstant`]s now, and durations converted to its ticks.
#[derive(Debug, Clone)]
pub(crate) struct StoreClock {
    clock: quanta::Clock,
    /// Ticks per nanosecond, in fixed point with 32 fractional bits.
    ticks_per_nano: u64,
    /// How stale a sliding entry's last access must be before a read rewrites it (1 ms).
    touch: StoreSpan,
}

/// The fractional bits of [`StoreClock::ticks_per_nano`].
const FRACTION_BITS: u32 = 32;

/// How stale a sliding entry's last access is before a read rewrites it, so hot entries are
/// not written on every hit (no cache-line ping-pong between readers).
const TOUCH_GRANULARITY: Duration = Duration::from_millis(1);

impl StoreClock {
    pub(crate) fn new(clock: quanta::Clock) -> Self {
        // quanta turns ticks into nanoseconds by a fixed ratio (calibrated once per process);
        // measure it on 2^32 ticks and invert it. On the mock and the fallback clock it is 1.
        let nanos = clock.delta_as_nanos(0, 1 << FRACTION_BITS);
        let ticks_per_nano = match nanos {
            0 => 1 << FRACTION_BITS,
            nanos => u64::try_from((1_u128 << (2 * FRACTION_BITS)) / u128::from(nanos))
                .unwrap_or(u64::MAX),
        };
        let mut clock = StoreClock {
            clock,
            ticks_per_nano,
            touch: StoreSpan::ZERO,
        };
        clock.touch = clock.span(TOUCH_GRANULARITY);
        clock
    }

    /// Now: one raw read of the clock (no scaling).
    #[inline]
    pub(crate) fn now(&self) -> StoreInstant {
        StoreInstant(self.clock.raw())
    }

    /// `duration` in ticks, rounded up (only zero is no time), saturating at
    /// [`StoreSpan::NEVER`] (so `Duration::MAX` means "never").
    pub(crate) fn span(&self, duration: Duration) -> StoreSpan {
        let round_up = (1_u128 << FRACTION_BITS) - 1;
        let ticks = duration
            .as_nanos()
            .checked_mul(u128::from(self.ticks_per_nano))
            .and_then(|scaled| scaled.checked_add(round_up))
            .map(|scaled| scaled >> FRACTION_BITS)
            .and_then(|ticks| u64::try_from(ticks).ok());
        StoreSpan(ticks.unwrap_or(u64::MAX))
    }

    /// `duration` after `now`, saturating at [`StoreInstant::NEVER`]: an overflowing duration
    /// never expires.
    pub(crate) fn after(&self, now: StoreInstant, duration: Duration) -> StoreInstant {
        now.after(self.span(duration))
    }

    /// How stale a sliding entry's last access must be before a read rewrites it: 1 ms.
    #[inline]
    pub(crate) fn touch_granularity(&self) -> StoreSpan {
        self.touch
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn mock_time_moves_only_when_told_and_ticks_are_nanoseconds() {
        let (clock, mock) = quanta::Clock::mock();
        let clock = StoreClock::new(clock);
        let start = clock.now();
        assert_eq!(clock.now(), start);
        mock.increment(Duration::from_millis(1500));
        assert_eq!(clock.now().since(start), StoreSpan(1_500_000_000));
        assert_eq!(clock.span(Duration::from_nanos(7)), StoreSpan(7));
        assert_eq!(clock.touch_granularity(), StoreSpan(1_000_000));
    }

    #[test]
    fn overflowing_durations_saturate_to_never() {
        let clock = StoreClock::new(quanta::Clock::new());
        assert_eq!(clock.span(Duration::MAX), StoreSpan::NEVER);
        assert_eq!(clock.span(Duration::ZERO), StoreSpan::ZERO);
        assert!(
            clock.span(Duration::from_nanos(1)) > StoreSpan::ZERO,
            "however slow the counter, only zero is no time"
        );
        let at = StoreInstant(10);
        assert_eq!(clock.after(at, Duration::MAX), StoreInstant::NEVER);
        assert_eq!(
            StoreInstant(u64::MAX - 1).after(StoreSpan(5)),
            StoreInstant::NEVER
        );
        assert_eq!(at.after(StoreSpan::ZERO), at);
        assert_eq!(at.since(StoreInstant(20)), StoreSpan::ZERO);
    }

    #[test]
    fn real_clock_spans_convert_back_to_their_durations() {
        let quanta = quanta::Clock::new();
        let clock = StoreClock::new(quanta.clone());
        for duration in [
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(86_400 * 365),
        ] {
            let ticks = clock.span(duration).0;
            let back = quanta.delta_as_nanos(0, ticks);
            let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            // Within a millionth: the ratio is inverted from 2^32 ticks.
            assert!(
                back.abs_diff(nanos) <= nanos / 1_000_000 + 1,
                "{duration:?}: {back}"
            );
        }
    }

    #[test]
    fn real_clock_is_monotonic() {
        let clock = StoreClock::new(quanta::Clock::new());
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
