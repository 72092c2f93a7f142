//! Store counters: one stripe per thread, so that counting a hit is a plain add.
//!
//! Every hit bumps a counter. One shared atomic would bounce its cache line between cores on
//! every hit, and even an uncontended `lock`-prefixed add costs more than the rest of a
//! counter update on x86. So each counter is split over [`STRIPES`] cache-line-aligned
//! stripes, and each thread *owns* one: a process-wide slot it claims on its first count and
//! gives back when it exits. A stripe with one writer can be bumped with a relaxed load and a
//! relaxed store (no read-modify-write instruction) without losing counts. Threads beyond the
//! owned slots share the last stripe and bump it with `fetch_add`.
//!
//! Exactness: no count is ever lost or delayed: each count is written to the store's stripe
//! when it happens, not batched in the thread. A snapshot sums the stripes with relaxed loads,
//! so it may miss counts made concurrently with it, but it sees every count that happened
//! before it (a join, a channel, a lock acquired after the counting thread released it).
//!
//! Memory ordering of the owned path: the owner's own load always sees its own last store
//! (program order), and only the owner stores, so its load+store never races another writer.
//! A slot changes owner only through [`SLOTS`]' mutex: the old owner's last store happens
//! before it releases the slot, which happens before the new owner claims it, so the new
//! owner's first load sees the old owner's final value.
//!
//! Cost: a thread-local read, a comparison and an add with no `lock` prefix; 8 KiB per
//! store (32 stripes of 256 bytes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

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
    /// Batch factory calls (`get_or_create_many`): one per call that had keys to load.
    pub batch_loads: u64,
    /// Keys handed to batch factories, summed (`batch_keys_loaded / batch_loads` is the
    /// mean batch size). Each is also one of [`loads`](Self::loads).
    pub batch_keys_loaded: u64,
    /// Failed loads (an error, a panic, a hard timeout) whose callers got the key's expired
    /// value instead (fail-safe).
    pub fail_safe_activations: u64,
    /// Loads that ran past `hard_timeout`, counted once per load: cancelled, or left to
    /// finish in the background, or waited on by callers that stopped at it (their callers
    /// got the fail-safe value or `LoadError::Timeout`).
    pub hard_timeouts: u64,
    /// Background reloads started by eager refresh.
    pub eager_refreshes: u64,
    /// Calls answered with the key's expired (fail-safe) value at the soft timeout while
    /// the load went on, counted once per call.
    pub soft_timeouts: u64,
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
    BatchLoads,
    BatchKeysLoaded,
    FailSafeActivations,
    HardTimeouts,
    EagerRefreshes,
    SoftTimeouts,
}

const COUNTERS: usize = 17;

/// Number of stripes (a power of two): one per owning thread, the last one shared.
pub(crate) const STRIPES: usize = 32;

/// The stripe of threads that own none.
const SHARED: usize = STRIPES - 1;

/// Words from one stripe's start to the next: the counters rounded up to whole 128-byte
/// line pairs, so that two stripes never share a cache line (nor an adjacent-line prefetch).
const STRIDE: usize = COUNTERS.div_ceil(16) * 16;

// Stripes never overlap, and each starts on a 128-byte line.
const _: () = assert!(STRIDE >= COUNTERS && (STRIDE * 8).is_multiple_of(128));

/// A thread's place as the index of its stripe's first word: the slot times [`STRIDE`],
/// scaled once when it is claimed so that a count adds no multiply (the byte address is
/// then one `base + 8 × index + 8 × counter` addressing mode).
const fn first_word(slot: usize) -> usize {
    slot * STRIDE
}

/// First word of the shared stripe: indexes at or past it are not owned.
const SHARED_WORD: usize = first_word(SHARED);

/// Every stripe, back to back, [`STRIDE`] words each.
#[repr(align(128))]
struct Stripes([AtomicU64; STRIPES * STRIDE]);

/// A store's striped counters.
pub(crate) struct Stats {
    stripes: Stripes,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            stripes: Stripes(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Counter `counter` of the stripe that starts at word `first`.
    #[inline(always)]
    fn cell(&self, first: usize, counter: Counter) -> &AtomicU64 {
        &self.stripes.0[first + counter as usize]
    }

    /// Adds `n` to `counter` on this thread's stripe.
    ///
    /// The hot path is one thread-local load, one comparison (owned or not) and an add to
    /// the address that word index gives: a thread that owns no stripe yet (or never will)
    /// goes out of line, where it claims one or uses the shared stripe. The bounds check of
    /// the index folds into the comparison (`first < SHARED_WORD` bounds `first + counter`).
    /// Neither out-of-line call takes the stripe's address from the hot path, so the hot
    /// path computes none ahead of its comparison: the add is one instruction with the
    /// store's pointer, the index and the counter's offset in its addressing mode.
    ///
    /// Memory ordering: relaxed. Only the thread that owns a stripe writes it, so its own
    /// load sees its own last store, and no other writer's store can fall between the two
    /// (module docs: ownership passes through [`SLOTS`]' mutex). A snapshot needs no more:
    /// it sees every count that happened before it by that happens-before edge alone.
    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let mut first = FIRST.with(Cell::get);
        if first >= SHARED_WORD {
            first = owned_first(first);
            if first >= SHARED_WORD {
                self.add_shared(counter, n);
                return;
            }
        }
        // This thread is the stripe's only writer: no count can be lost between the load
        // and the store.
        let cell = self.cell(first, counter);
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// [`add`](Self::add) for a thread that shares the last stripe: a read-modify-write,
    /// since other threads write it too.
    #[cold]
    #[inline(never)]
    fn add_shared(&self, counter: Counter, n: u64) {
        self.cell(SHARED_WORD, counter)
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    #[inline]
    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    fn sum(&self, counter: Counter) -> u64 {
        (0..STRIPES)
            .map(|slot| self.cell(first_word(slot), counter).load(Ordering::Relaxed))
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
            batch_loads: self.sum(Counter::BatchLoads),
            batch_keys_loaded: self.sum(Counter::BatchKeysLoaded),
            fail_safe_activations: self.sum(Counter::FailSafeActivations),
            hard_timeouts: self.sum(Counter::HardTimeouts),
            eager_refreshes: self.sum(Counter::EagerRefreshes),
            soft_timeouts: self.sum(Counter::SoftTimeouts),
        }
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// The owned slots: the next never claimed, and those given back by threads that exited.
struct Slots {
    next: usize,
    free: Vec<usize>,
}

static SLOTS: Mutex<Slots> = parking_lot::const_mutex(Slots {
    next: 0,
    free: Vec::new(),
});

/// Not claimed yet.
const UNCLAIMED: usize = usize::MAX;

thread_local! {
    /// This thread's stripe as the index of its first word ([`first_word`] of its slot):
    /// [`UNCLAIMED`], an owned stripe's below [`SHARED_WORD`], or [`SHARED_WORD`].
    static FIRST: Cell<usize> = const { Cell::new(UNCLAIMED) };
    /// Gives the owned slot back when the thread exits.
    static RELEASE: Release = const { Release };
}

/// Dropped with the thread's locals: gives its slot back for the next thread to own.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        // `FIRST` has no destructor, so it is still readable here. Counts made by later
        // thread-local destructors of this thread go to the shared stripe.
        let first = FIRST.with(|first| first.replace(SHARED_WORD));
        if first < SHARED_WORD {
            SLOTS.lock().free.push(first / STRIDE);
        }
    }
}

/// The first word of the stripe this thread owns, claiming one on its first count
/// (`first` is [`UNCLAIMED`]); [`SHARED_WORD`] when it owns none.
#[cold]
#[inline(never)]
fn owned_first(first: usize) -> usize {
    if first == UNCLAIMED {
        first_word(claim_slot())
    } else {
        first
    }
}

#[cold]
#[inline(never)]
fn claim_slot() -> usize {
    // Only a thread whose slot will be given back may own one: registering the release
    // fails once the thread's locals are being destroyed.
    let slot = if RELEASE.try_with(|_| ()).is_ok() {
        let mut slots = SLOTS.lock();
        match slots.free.pop() {
            Some(slot) => slot,
            None if slots.next < SHARED => {
                slots.next += 1;
                slots.next - 1
            }
            None => SHARED,
        }
    } else {
        SHARED
    };
    FIRST.with(|cell| cell.set(first_word(slot)));
    slot
}

#[cfg(all(test, not(shuttle)))]
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
    fn counts_survive_threads_that_come_and_go_past_the_owned_slots() {
        // More threads over time than there are owned stripes, several at once: owners
        // exit and hand their slot on, latecomers share the last stripe. Nothing is lost.
        let stats = Stats::new();
        for _ in 0..10 {
            let barrier = std::sync::Barrier::new(2 * STRIPES);
            std::thread::scope(|s| {
                for _ in 0..2 * STRIPES {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..500 {
                            stats.incr(Counter::Hits);
                        }
                    });
                }
            });
        }
        assert_eq!(stats.snapshot().hits, 10 * 2 * STRIPES as u64 * 500);
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
            Counter::BatchLoads,
            Counter::BatchKeysLoaded,
            Counter::FailSafeActivations,
            Counter::HardTimeouts,
            Counter::EagerRefreshes,
            Counter::SoftTimeouts,
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
                s.removals,
                s.batch_loads,
                s.batch_keys_loaded,
                s.fail_safe_activations,
                s.hard_timeouts,
                s.eager_refreshes,
                s.soft_timeouts
            ],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
        );
    }

    #[test]
    fn a_stripe_fills_whole_cache_lines() {
        assert_eq!(std::mem::align_of::<Stripes>(), 128);
        assert_eq!(
            first_word(1) * 8 % 128,
            0,
            "each stripe starts on a 128-byte line"
        );
        assert!(first_word(1) >= COUNTERS, "stripes do not overlap");
        assert_eq!(std::mem::size_of::<Stripes>(), STRIPES * STRIDE * 8);
    }
}
