//! The storage under the store: quick_cache's single-threaded cache, sharded behind read-write
//! locks, with how entries are weighed, how evictions are counted, and how big one entry may
//! be.
//!
//! Why not `quick_cache::sync::Cache`, which is exactly this inside? Its `get` hands out an
//! owned clone of the stored value, so every hit would clone the whole entry record (its
//! tokens, deadlines and value) only to check it and drop it again. Owning the shards lets a
//! hit *read* the entry in place under the shard's read lock ([`Backend::read`]) and clone
//! nothing but the value it returns: the same reference-count traffic as a raw quick_cache
//! read. The store needs nothing else from the sync cache: it has its own single-flight table.
//! Shards are picked from the key's precomputed hash as quick_cache picks them.

use nearcache_keys::Key;
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use quick_cache::unsync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::entry::StoredEntry;
use crate::error::OptionsError;
use crate::hash::KeyHashBuilder;
use crate::options::Sizing;
use crate::stats::{Counter, Stats};

/// quick_cache admits an entry only if it fits this share of its shard ("hot" allocation).
/// Set explicitly so that [`Backend::max_entry_weight`] computes the same limit quick_cache
/// applies.
const HOT_ALLOCATION: f64 = 0.97;

/// How many dead entries a sweep removes per hold of a shard's write lock (a few
/// microseconds: the longest a reader of that shard waits for the purger).
const SWEEP_BATCH: usize = 64;

/// How many candidates one read-locked scan of a shard collects at most (bounds the memory
/// of a sweep after a `clear`, when every entry is dead).
const SWEEP_SCAN: usize = 4_096;

/// Each shard should hold at least this many entries (quick_cache's own rule): fewer shards
/// for small stores.
const MIN_SHARD_ENTRIES: u64 = 32;

type Shard = Cache<Key, StoredEntry, EntryWeighter, KeyHashBuilder, EvictionCounter>;

/// The entries one insert took out — evicted for room, and (when asked for) the one it
/// replaced — handed to the caller so that they are dropped, and reported to a removal
/// listener, once the shard's lock is released.
#[derive(Default)]
pub(crate) struct Evicted {
    /// The first two evictions, inline (an insert rarely evicts more).
    first: [Option<(Key, StoredEntry)>; 2],
    more: Vec<(Key, StoredEntry)>,
    /// The entry the insert replaced (only collected when asked for).
    pub(crate) replaced: Option<(Key, StoredEntry)>,
}

impl Evicted {
    fn push(&mut self, evicted: (Key, StoredEntry)) {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(evicted),
            None => self.more.push(evicted),
        }
    }

    /// The evicted entries (not the replaced one).
    pub(crate) fn evictions(self) -> impl Iterator<Item = (Key, StoredEntry)> {
        let [a, b] = self.first;
        a.into_iter().chain(b).chain(self.more)
    }
}

/// The sharded cache the store keeps its entries in.
pub(crate) struct Backend {
    shards: Box<[RwLock<Shard>]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: u64,
    /// The weight budget of one shard.
    shard_capacity: u64,
}

/// Weighs an entry by the weight it was stored with (1 unless the store has a budget).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryWeighter;

impl Weighter<Key, StoredEntry> for EntryWeighter {
    #[inline]
    fn weight(&self, _key: &Key, entry: &StoredEntry) -> u64 {
        u64::from(entry.weight())
    }
}

/// Counts capacity evictions, and keeps evicted entries so that they are dropped (and
/// reported) after the shard lock is released.
#[derive(Clone)]
pub(crate) struct EvictionCounter(Arc<Stats>);

impl Lifecycle<Key, StoredEntry> for EvictionCounter {
    type RequestState = Evicted;

    #[inline]
    fn on_evict(&self, state: &mut Self::RequestState, key: Key, entry: StoredEntry) {
        self.0.incr(Counter::Evictions);
        state.push((key, entry));
    }
}

impl Backend {
    /// Builds the shards for `sizing`: `shards` of them (default 4 × cores), rounded up to a
    /// power of two, then halved while a shard would hold fewer than 32 entries.
    pub(crate) fn build(
        sizing: Sizing,
        shards: Option<usize>,
        stats: Arc<Stats>,
    ) -> Result<Backend, OptionsError> {
        let requested = shards.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(4, |cores| cores.get() * 4)
        });
        let mut count = u64::try_from(requested.max(1).next_power_of_two()).unwrap_or(1 << 16);
        let estimated = u64::try_from(sizing.estimated_entries).unwrap_or(u64::MAX);
        let per_shard = |total: u64, count: u64| total.saturating_add(count - 1) / count;
        while per_shard(estimated, count) < MIN_SHARD_ENTRIES && count > 1 {
            count /= 2;
        }
        let shard_capacity = per_shard(sizing.weight_capacity, count);
        let items = usize::try_from(per_shard(estimated, count)).unwrap_or(usize::MAX);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(shard_capacity)
            .hot_allocation(HOT_ALLOCATION)
            .shards(1)
            .build()
            .map_err(|error| OptionsError::Cache(error.to_string()))?;
        let lifecycle = EvictionCounter(stats);
        let shards = (0..count)
            .map(|_| {
                RwLock::new(Cache::with_options(
                    options.clone(),
                    EntryWeighter,
                    KeyHashBuilder,
                    lifecycle.clone(),
                ))
            })
            .collect();
        Ok(Backend {
            shards,
            mask: count - 1,
            shard_capacity,
        })
    }

    #[inline(always)]
    fn shard(&self, key: &Key) -> &RwLock<Shard> {
        // The middle bits of the hash, as quick_cache does: hashbrown inside the shard uses
        // the low bits and the top seven.
        let hash = KeyHashBuilder.hash_one(key);
        let index = (hash.rotate_right(usize::BITS / 2) & self.mask) as usize;
        // `mask` is the number of shards minus one, so the index is always in range.
        &self.shards[index]
    }

    /// Calls `f` with the entry under `key`, in place, under the shard's read lock (marking
    /// it recently used). `f` must be quick: writers to this shard wait for it.
    #[inline(always)]
    pub(crate) fn read<R>(&self, key: &Key, f: impl FnOnce(&StoredEntry) -> R) -> Option<R> {
        self.read_guard(key).map(|entry| f(&entry))
    }

    /// The entry under `key`, in place, behind the shard's read lock (marking it recently
    /// used): the hit path reads through it without a closure frame. Hold it briefly:
    /// writers to this shard wait for it.
    #[inline(always)]
    pub(crate) fn read_guard(&self, key: &Key) -> Option<MappedRwLockReadGuard<'_, StoredEntry>> {
        RwLockReadGuard::try_map(self.shard(key).read(), |shard| shard.get(key)).ok()
    }

    /// Stores `entry` under `key`, replacing what was there; may evict others. Returns the
    /// evicted entries, and with `take_replaced` the replaced one (one more lookup, paid only
    /// when a removal listener wants it), for the caller to drop outside this lock.
    pub(crate) fn insert(&self, key: Key, entry: StoredEntry, take_replaced: bool) -> Evicted {
        let mut evicted = Evicted::default();
        let mut shard = self.shard(&key).write();
        if take_replaced {
            evicted.replaced = shard.remove(&key);
        }
        shard.insert_with_lifecycle(key, entry, &mut evicted);
        drop(shard);
        evicted
    }

    /// Removes `key`'s entry, returning it (dropped by the caller, outside the lock).
    pub(crate) fn remove(&self, key: &Key) -> Option<(Key, StoredEntry)> {
        self.shard(key).write().remove(key)
    }

    /// Removes `key`'s entry if `f` says so.
    pub(crate) fn remove_if(
        &self,
        key: &Key,
        f: impl FnOnce(&StoredEntry) -> bool,
    ) -> Option<(Key, StoredEntry)> {
        self.shard(key).write().remove_if(key, f)
    }

    /// Keeps only the entries `f` accepts, one shard at a time, each under its write lock
    /// for the whole shard (tests only: the purger uses [`sweep`](Self::sweep)).
    #[cfg(all(test, not(shuttle)))]
    pub(crate) fn retain(&self, f: impl Fn(&Key, &StoredEntry) -> bool) {
        for shard in &self.shards {
            shard.write().retain(&f);
        }
    }

    /// Removes the entries `dead` accepts; returns how many. The write lock is held for
    /// [`SWEEP_BATCH`] removals at a time: each shard is scanned under its *read* lock (readers
    /// share it), which collects at most [`SWEEP_SCAN`] candidates, and they are removed in
    /// batches under the write lock, each re-checked there (a live entry stored meanwhile
    /// stays). Removed entries are dropped after the lock is released. A shard is scanned
    /// again while its last scan filled up; entries that move during a scan may be missed
    /// until the next sweep (they are never returned: reads check liveness themselves).
    ///
    /// Limit: a writer to a shard (an insert, a `remove`) waits for a scan of that shard in
    /// progress, up to a whole shard's entries, and with `parking_lot`'s fair lock readers
    /// arriving after that writer wait behind it. Readers alone never wait for a scan.
    ///
    /// `removed_entry` gets each removed entry, outside the lock.
    pub(crate) fn sweep(
        &self,
        dead: impl Fn(&StoredEntry) -> bool,
        mut removed_entry: impl FnMut(Key, StoredEntry),
    ) -> usize {
        let mut removed = 0;
        let mut candidates: Vec<Key> = Vec::new();
        for shard in &self.shards {
            loop {
                candidates.clear();
                candidates.extend(
                    shard
                        .read()
                        .iter()
                        .filter(|(_, entry)| dead(entry))
                        .take(SWEEP_SCAN)
                        .map(|(key, _)| key.clone()),
                );
                for batch in candidates.chunks(SWEEP_BATCH) {
                    let mut dropped = Vec::with_capacity(batch.len());
                    {
                        let mut guard = shard.write();
                        dropped.extend(batch.iter().filter_map(|key| guard.remove_if(key, &dead)));
                    }
                    removed += dropped.len();
                    for (key, entry) in dropped {
                        removed_entry(key, entry);
                    }
                }
                if candidates.len() < SWEEP_SCAN {
                    break;
                }
            }
        }
        removed
    }

    /// Removes every entry `dead` accepts, each shard under its write lock for the whole of
    /// its scan, so that no entry can move out of the scan's way (unlike
    /// [`sweep`](Self::sweep), which may miss one): every entry held from start to end is
    /// looked at. For the wrap fence, once every 2^31 clears (see `clears`). Returns the
    /// removed entries, to be dropped once the caller has let go of its own locks.
    pub(crate) fn sweep_all(&self, dead: impl Fn(&StoredEntry) -> bool) -> Vec<(Key, StoredEntry)> {
        let mut removed = Vec::new();
        for shard in &self.shards {
            let mut guard = shard.write();
            let keys: Vec<Key> = guard
                .iter()
                .filter(|(_, entry)| dead(entry))
                .map(|(key, _)| key.clone())
                .collect();
            removed.extend(keys.iter().filter_map(|key| guard.remove_if(key, &dead)));
        }
        removed
    }

    /// Entries held (each shard counted at a slightly different moment).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.read().is_empty())
    }

    /// Total weight held.
    pub(crate) fn weight(&self) -> u64 {
        self.shards.iter().map(|shard| shard.read().weight()).sum()
    }

    /// Total weight budget.
    pub(crate) fn capacity(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.read().capacity())
            .sum()
    }

    /// The heaviest entry a shard admits: its hot share, as quick_cache computes it.
    pub(crate) fn max_entry_weight(&self) -> u64 {
        let shard = self.shard_capacity;
        ((shard as f64 * HOT_ALLOCATION) as u64).clamp(shard.min(1), shard)
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::{StoreClock, StoreInstant};
    use crate::entry::{EntryDefaults, EntryOptions};
    use crate::value::Payload;
    use nearcache_regions::Regions;

    /// A clock that reads 0 until told otherwise.
    fn mock_clock() -> StoreClock {
        StoreClock::new(quanta::Clock::mock().0)
    }

    fn sizing(entries: u64) -> Sizing {
        Sizing {
            weight_capacity: entries,
            estimated_entries: usize::try_from(entries).unwrap(),
            weighted: false,
        }
    }

    fn entry(regions: &Arc<Regions>, key: &Key) -> StoredEntry {
        let defaults = EntryDefaults::default();
        EntryOptions::new(key.clone(), Arc::clone(regions))
            .into_stored(
                Payload::value(Arc::new(1_u8)),
                regions.clears(),
                &mock_clock(),
                &defaults,
            )
            .unwrap()
    }

    #[test]
    fn small_stores_get_fewer_shards_of_at_least_32_entries() {
        let stats = Arc::new(Stats::new());
        let tiny = Backend::build(sizing(100), Some(64), Arc::clone(&stats)).unwrap();
        assert_eq!(tiny.shards.len(), 2, "100 entries: two shards of 50");
        let one = Backend::build(sizing(10), Some(64), Arc::clone(&stats)).unwrap();
        assert_eq!(one.shards.len(), 1);
        let big = Backend::build(sizing(1_000_000), Some(6), stats).unwrap();
        assert_eq!(big.shards.len(), 8, "rounded up to a power of two");
        assert_eq!(big.capacity(), 1_000_000);
    }

    #[test]
    fn entries_are_read_in_place_removed_and_evicted_with_a_count() {
        let stats = Arc::new(Stats::new());
        let backend = Backend::build(sizing(64), Some(1), Arc::clone(&stats)).unwrap();
        let regions = Arc::new(Regions::new());
        let key = Key::from_text("k");
        drop(backend.insert(key.clone(), entry(&regions, &key), false));
        assert_eq!(backend.read(&key, StoredEntry::weight), Some(1));
        assert_eq!(backend.len(), 1);
        assert!(backend.remove_if(&key, |_| false).is_none());
        assert!(backend.remove(&key).is_some());
        assert!(backend.is_empty());
        for i in 0..1_000 {
            let key = Key::from_text(format!("k{i}"));
            drop(backend.insert(key.clone(), entry(&regions, &key), false));
        }
        assert!(backend.len() <= 64);
        assert!(stats.snapshot().evictions >= 1_000 - 64);
        backend.retain(|_, _| false);
        assert_eq!((backend.len(), backend.weight()), (0, 0));
    }

    /// One heavy insert evicts many entries: every one is handed back (so each is dropped,
    /// and reported, outside the lock), not only the first two; and the replaced entry only
    /// when asked for.
    #[test]
    fn an_insert_hands_back_every_entry_it_evicted_and_the_one_it_replaced() {
        let stats = Arc::new(Stats::new());
        let sizing = Sizing {
            weight_capacity: 64,
            estimated_entries: 64,
            weighted: true,
        };
        let backend = Backend::build(sizing, Some(1), Arc::clone(&stats)).unwrap();
        let regions = Arc::new(Regions::new());
        let defaults = EntryDefaults {
            weighted: true,
            ..EntryDefaults::default()
        };
        let weighing = |key: &Key, weight: u32| {
            let mut entry = EntryOptions::new(key.clone(), Arc::clone(&regions));
            entry.weight(weight);
            entry
                .into_stored(Payload::value(Arc::new(1_u8)), 0, &mock_clock(), &defaults)
                .unwrap()
        };
        for i in 0..60 {
            let key = Key::from_text(format!("k{i}"));
            assert!(
                backend
                    .insert(key.clone(), weighing(&key, 1), false)
                    .evictions()
                    .next()
                    .is_none()
            );
        }
        let heavy = Key::from_text("heavy");
        let evicted: Vec<Key> = backend
            .insert(heavy.clone(), weighing(&heavy, 60), false)
            .evictions()
            .map(|(key, _)| key)
            .collect();
        assert!(evicted.len() > 2, "{} evicted", evicted.len());
        assert_eq!(evicted.len() as u64, stats.snapshot().evictions);
        let again = backend.insert(heavy.clone(), weighing(&heavy, 60), true);
        assert_eq!(again.replaced.map(|(key, _)| key), Some(heavy));
    }

    #[test]
    fn a_sweep_removes_exactly_the_dead_entries_over_several_scans() {
        let stats = Arc::new(Stats::new());
        // More dead entries per shard than one scan collects: the sweep must rescan.
        let n = 6 * SWEEP_SCAN + 17;
        let backend = Backend::build(sizing(2 * n as u64), Some(2), Arc::clone(&stats)).unwrap();
        let regions = Arc::new(Regions::new());
        let defaults = EntryDefaults::default();
        let keys: Vec<Key> = (0..n).map(|i| Key::from_text(format!("k{i}"))).collect();
        for (i, key) in keys.iter().enumerate() {
            let mut tied = EntryOptions::new(key.clone(), Arc::clone(&regions));
            if i % 3 != 0 {
                tied.region_by_name("doomed").unwrap();
            }
            let stored = tied
                .into_stored(Payload::value(Arc::new(i)), 0, &mock_clock(), &defaults)
                .unwrap();
            drop(backend.insert(key.clone(), stored, false));
        }
        regions.expire_region("doomed").unwrap();
        let epoch = regions.clears();
        let removed = backend.sweep(
            |entry| !entry.is_live_at(StoreInstant::from_raw(0), epoch),
            |_, _| {},
        );
        let survivors = n.div_ceil(3);
        assert_eq!(removed, n - survivors);
        assert_eq!(backend.len(), survivors);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(backend.read(key, |_| ()).is_some(), i % 3 == 0, "key {i}");
        }
        assert_eq!(
            backend.sweep(
                |entry| !entry.is_live_at(StoreInstant::from_raw(0), epoch),
                |_, _| {}
            ),
            0
        );
    }
}
