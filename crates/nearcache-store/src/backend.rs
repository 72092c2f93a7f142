//! The quick_cache instance under the store: how entries are weighed, how evictions are
//! counted, and how big one entry may be.

use std::sync::Arc;

use nearcache_keys::Key;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use crate::entry::StoredEntry;
use crate::error::OptionsError;
use crate::hash::KeyHashBuilder;
use crate::options::Sizing;
use crate::stats::{Counter, Stats};

/// quick_cache admits an entry only if it fits this share of its shard ("hot" allocation).
/// Set explicitly so that [`max_entry_weight`] computes the same limit quick_cache applies.
const HOT_ALLOCATION: f64 = 0.97;

/// The underlying cache.
pub(crate) type Backend = Cache<Key, StoredEntry, EntryWeighter, KeyHashBuilder, EvictionCounter>;

/// Weighs an entry by the weight it was stored with (1 unless the store has a budget).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryWeighter;

impl Weighter<Key, StoredEntry> for EntryWeighter {
    #[inline]
    fn weight(&self, _key: &Key, entry: &StoredEntry) -> u64 {
        u64::from(entry.weight())
    }
}

/// Counts capacity evictions, and drops evicted entries after the shard lock is released
/// (like quick_cache's default lifecycle).
#[derive(Clone)]
pub(crate) struct EvictionCounter(Arc<Stats>);

impl Lifecycle<Key, StoredEntry> for EvictionCounter {
    type RequestState = [Option<(Key, StoredEntry)>; 2];

    #[inline]
    fn on_evict(&self, state: &mut Self::RequestState, key: Key, entry: StoredEntry) {
        self.0.incr(Counter::Evictions);
        if let Some(slot) = state.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some((key, entry));
        }
    }
}

/// Builds the cache for `sizing`.
pub(crate) fn build(
    sizing: Sizing,
    shards: Option<usize>,
    stats: Arc<Stats>,
) -> Result<Backend, OptionsError> {
    let mut builder = OptionsBuilder::new();
    builder
        .estimated_items_capacity(sizing.estimated_entries)
        .weight_capacity(sizing.weight_capacity)
        .hot_allocation(HOT_ALLOCATION);
    if let Some(shards) = shards {
        builder.shards(shards);
    }
    let options = builder
        .build()
        .map_err(|error| OptionsError::Cache(error.to_string()))?;
    Ok(Cache::with_options(
        options,
        EntryWeighter,
        KeyHashBuilder,
        EvictionCounter(stats),
    ))
}

/// The heaviest entry `cache` admits: the hot share of one shard, as quick_cache computes it.
pub(crate) fn max_entry_weight(cache: &Backend) -> u64 {
    let shard = cache.shard_capacity();
    ((shard as f64 * HOT_ALLOCATION) as u64).clamp(shard.min(1), shard)
}
