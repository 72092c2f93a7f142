//! The propagation-lag histogram: how long an invalidation took from its origin's publish
//! to being applied here, so the staleness window is a measured number, not a hope.
//!
//! Recorded only by the receiving task, read by `stats()`; a mutex that is never contended
//! costs less than a lock-free histogram would. Lag is measured with wall clocks of two
//! hosts, so clock skew between machines shows up in it (on one host it is exact).

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::metrics::Seconds;

/// Summary of the propagation lag observed on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagSummary {
    /// Messages measured.
    pub samples: u64,
    /// Median lag.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest lag seen.
    pub max: Duration,
}

#[derive(Debug)]
pub(crate) struct LagHistogram {
    micros: Mutex<Option<Histogram<u64>>>,
    /// The exported histogram (`nearcache_propagation_lag_seconds`).
    exported: Seconds,
}

impl LagHistogram {
    /// Lags from 1 µs to 1 hour at 3 significant digits (about 30 KiB).
    pub(crate) fn new(exported: Seconds) -> Self {
        LagHistogram {
            micros: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok()),
            exported,
        }
    }

    pub(crate) fn record(&self, lag: Duration) {
        self.exported.record(lag);
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        if let Some(histogram) = self.micros.lock().as_mut() {
            histogram.saturating_record(micros.max(1));
        }
    }

    pub(crate) fn summary(&self) -> LagSummary {
        let guard = self.micros.lock();
        let Some(h) = guard.as_ref() else {
            return LagSummary::default();
        };
        if h.is_empty() {
            return LagSummary::default();
        }
        LagSummary {
            samples: h.len(),
            p50: Duration::from_micros(h.value_at_quantile(0.50)),
            p90: Duration::from_micros(h.value_at_quantile(0.90)),
            p99: Duration::from_micros(h.value_at_quantile(0.99)),
            max: Duration::from_micros(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recorded_lags() {
        let lag = LagHistogram::new(Seconds::default());
        assert_eq!(lag.summary(), LagSummary::default());
        for ms in 1..=100 {
            lag.record(Duration::from_millis(ms));
        }
        let s = lag.summary();
        assert_eq!(s.samples, 100);
        let close = |d: Duration, ms: u64| d.as_micros().abs_diff(u128::from(ms) * 1000) <= 100;
        assert!(close(s.p50, 50), "{s:?}");
        assert!(close(s.p99, 99), "{s:?}");
        assert!(close(s.max, 100), "{s:?}");
    }

    #[test]
    fn absurd_lags_saturate_instead_of_failing() {
        let lag = LagHistogram::new(Seconds::default());
        lag.record(Duration::MAX);
        lag.record(Duration::ZERO);
        assert_eq!(lag.summary().samples, 2);
    }
}
