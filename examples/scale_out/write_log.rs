//! [`WriteLog`]: when each version of each product was written, and the stale-read check.
//!
//! A read is **stale** when it returned version `v` of a product although version `v + 1`
//! had been written more than the propagation bound before the read started. Versions only
//! grow, so `v + 1` is the oldest write the read missed and its write time decides.
//!
//! The check must never accuse a correct cache. The log is a mirror of the database's own
//! write log ([`crate::db`]), whose write times are taken after each commit: a read that
//! returned `v` queried before `v + 1` committed, so it started before `v + 1`'s time and is
//! never judged stale. The mirror is known up to a time `known_until`: a version absent from
//! it was written after that. When that does not settle a read (the mirror is older than the
//! bound), the verdict is [`Verdict::Undecided`] and the read is checked again against a
//! later mirror.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::clock::Micros;

/// Every product's first version.
pub(crate) const FIRST_VERSION: u64 = 1;

/// What [`WriteLog::check`] concluded about one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No version newer than the one read was written more than the bound before the read.
    Fresh,
    /// A newer version was written `behind` µs before the read started (more than the bound).
    Stale {
        /// How long before the read the first missed version was written, in µs.
        behind: Micros,
    },
    /// The mirror is too old to tell; check again later.
    Undecided,
}

/// Per product: its latest version and the write time of every version after the first.
#[derive(Debug)]
pub(crate) struct WriteLog {
    rows: Box<[Row]>,
    /// Writes up to this time are all in the log .
    known_until: AtomicU64,
}

#[derive(Debug)]
struct Row {
    /// The latest version, published after its write time is pushed (under `times`' lock).
    latest: AtomicU64,
    /// `times[i]` is the write time of version `FIRST_VERSION + 1 + i`.
    times: Mutex<Vec<Micros>>,
}

impl WriteLog {
    /// A mirror of a log kept elsewhere, empty until [`record`](Self::record)ed and
    /// [`set_known_until`](Self::set_known_until) is called.
    pub(crate) fn mirror(products: u32) -> WriteLog {
        let rows = (0..products)
            .map(|_| Row {
                latest: AtomicU64::new(FIRST_VERSION),
                times: Mutex::new(Vec::new()),
            })
            .collect();
        WriteLog {
            rows,
            known_until: AtomicU64::new(0),
        }
    }

    /// The latest version of `product` recorded. `None` for a product out of range.
    #[cfg(test)]
    pub(crate) fn latest(&self, product: u32) -> Option<u64> {
        self.row(product)
            .map(|row| row.latest.load(Ordering::Acquire))
    }

    /// Records, in a mirror, that `version` of `product` was written at `at`. Versions of one
    /// product must be recorded in order; one already known is ignored. Returns whether it
    /// was new.
    pub(crate) fn record(&self, product: u32, version: u64, at: Micros) -> bool {
        let Some(row) = self.row(product) else {
            return false;
        };
        let mut times = row.times.lock();
        let latest = row.latest.load(Ordering::Relaxed);
        if version != latest + 1 {
            return false;
        }
        times.push(at);
        row.latest.store(version, Ordering::Release);
        true
    }

    /// Declares every write up to `at` recorded (a mirror, after a refresh).
    pub(crate) fn set_known_until(&self, at: Micros) {
        self.known_until.fetch_max(at, Ordering::AcqRel);
    }

    /// Up to when the log is complete.
    pub(crate) fn known_until(&self) -> Micros {
        self.known_until.load(Ordering::Acquire)
    }

    /// Judges a read of `product` that started at `started` and returned `version`, with
    /// `bound` µs of allowed propagation delay.
    pub(crate) fn check(
        &self,
        product: u32,
        version: u64,
        started: Micros,
        bound: Micros,
    ) -> Verdict {
        // Load the horizon before the versions: everything up to it is visible below.
        let known_until = self.known_until();
        let Some(row) = self.row(product) else {
            return Verdict::Undecided;
        };
        if version >= row.latest.load(Ordering::Acquire) {
            // Nothing newer is known, so anything newer was written after `known_until`.
            return if known_until.saturating_add(bound) >= started {
                Verdict::Fresh
            } else {
                Verdict::Undecided
            };
        }
        let times = row.times.lock();
        // `times[version - FIRST_VERSION]` is when `version + 1`, the first missed one, was written.
        let written = version
            .checked_sub(FIRST_VERSION)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| times.get(index).copied());
        match written {
            Some(written) if written.saturating_add(bound) < started => Verdict::Stale {
                behind: started - written,
            },
            Some(_) => Verdict::Fresh,
            // A version below FIRST_VERSION: not one this log handed out.
            None => Verdict::Undecided,
        }
    }

    fn row(&self, product: u32) -> Option<&Row> {
        self.rows.get(usize::try_from(product).ok()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_log_judges_by_the_first_missed_write() {
        let log = WriteLog::mirror(2);
        assert!(log.record(0, 2, 1_000));
        assert!(log.record(0, 3, 5_000));
        log.set_known_until(u64::MAX - 1_000);
        assert_eq!(log.latest(0), Some(3));
        assert_eq!(log.latest(1), Some(FIRST_VERSION));
        // Version 1 was overtaken at 1 000 µs: stale for reads after 1 000 + bound.
        assert_eq!(log.check(0, 1, 1_100, 100), Verdict::Fresh);
        assert_eq!(log.check(0, 1, 1_101, 100), Verdict::Stale { behind: 101 });
        // Version 2 was overtaken at 5 000 µs.
        assert_eq!(log.check(0, 2, 4_000, 100), Verdict::Fresh);
        assert_eq!(
            log.check(0, 2, 9_000, 100),
            Verdict::Stale { behind: 4_000 }
        );
        // The latest version is never stale while the log is known past the read.
        assert_eq!(log.check(0, 3, u64::MAX - 1_000, 100), Verdict::Fresh);
        assert_eq!(log.check(1, 1, u64::MAX - 1_000, 0), Verdict::Fresh);
    }

    #[test]
    fn out_of_range_products_and_versions_are_undecided_not_a_panic() {
        let log = WriteLog::mirror(1);
        assert_eq!(log.latest(7), None);
        assert_eq!(log.check(7, 1, 0, 0), Verdict::Undecided);
        assert!(log.record(0, 2, 10));
        assert_eq!(log.check(0, 0, 1_000, 0), Verdict::Undecided);
        assert!(!log.record(9, 2, 0));
    }

    #[test]
    fn a_mirror_decides_only_up_to_what_it_knows() {
        let log = WriteLog::mirror(1);
        // Nothing known yet: a read at 500 µs cannot be judged with a 100 µs bound.
        assert_eq!(log.check(0, 1, 500, 100), Verdict::Undecided);
        assert!(log.record(0, 2, 1_000));
        assert!(!log.record(0, 2, 1_000), "a version is recorded once");
        assert!(!log.record(0, 4, 3_000), "versions are recorded in order");
        log.set_known_until(2_000);
        log.set_known_until(1_500); // never goes back
        assert_eq!(log.known_until(), 2_000);
        assert_eq!(log.check(0, 1, 1_050, 100), Verdict::Fresh);
        assert_eq!(log.check(0, 1, 1_500, 100), Verdict::Stale { behind: 500 });
        // Version 2 is the latest known; writes after 2 000 µs are unknown.
        assert_eq!(log.check(0, 2, 2_100, 100), Verdict::Fresh);
        assert_eq!(log.check(0, 2, 2_101, 100), Verdict::Undecided);
    }
}
