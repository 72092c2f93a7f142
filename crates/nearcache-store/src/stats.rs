//! Store counters: striped so that busy threads do not fight over one cache line.
//!
//! Every hit bumps a counter. One shared atomic would bounce its cache line between cores on
//! every hit, so each counter is split over [`STRIPES`] cache-line-aligned stripes; a thread
//! always writes the stripe picked by its thread index, and a read sums the stripes.
//! Cost: one relaxed `fetch_add` on a line the thread mostly owns; 2 KiB per store.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of a store's counters. Counters only grow; subtract two snapshots for rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Reads answered from the store (negative entries included).
    pub hits: u64,
    /// Reads that found nothing usable (absent, dead, bypassed or disabled).
    pub misses: u64,
    /// Factory runs (one per flight, plus one per call when the store is disabled).
    pub loads: u64,
    /// Factory runs that returned `Err` (never cached; shared with the flight).
    pub load_errors: u64,
    /// Flights whose leader panicked or was dropped mid-load (a waiter took over).
    pub load_abandons: u64,
    /// Entries written (loads and `set`s).
    pub inserts: u64,
    /// Loaded values returned but not stored, because an invalidation overlapped the load.
    pub inserts_rejected_stale: u64,
    /// Values returned but not stored, because they weigh more than one shard can hold.
    pub inserts_rejected_too_heavy: u64,
    /// Entries evicted to make room (capacity).
    pub evictions: u64,
    /// Dead entries (expired by time or by a token) removed, or refused at insert.
    pub expirations: u64,
    /// Live entries removed by `remove`.
    pub removals: u64,
}

/// The counters, by index into a stripe.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Counter {
    Hits,
    Misses,
    Loads,
    LoadErrors,
    LoadAbandons,
    Inserts,
    InsertsRejectedStale,
    InsertsRejectedTooHeavy,
    Evictions,
    Expirations,
    Removals,
}

const COUNTERS: usize = 11;

/// Number of stripes (a power of two).
pub(crate) const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

/// A store's striped counters.
pub(crate) struct Stats {
    stripes: Box<[Stripe]>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    /// Adds `n` to `counter` on this thread's stripe.
    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        if let Some(stripe) = self.stripes.get(stripe_index()) {
            stripe.0[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds one to `counter`.
    #[inline]
    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    fn sum(&self, counter: Counter) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[counter as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            hits: self.sum(Counter::Hits),
            misses: self.sum(Counter::Misses),
            loads: self.sum(Counter::Loads),
            load_errors: self.sum(Counter::LoadErrors),
            load_abandons: self.sum(Counter::LoadAbandons),
            inserts: self.sum(Counter::Inserts),
            inserts_rejected_stale: self.sum(Counter::InsertsRejectedStale),
            inserts_rejected_too_heavy: self.sum(Counter::InsertsRejectedTooHeavy),
            evictions: self.sum(Counter::Evictions),
            expirations: self.sum(Counter::Expirations),
            removals: self.sum(Counter::Removals),
        }
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// This thread's stripe: threads get consecutive indices, so the first [`STRIPES`] threads
/// never share one.
#[inline]
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) & (STRIPES - 1);
            index.set(i);
        }
        i
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = Stats::new();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..1000 {
                        stats.incr(Counter::Hits);
                    }
                    stats.add(Counter::Removals, 2);
                });
            }
        });
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.hits, 8000);
        assert_eq!(snapshot.removals, 16);
        assert_eq!(snapshot.misses, 0);
    }

    #[test]
    fn every_counter_lands_in_its_own_field() {
        let stats = Stats::new();
        let all = [
            Counter::Hits,
            Counter::Misses,
            Counter::Loads,
            Counter::LoadErrors,
            Counter::LoadAbandons,
            Counter::Inserts,
            Counter::InsertsRejectedStale,
            Counter::InsertsRejectedTooHeavy,
            Counter::Evictions,
            Counter::Expirations,
            Counter::Removals,
        ];
        assert_eq!(all.len(), COUNTERS);
        for (i, counter) in all.into_iter().enumerate() {
            stats.add(counter, i as u64 + 1);
        }
        let s = stats.snapshot();
        assert_eq!(
            [
                s.hits,
                s.misses,
                s.loads,
                s.load_errors,
                s.load_abandons,
                s.inserts,
                s.inserts_rejected_stale,
                s.inserts_rejected_too_heavy,
                s.evictions,
                s.expirations,
                s.removals
            ],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
    }

    #[test]
    fn a_stripe_fills_whole_cache_lines() {
        assert_eq!(std::mem::align_of::<Stripe>(), 128);
        assert_eq!(std::mem::size_of::<Stripe>(), 128);
    }
}
