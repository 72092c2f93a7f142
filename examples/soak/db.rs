//! The soak's "database": one version number per key, and when each recent version was
//! written, so a read that returns an old version can say how long it had been stale.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Write times kept per key (older ones are forgotten: memory stays flat).
const HISTORY: usize = 64;

/// Versions and recent write times of `keys` keys.
pub(crate) struct Db {
    keys: Vec<Mutex<Row>>,
}

struct Row {
    version: u64,
    /// `(version, written at, during a fault)` of the latest writes, oldest first.
    written: VecDeque<(u64, Instant, bool)>,
}

impl Db {
    pub(crate) fn new(keys: usize) -> Db {
        Db {
            keys: (0..keys)
                .map(|_| {
                    Mutex::new(Row {
                        version: 0,
                        written: VecDeque::with_capacity(HISTORY),
                    })
                })
                .collect(),
        }
    }

    fn row(&self, key: usize) -> std::sync::MutexGuard<'_, Row> {
        self.keys[key]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current version of `key` (what a load reads).
    pub(crate) fn read(&self, key: usize) -> u64 {
        self.row(key).version
    }

    /// Writes a new version of `key` (`during_fault`: while a fault was in progress); returns
    /// it.
    pub(crate) fn write(&self, key: usize, during_fault: bool) -> u64 {
        let mut row = self.row(key);
        row.version += 1;
        let version = row.version;
        if row.written.len() == HISTORY {
            row.written.pop_front();
        }
        row.written
            .push_back((version, Instant::now(), during_fault));
        version
    }

    /// How long `seen` had been stale at `at`: `None` if it is the current version, else the
    /// time since the next version was written (or since the oldest write remembered, if
    /// that one is forgotten: an underestimate only past 64 writes of one key), and whether
    /// that write was made during a fault.
    pub(crate) fn staleness(&self, key: usize, seen: u64, at: Instant) -> Option<(Duration, bool)> {
        let row = self.row(key);
        if seen >= row.version {
            return None;
        }
        let superseded = row.written.iter().find(|(version, _, _)| *version > seen)?;
        Some((at.saturating_duration_since(superseded.1), superseded.2))
    }
}

/// Stale reads seen: count and the longest staleness (in microseconds), split by whether a
/// fault was in progress when the superseding write or the read happened.
#[derive(Default)]
pub(crate) struct Staleness {
    pub(crate) stale_reads: AtomicU64,
    pub(crate) max_healthy_micros: AtomicU64,
    pub(crate) max_faulty_micros: AtomicU64,
    pub(crate) past_bound: AtomicU64,
}

impl Staleness {
    pub(crate) fn record(&self, age: Duration, healthy: bool, bound: Duration) {
        self.stale_reads.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        let max = if healthy {
            &self.max_healthy_micros
        } else {
            &self.max_faulty_micros
        };
        max.fetch_max(micros, Ordering::Relaxed);
        if age > bound {
            self.past_bound.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_from_the_next_write() {
        let db = Db::new(1);
        let t0 = Instant::now();
        assert_eq!(db.staleness(0, 0, t0), None);
        db.write(0, true);
        let stale = db.staleness(0, 0, Instant::now() + Duration::from_secs(1));
        assert!(
            stale.is_some_and(|(age, during_fault)| age >= Duration::from_secs(1) && during_fault)
        );
        assert_eq!(db.staleness(0, 1, Instant::now()), None);
    }
}
