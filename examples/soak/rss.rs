//! Resident memory over the run, from `/proc/self/status`, and whether it grew.

use std::time::Duration;

/// `VmRSS` of this process in KiB (`None` where `/proc` is unavailable).
pub(crate) fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The verdict on memory: the mean of the last third of the samples taken after warm-up
/// against the mean of the first third.
#[derive(Debug)]
pub(crate) struct Growth {
    pub(crate) first_third_kib: u64,
    pub(crate) last_third_kib: u64,
    /// Allowed growth: 10 % of the first third, at least 8 MiB (allocator noise).
    pub(crate) tolerance_kib: u64,
}

impl Growth {
    pub(crate) fn grew(&self) -> bool {
        self.last_third_kib > self.first_third_kib + self.tolerance_kib
    }
}

/// Compares thirds of the samples taken after `warm_up` (`None` with fewer than 3 samples).
pub(crate) fn growth(samples: &[(Duration, u64)], warm_up: Duration) -> Option<Growth> {
    let after: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= warm_up)
        .map(|(_, kib)| *kib)
        .collect();
    let third = after.len() / 3;
    if third == 0 {
        return None;
    }
    let mean = |part: &[u64]| part.iter().sum::<u64>() / part.len() as u64;
    let first = mean(&after[..third]);
    let last = mean(&after[after.len() - third..]);
    Some(Growth {
        first_third_kib: first,
        last_third_kib: last,
        tolerance_kib: (first / 10).max(8 * 1024),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_the_thirds_after_warm_up() {
        let s = |secs, kib| (Duration::from_secs(secs), kib);
        let flat = [s(0, 1), s(10, 100_000), s(11, 100_000), s(12, 101_000)];
        let flat = growth(&flat, Duration::from_secs(10)).unwrap();
        assert!(!flat.grew(), "{flat:?}");
        let leaking = [s(10, 100_000), s(11, 150_000), s(12, 200_000)];
        assert!(growth(&leaking, Duration::from_secs(10)).unwrap().grew());
        assert!(growth(&[s(10, 1)], Duration::ZERO).is_none());
        assert!(rss_kib().is_some_and(|kib| kib > 0));
    }
}
