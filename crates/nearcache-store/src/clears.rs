//! The clear count as an entry records it — its low 32 bits — and the wrap fence that makes
//! 32 bits enough.
//!
//! Every entry dies at the next `clear`. An entry records the registry's clear count
//! ([`Regions::clears`](nearcache_regions::Regions::clears)) as it was when its load began
//! (or its `set` ran), and is alive only while the count has not moved. The whole `u64` made
//! the entry record 48 bytes; its low 32 bits keep it at 40 with the weight still inline, and
//! compare as cheaply (the hit path compares the stamp with the low half of the count it
//! loads). The count moves by exactly one per clear. (The registry's epoch would not do:
//! region expiries move it too, by any amount between two clears, so its low bits could come
//! round again at any clear, and a fence at a fixed multiple could be skipped.)
//!
//! With 32 bits an entry recorded at count `c` would read as alive again at `c + 2^32`. The
//! **wrap fence** prevents that. Clears through the store run one at a time, and a clear whose
//! new count `n` is a multiple of [`FENCE_EVERY`] (2^31) is a fence: before it returns it
//!
//! 1. locks and releases every shard of the flight table, in turn, and then
//! 2. removes every entry whose recorded bits are not `n`'s, holding each cache shard's write
//!    lock for its whole scan (so no entry can move out of the scan's way).
//!
//! Every insert of a value happens under its key's flight-shard lock, right after a check
//! under that same lock that the count is still the one the entry records, compared as a
//! whole `u64` (a load's flight keeps the count it started at; a `set` reads it before it
//! builds the entry). A fail-safe re-arm copies the bits of an entry already held, found
//! kept under that lock (by the comparison of (b), exact).
//!
//! # Why no entry is served after a clear
//!
//! **(a) A load that began before a fence and ends after its sweep.** Its completion check
//! compares the whole count its flight started at with the current one: the fence moved it,
//! so the value is returned to its callers and not stored. A load (or `set`) that passed its
//! check before the fence moved the count held its flight-shard lock until its insert was
//! done, so step 1 waits for that insert, and step 2 sees the entry and removes it.
//!
//! **(b) No entry is held 2^32 clears behind.** Claim: when fence `n` starts, every held entry
//! records a count in `[n − 2^31, n]`. For the first fence (`n = 2^31`) every count ever
//! recorded is in `[0, 2^31]`. For fence `n`: the previous fence, `n − 2^31`, left only
//! entries recording `n − 2^31` or later (below), and every insert since recorded the count
//! at its check, which never passed `n` before fence `n` moved it there. During fence `n`'s
//! sweep the count stays `n` (clears are serialised), so an entry recording `c` in
//! `[n − 2^31, n)` has bits other than `n`'s (`0 < n − c ≤ 2^31 < 2^32`) and is removed; an
//! older insert racing the fence is in the sweep's view (a); an insert whose check comes
//! after step 1 took its shard records `n` or later (the check reads the count after the
//! fence moved it, through that lock). So after the fence every held entry records a count in
//! `[n, count]`, and the count stays below `n + 2^31` until the next fence. Two counts
//! compared are therefore never 2^32 or more apart, and 32 bits tell them apart exactly.
//!
//! **(c) One comparison everywhere.** Every liveness check of an entry — the hit path, the
//! purger's sweep, the removal of a dead entry by a read, fail-safe's
//! [`Standing`](crate::entry::Standing) (so a kept value too), the removal cause — compares the
//! entry's bits with [`bits_of`] the current count, so (b) makes all of them exact: an entry
//! recorded before a clear is never live nor kept after it.
//!
//! Entries a fence removes are counted and reported exactly as a `clear`'s purge pass counts
//! and reports them (expirations; the removal listener is told `Invalidated`), after the
//! fence has let go of every lock.
//!
//! **Limit.** A global expiry made directly on the registry
//! ([`Store::regions`](crate::Store::regions)`().expire_global()`) kills entries as a clear
//! does but neither waits for other clears nor fences: only [`Store::clear`](crate::Store::clear)
//! keeps the count from wrapping. A fence holds each cache shard's write lock for a whole scan
//! of that shard, once every 2^31 clears.

use nearcache_keys::Key;

use crate::entry::StoredEntry;
use crate::removal::RemovalCause;
use crate::stats::Counter;
use crate::store::StoreInner;

/// A clear whose new count is a multiple of this sweeps every entry from an older count.
pub(crate) const FENCE_EVERY: u64 = 1 << 31;

/// The bits of clear count `clears` that an entry records and is compared by: the low 32.
#[inline(always)]
pub(crate) fn bits_of(clears: u64) -> u32 {
    // Truncation intended: the low half.
    #[allow(clippy::cast_possible_truncation)]
    let low = clears as u32;
    low
}

/// Whether the clear that moved the count to `clears` is a fence.
pub(crate) fn is_fence(clears: u64) -> bool {
    clears.is_multiple_of(FENCE_EVERY)
}

/// What a fence removed, and the count it ran at.
#[derive(Default)]
pub(crate) struct Fenced {
    clears: u64,
    removed: Vec<(Key, StoredEntry)>,
}

impl StoreInner {
    /// A `clear` but for its purge request: expires every entry, one clear at a time, and
    /// when the new count is a fence, sweeps (see the module docs). Returns what the fence
    /// removed (nothing otherwise), for [`report_fenced`](Self::report_fenced) once every
    /// lock is let go.
    pub(crate) fn expire_all(&self) -> Fenced {
        let _one_at_a_time = self.clearing.lock();
        self.regions.expire_global();
        let clears = self.regions.clears();
        if !is_fence(clears) {
            return Fenced::default();
        }
        self.flights.wait_for_every_shard();
        let now = self.clock.now();
        // The purger's own test: every entry from an older count is dead (and not kept).
        let removed = self.cache.sweep_all(|entry| !entry.is_kept_at(now, clears));
        Fenced { clears, removed }
    }

    /// Counts and reports the entries a fence removed as a purge pass does: expirations,
    /// each reported with the cause `removal_cause` gives it at the fence's own count
    /// (`Invalidated`), whatever clears ran since.
    pub(crate) fn report_fenced(&self, Fenced { clears, removed }: Fenced) {
        if removed.is_empty() {
            return;
        }
        let now = self.clock.now();
        tracing::debug!(
            removed = removed.len(),
            clears,
            "a clear's wrap fence removed every entry from before it"
        );
        self.stats.add(Counter::Expirations, removed.len() as u64);
        for (key, entry) in removed {
            if self.listener.is_some() {
                let cause = entry.removal_cause(now, clears, RemovalCause::Expired);
                drop(entry);
                self.report_one(key, cause);
            }
        }
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::{Store, StoreOptions};

    #[test]
    fn bits_come_round_at_2_32_and_fences_fall_on_multiples_of_2_31() {
        assert_eq!(bits_of(5), 5);
        assert_eq!(bits_of(5 + (1 << 32)), 5, "32 bits: the same again at 2^32");
        assert_ne!(bits_of(5 + FENCE_EVERY), 5);
        assert!(is_fence(FENCE_EVERY) && is_fence(2 * FENCE_EVERY));
        assert!(!is_fence(FENCE_EVERY - 1) && !is_fence(FENCE_EVERY + 1));
    }

    /// Moves the count as `count` clears in a row would (one expiry counted as that many),
    /// never onto a fence: only a clear crosses one.
    fn skip_clears(store: &Store, count: u64) {
        let regions = store.regions();
        let now = regions.clears();
        let next_fence = (now / FENCE_EVERY + 1) * FENCE_EVERY;
        assert!(
            now + count < next_fence,
            "a skip must stop short of the fence"
        );
        regions.expire_global_as_many(count);
    }

    /// Moves the count to one short of the next fence.
    fn skip_to_fence(store: &Store) {
        let now = store.regions().clears();
        let next_fence = (now / FENCE_EVERY + 1) * FENCE_EVERY;
        if next_fence - 1 > now {
            skip_clears(store, next_fence - 1 - now);
        }
    }

    /// [`Store::clear`] without its purge request: the purger, which would sweep dead entries
    /// too, is left out, so whatever is removed here the fence removed.
    fn clear_unpurged(store: &Store) {
        let fenced = store.inner.expire_all();
        store.inner.report_fenced(fenced);
    }

    /// From count `recorded` to `recorded + 2^32` (the same 32 bits), crossing the two
    /// fences in between with clears.
    fn clear_round_to(store: &Store, recorded: u64) {
        skip_to_fence(store);
        clear_unpurged(store);
        skip_to_fence(store);
        clear_unpurged(store);
        let target = recorded + (1 << 32);
        let now = store.regions().clears();
        if now < target {
            if target - 1 > now {
                skip_clears(store, target - 1 - now);
            }
            clear_unpurged(store);
        }
        assert_eq!(store.regions().clears(), target);
    }

    #[test]
    fn an_entry_is_never_served_again_when_its_bits_come_round() {
        let store = Store::new(StoreOptions::default()).unwrap();
        skip_clears(&store, 5);
        let key = Key::from_text("k");
        assert!(store.set(key.clone(), 7_u32));
        assert_eq!(store.get::<u32>(&key).unwrap().as_deref(), Some(&7));
        // No read until the end: a read that finds the entry dead removes it itself.
        clear_round_to(&store, 5);
        assert_eq!(
            store.get::<u32>(&key).unwrap(),
            None,
            "an entry from 2^32 clears ago read as live"
        );
        assert!(store.set(key.clone(), 8_u32));
        assert_eq!(store.get::<u32>(&key).unwrap().as_deref(), Some(&8));
    }

    #[test]
    fn fail_safe_never_serves_a_value_from_before_the_clears() {
        let (clock, mock) = quanta::Clock::mock();
        let store = Store::with_clock(StoreOptions::default(), clock).unwrap();
        let kept = |key: &str, value: u32| {
            store.set_with(Key::from_text(key), value, |entry| {
                entry
                    .time_to_live(Duration::from_secs(1))
                    .fail_safe_max_duration(Duration::from_secs(3_600));
            })
        };
        let failing = |key: &str| {
            store.get_or_create_sync(&Key::from_text(key), |_| {
                Err::<u32, _>(std::io::Error::other("source down"))
            })
        };
        assert!(kept("old", 7));
        let recorded = store.regions().clears();
        clear_round_to(&store, recorded);
        assert!(kept("new", 8));
        mock.increment(Duration::from_secs(2));
        assert_eq!(
            failing("new").map(|v| *v).ok(),
            Some(8),
            "an entry kept past its time is served in place of a failed load"
        );
        assert!(
            failing("old").is_err(),
            "fail-safe served an entry from 2^32 clears ago"
        );
    }

    #[test]
    fn a_fence_removes_every_entry_from_before_it_before_the_clear_returns() {
        let removed = Arc::new(Mutex::new(Vec::new()));
        let listened = Arc::clone(&removed);
        let store = Store::with_removal_listener(StoreOptions::default(), move |key, cause| {
            listened.lock().unwrap().push((key.clone(), cause));
        })
        .unwrap();
        let (a, b) = (Key::from_text("a"), Key::from_text("b"));
        assert!(store.set(a.clone(), 1_u32));
        skip_to_fence(&store);
        assert!(
            store.set(b.clone(), 2_u32),
            "stored one clear before the fence"
        );
        assert_eq!(store.len(), 2);
        store.clear();
        assert_eq!(store.regions().clears(), FENCE_EVERY);
        assert_eq!(store.len(), 0, "the fence swept before the clear returned");
        let mut reported = removed.lock().unwrap().clone();
        reported.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            reported,
            vec![
                (a.clone(), RemovalCause::Invalidated),
                (b, RemovalCause::Invalidated)
            ]
        );
        assert!(store.stats().expirations >= 2);
        assert!(
            store.set(a.clone(), 3_u32),
            "stored at the fence's own count"
        );
        assert_eq!(store.get::<u32>(&a).unwrap().as_deref(), Some(&3));
    }

    /// Claim (a) with real threads: sets, loads and fail-safe re-arms racing a fence (and a
    /// second clear right behind it) leave no entry from before the fence. Each key is
    /// written once, so nothing overwrites a survivor; a survivor would record the count one
    /// short of the fence. The hook then moves the count to that count plus 2^32 (the same
    /// bits) without sweeping, where a read would serve it.
    #[test]
    fn inserts_racing_a_fence_leave_nothing_from_before_it() {
        use std::sync::Barrier;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const ROUNDS: usize = 200;
        const KEYS: usize = 256;
        const CLEARERS: usize = 2;
        let keys = |prefix: &str| -> Vec<Key> {
            (0..KEYS)
                .map(|i| Key::from_text(format!("{prefix}{i}")))
                .collect()
        };
        let (set_keys, load_keys, kept_keys) = (keys("s"), keys("l"), keys("k"));
        for round in 0..ROUNDS {
            // No purger pass in a round (a clear here does not request one): it could remove
            // a survivor before the check, and hide it.
            let options = StoreOptions {
                purge_interval: Duration::from_secs(3_600),
                ..StoreOptions::default()
            };
            let (clock, mock) = quanta::Clock::mock();
            let store = Store::with_clock(options, clock).unwrap();
            skip_to_fence(&store);
            let short_of_fence = store.regions().clears();
            // Expired, kept for fail-safe: a failed load re-arms each (a copy, inserted).
            for key in &kept_keys {
                assert!(store.set_with(key.clone(), 3_u32, |entry| {
                    entry
                        .time_to_live(Duration::from_secs(1))
                        .fail_safe_max_duration(Duration::from_secs(3_600));
                }));
            }
            mock.increment(Duration::from_secs(2));
            let barrier = Barrier::new(3 + CLEARERS);
            // Keys written so far: the clears start once a third of them are.
            let written = AtomicUsize::new(0);
            std::thread::scope(|threads| {
                threads.spawn(|| {
                    barrier.wait();
                    for key in &set_keys {
                        store.set(key.clone(), 1_u32);
                        written.fetch_add(1, Ordering::Release);
                    }
                });
                threads.spawn(|| {
                    barrier.wait();
                    for key in &load_keys {
                        let loaded =
                            store.get_or_create_sync(key, |_| Ok::<_, std::io::Error>(2_u32));
                        assert!(loaded.is_ok());
                        written.fetch_add(1, Ordering::Release);
                    }
                });
                threads.spawn(|| {
                    barrier.wait();
                    for key in &kept_keys {
                        // Served the kept value before the fence, an error after it.
                        let _ = store.get_or_create_sync(key, |_| {
                            Err::<u32, _>(std::io::Error::other("source down"))
                        });
                        written.fetch_add(1, Ordering::Release);
                    }
                });
                for _ in 0..CLEARERS {
                    threads.spawn(|| {
                        barrier.wait();
                        while written.load(Ordering::Acquire) < KEYS {
                            std::thread::yield_now();
                        }
                        clear_unpurged(&store);
                    });
                }
            });
            assert_eq!(store.regions().clears(), short_of_fence + CLEARERS as u64);
            assert!(
                store.regions().clears() > FENCE_EVERY,
                "the fence was crossed"
            );
            // The same 32 bits as the count one short of the fence, with no sweep on the way.
            store
                .regions()
                .expire_global_as_many((1 << 32) - CLEARERS as u64);
            assert_eq!(bits_of(store.regions().clears()), bits_of(short_of_fence));
            for key in set_keys.iter().chain(&load_keys).chain(&kept_keys) {
                assert_eq!(
                    store.get::<u32>(key).unwrap(),
                    None,
                    "round {round}: {key:?}, stored before the fence, outlived it"
                );
            }
        }
    }

    #[test]
    fn a_load_that_spans_a_wrap_is_returned_but_not_stored() {
        let store = Store::new(StoreOptions::default()).unwrap();
        let inside = store.clone();
        let key = Key::from_text("k");
        let start = store.regions().clears();
        let value = store
            .get_or_create_sync(&key, |_| {
                clear_round_to(&inside, start);
                Ok::<_, std::io::Error>(7_u32)
            })
            .unwrap();
        assert_eq!(*value, 7, "its caller gets the value");
        assert_eq!(
            store.len(),
            0,
            "but its whole start count is not the current one"
        );
    }
}
