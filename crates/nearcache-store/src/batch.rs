//! Batch get-or-create: many keys, one factory call for the ones nobody has.
//!
//! A service that reads a page of items by id wants one query for the ids it misses, not
//! one per id, and still every guarantee of single-key loads. So a batch is not a new kind
//! of load: it is one single-key flight per key, led together.
//!
//! - Each requested key goes through the flight table exactly as a single-key caller would
//!   ([`StoreInner::acquire`]): a live entry is a hit; a load in progress (single-key or
//!   another batch's) is joined; otherwise this caller leads a new flight for it.
//! - The factory is called once with every key this caller leads ([`BatchEntries`]), each
//!   with its own [`EntryOptions`] for its expiry and regions. Each key's value then ends its own
//!   flight through the single-key leader's check-then-insert, so the no-stale-insert rule
//!   and the late-caller rule hold per key: an invalidation of one key keeps that key's value
//!   out and stores the others.
//! - Only then does the caller wait for the flights it joined. Leading first and waiting
//!   after means no batch ever waits while it holds a flight others wait for, so batches
//!   that overlap in any order cannot wait for each other in a cycle.
//! - A joined flight may end without a value this caller can take (its leader panicked or
//!   was dropped, or an invalidation made it stale for this caller): such keys go round
//!   again, and a further factory call loads those that are still missing. That is the only
//!   time the factory runs more than once, which is why it is an `FnMut`.
//!
//! A key the factory leaves out of its result is a `None`: stored as a negative entry when
//! `cache_none` is on, like an `_optional` loader's `Ok(None)`; a negative entry found in
//! the store is a hit that reads as `None`. A factory error ends every flight this call led
//! with that one error (`Arc::ptr_eq` for all their waiters) and the call returns it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use nearcache_keys::Key;

use crate::entry::EntryOptions;
use crate::error::{LoadError, WouldDeadlock};
use crate::flight::{Flight, LeaderKind, Outcome};
use crate::load::{Acquired, Leader, resolve};
use crate::stats::Counter;
use crate::store::{Store, StoreInner};

/// What a batch caller asks each key for: a value, or `None` (left out by the factory).
type Item<T> = Option<Arc<T>>;

/// The keys a batch factory must load, each with the [`EntryOptions`] its value will be stored
/// with.
///
/// The factory loads [`keys`](Self::keys) and returns `(key, value)` pairs; before it
/// returns it may set each key's expiry and regions through [`entry`](Self::entry) (or
/// all of them through [`entries_mut`](Self::entries_mut)). Entries it leaves alone get the
/// store's defaults.
///
/// ```
/// use std::time::Duration;
/// use nearcache_keys::Key;
/// use nearcache_regions::region;
/// use nearcache_store::{BatchEntries, Store, StoreOptions};
///
/// region!(Catalog = "catalog");
/// let store = Store::new(StoreOptions::default())?;
/// let keys = [Key::from_text("product-1"), Key::from_text("product-2")];
/// let found = store.get_or_create_many_sync(&keys, |batch: &mut BatchEntries| {
///     for entry in batch.entries_mut() {
///         entry.time_to_live(Duration::from_secs(60));
///     }
///     let first = Key::from_text("product-1");
///     if let Some(entry) = batch.entry(&first) {
///         entry.region_key::<Catalog>("shoes");
///     }
///     // product-2 does not exist: it is left out, and cached as a `None`.
///     Ok::<_, std::io::Error>(vec![(first, String::from("boot"))])
/// })?;
/// assert_eq!(found[&keys[0]].as_deref().map(String::as_str), Some("boot"));
/// assert!(found[&keys[1]].is_none());
/// store.expire_region_key::<Catalog>("shoes");
/// assert!(store.get::<String>(&keys[0])?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BatchEntries {
    entries: Vec<EntryOptions>,
    index: HashMap<Key, usize>,
}

impl BatchEntries {
    fn new(entries: Vec<EntryOptions>) -> Self {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| (entry.key().clone(), i))
            .collect();
        BatchEntries { entries, index }
    }

    /// The keys to load: neither cached nor being loaded by anyone else, each once.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Key> + '_ {
        self.entries.iter().map(EntryOptions::key)
    }

    /// How many keys to load (never zero: the factory is not called for none).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no key to load.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry options of `key`, or `None` when `key` is not one of [`keys`](Self::keys).
    pub fn entry(&mut self, key: &Key) -> Option<&mut EntryOptions> {
        let i = *self.index.get(key)?;
        self.entries.get_mut(i)
    }

    /// Every key's entry options, in the order of [`keys`](Self::keys).
    pub fn entries_mut(&mut self) -> impl ExactSizeIterator<Item = &mut EntryOptions> + '_ {
        self.entries.iter_mut()
    }
}

impl fmt::Debug for BatchEntries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEntries")
            .field("keys", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// A flight this batch joined: waited for after the batch's own loads are done.
struct Joined {
    key: Key,
    flight: Arc<Flight>,
    joined_at: u64,
}

/// One pass of a batch over the keys it still needs.
struct Round<'a> {
    leaders: Vec<Leader<'a>>,
    joined: Vec<Joined>,
}

/// The requested keys in first-seen order, each once.
fn distinct(keys: impl IntoIterator<Item = Key>) -> Vec<Key> {
    let mut seen = HashSet::new();
    keys.into_iter()
        .filter(|key| seen.insert(key.clone()))
        .collect()
}

/// Every key's value, or the error of the first key (in request order) that failed.
fn collect<T, E>(
    order: &[Key],
    mut results: HashMap<Key, Result<Item<T>, LoadError<E>>>,
) -> Result<HashMap<Key, Item<T>>, LoadError<E>> {
    let mut values = HashMap::with_capacity(order.len());
    for key in order {
        if let Some(result) = results.remove(key) {
            values.insert(key.clone(), result?);
        }
    }
    Ok(values)
}

impl StoreInner {
    /// Sorts `keys` into hits (recorded in `results`), flights to join and flights to lead.
    /// Hits and misses are counted on the first round only (later rounds retry keys already
    /// counted).
    fn batch_round<T: Send + Sync + 'static, E>(
        &self,
        keys: Vec<Key>,
        bypass: bool,
        kind: LeaderKind,
        first: bool,
        results: &mut HashMap<Key, Result<Item<T>, LoadError<E>>>,
    ) -> Round<'_> {
        let mut round = Round {
            leaders: Vec::new(),
            joined: Vec::new(),
        };
        for key in keys {
            let acquired = self.acquire::<Item<T>>(&key, bypass, kind);
            let counter = match &acquired {
                Acquired::Hit(_) => Counter::Hits,
                Acquired::Wait { .. } | Acquired::Lead(_) => Counter::Misses,
            };
            if first {
                self.stats.incr(counter);
            }
            match acquired {
                Acquired::Hit(hit) => {
                    results.insert(key, hit.map_err(LoadError::TypeMismatch));
                }
                Acquired::Wait { flight, joined_at } => round.joined.push(Joined {
                    key,
                    flight,
                    joined_at,
                }),
                Acquired::Lead(leader) => round.leaders.push(leader),
            }
        }
        round
    }

    /// The entries the factory fills in for `leaders`, counted as one batch load.
    fn batch_entries(&self, leaders: &[Leader<'_>]) -> BatchEntries {
        self.stats.incr(Counter::BatchLoads);
        self.stats
            .add(Counter::BatchKeysLoaded, leaders.len() as u64);
        BatchEntries::new(leaders.iter().map(Leader::entry).collect())
    }

    /// Ends every flight of `leaders` with the factory's result: each key's value (`None`
    /// when left out) through the single-key leader's check-then-insert, or the one error.
    fn finish_batch<T, E, I>(
        &self,
        leaders: Vec<Leader<'_>>,
        entries: BatchEntries,
        loaded: Result<I, E>,
        results: &mut HashMap<Key, Result<Item<T>, LoadError<E>>>,
    ) where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        I: IntoIterator<Item = (Key, T)>,
    {
        match loaded {
            Ok(values) => {
                let mut values: HashMap<Key, T> = values.into_iter().collect();
                for (leader, entry) in leaders.into_iter().zip(entries.entries) {
                    let key = leader.key().clone();
                    let value = values.remove(&key);
                    let result = leader.finish::<Item<T>, E>(entry, Ok(value));
                    results.insert(key, result);
                }
                if !values.is_empty() {
                    tracing::debug!(
                        extra = values.len(),
                        "a batch factory returned values for keys it was not asked for: ignored"
                    );
                }
            }
            Err(error) => {
                self.stats.incr(Counter::LoadErrors);
                let error = Arc::new(error);
                for leader in leaders {
                    let key = leader.key().clone();
                    results.insert(key, Err(leader.fail(Arc::clone(&error))));
                }
            }
        }
    }

    /// Entries for a disabled store's factory, which loads every key.
    fn detached_entries(&self, keys: &[Key]) -> BatchEntries {
        BatchEntries::new(
            keys.iter()
                .map(|key| EntryOptions::new(key.clone(), Arc::clone(&self.regions)))
                .collect(),
        )
    }

    /// A disabled store's result: every key was loaded, nothing is stored.
    fn batch_pass_through<T, E, I>(
        &self,
        keys: &[Key],
        loaded: Result<I, E>,
    ) -> Result<HashMap<Key, Item<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        I: IntoIterator<Item = (Key, T)>,
    {
        self.stats.add(Counter::Misses, keys.len() as u64);
        self.stats.add(Counter::Loads, keys.len() as u64);
        self.stats.incr(Counter::BatchLoads);
        self.stats.add(Counter::BatchKeysLoaded, keys.len() as u64);
        match loaded {
            Ok(values) => {
                let mut values: HashMap<Key, T> = values.into_iter().collect();
                Ok(keys
                    .iter()
                    .map(|key| (key.clone(), values.remove(key).map(Arc::new)))
                    .collect())
            }
            Err(error) => {
                self.stats.incr(Counter::LoadErrors);
                Err(LoadError::Factory(Arc::new(error)))
            }
        }
    }

    /// A joined key's `outcome` into `results`, or the key back into `todo` when the load it
    /// joined is stale for it (it joined after an expiry that load predates: load again).
    fn settle_joined<T, E>(
        &self,
        key: Key,
        outcome: &Outcome,
        flight: &Flight,
        joined_at: u64,
        results: &mut HashMap<Key, Result<Item<T>, LoadError<E>>>,
        todo: &mut Vec<Key>,
    ) where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        match resolve::<Item<T>, E>(outcome, flight, joined_at, &key, self.log_keys) {
            Some(result) => {
                results.insert(key, result);
            }
            None => todo.push(key),
        }
    }

    /// The async batch get-or-create.
    async fn load_many_async<T, E, F, I>(
        &self,
        keys: Vec<Key>,
        mut factory: F,
    ) -> Result<HashMap<Key, Item<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        let order = distinct(keys);
        if !self.enabled {
            if order.is_empty() {
                return Ok(HashMap::new());
            }
            let mut entries = self.detached_entries(&order);
            let loaded = factory(&mut entries).await;
            return self.batch_pass_through(&order, loaded);
        }
        let bypass = self.read_bypass();
        let mut results = HashMap::with_capacity(order.len());
        let mut todo = order.clone();
        let mut first = true;
        while !todo.is_empty() {
            let round =
                self.batch_round::<T, E>(todo, bypass, LeaderKind::Async, first, &mut results);
            first = false;
            if !round.leaders.is_empty() {
                let mut entries = self.batch_entries(&round.leaders);
                let loaded = factory(&mut entries).await;
                self.finish_batch(round.leaders, entries, loaded, &mut results);
            }
            todo = Vec::new();
            for joined in round.joined {
                let outcome = joined.flight.wait().await;
                self.settle_joined(
                    joined.key,
                    outcome,
                    &joined.flight,
                    joined.joined_at,
                    &mut results,
                    &mut todo,
                );
            }
            if results.values().any(Result::is_err) {
                break;
            }
        }
        collect(&order, results)
    }

    /// The blocking batch get-or-create.
    fn load_many_sync<T, E, F, I>(
        &self,
        keys: Vec<Key>,
        mut factory: F,
    ) -> Result<HashMap<Key, Item<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        let order = distinct(keys);
        if !self.enabled {
            if order.is_empty() {
                return Ok(HashMap::new());
            }
            let mut entries = self.detached_entries(&order);
            let loaded = factory(&mut entries);
            return self.batch_pass_through(&order, loaded);
        }
        let bypass = self.read_bypass();
        let mut results = HashMap::with_capacity(order.len());
        let mut todo = order.clone();
        let mut first = true;
        while !todo.is_empty() {
            let round =
                self.batch_round::<T, E>(todo, bypass, LeaderKind::Blocking, first, &mut results);
            first = false;
            if !round.leaders.is_empty() {
                let mut entries = self.batch_entries(&round.leaders);
                let loaded = factory(&mut entries);
                self.finish_batch(round.leaders, entries, loaded, &mut results);
            }
            todo = Vec::new();
            for joined in round.joined {
                let flight = &joined.flight;
                let outcome = crate::blocking::wait_blocking(|handed_off| {
                    if !handed_off && flight.led_async_on_this_thread() {
                        return None;
                    }
                    Some(flight.wait_blocking())
                });
                let Some(outcome) = outcome else {
                    let error = WouldDeadlock::new(&joined.key);
                    results.insert(joined.key, Err(LoadError::WouldDeadlock(error)));
                    continue;
                };
                self.settle_joined(
                    joined.key,
                    outcome,
                    flight,
                    joined.joined_at,
                    &mut results,
                    &mut todo,
                );
            }
            if results.values().any(Result::is_err) {
                break;
            }
        }
        collect(&order, results)
    }
}

impl Store {
    /// The values under `keys`, loading the missing ones with **one** call of `factory`.
    ///
    /// `factory` gets only the keys that are neither cached nor being loaded by another
    /// caller ([`BatchEntries::keys`]) and returns `(key, value)` pairs (a `Vec`, a
    /// `HashMap`, any iterator of them). Keys another caller is loading (a single-key
    /// get-or-create or another batch) are joined, not loaded again, so overlapping batches
    /// load each key once. Each loaded key is its own flight: single-key callers join it, it
    /// gets its own entry options through [`BatchEntries::entry`], and an invalidation of
    /// that key (`remove`, `set`, a region or sub-key expiry it is tied to, `clear`) during
    /// the load keeps that key's value out of the store — the callers that overlapped the
    /// invalidation still get it, callers that start afterwards load it again — while the
    /// other keys are stored.
    ///
    /// The result holds every requested key once (duplicates in `keys` are loaded once):
    /// `Some(value)`, or `None` for a key the factory left out — stored as a negative entry
    /// when `cache_none` is on (as an `_optional` loader's `Ok(None)` is), so the next batch
    /// does not ask for it again. A cached `None` is a hit here.
    ///
    /// The factory is called again only for keys whose joined load ended without a value
    /// this caller may take (its leader panicked or was dropped, or an invalidation that
    /// finished before this call made it stale), and never with no keys.
    ///
    /// # Errors
    ///
    /// The first failing key's error, in the order of `keys`: [`LoadError::Factory`] when
    /// this call's factory failed — every flight it led ends with that same `Arc`, which
    /// their other waiters get too, and nothing of it is cached — or when a load it joined
    /// failed; [`LoadError::TypeMismatch`] when a key holds another type. The values that
    /// did load are stored all the same.
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create): dropping the future while the factory
    /// runs abandons the flights it leads, and their waiters take them over.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use nearcache_keys::Key;
    /// use nearcache_store::{Store, StoreOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Store::new(StoreOptions::default())?;
    /// let ids = [1_u32, 2, 3];
    /// let keys: Vec<Key> = ids.iter().map(|id| Key::from_text(format!("user:{id}"))).collect();
    /// store.set(keys[0].clone(), String::from("ada"));
    ///
    /// let users = store
    ///     .get_or_create_many(&keys, async |batch| {
    ///         // One query for users 2 and 3 (1 is cached).
    ///         assert_eq!(batch.len(), 2);
    ///         let rows: HashMap<Key, String> = batch
    ///             .keys()
    ///             .map(|key| (key.clone(), format!("row of {key}")))
    ///             .collect();
    ///         Ok::<_, std::io::Error>(rows)
    ///     })
    ///     .await?;
    /// assert_eq!(users[&keys[0]].as_deref().map(String::as_str), Some("ada"));
    /// assert_eq!(users.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_create_many<T, E, F, I>(
        &self,
        keys: impl IntoIterator<Item = impl std::borrow::Borrow<Key>>,
        factory: F,
    ) -> Result<HashMap<Key, Option<Arc<T>>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        let keys = keys.into_iter().map(|key| key.borrow().clone()).collect();
        Box::pin(self.inner.load_many_async(keys, factory)).await
    }

    /// The blocking twin of [`get_or_create_many`](Self::get_or_create_many), sharing
    /// flights with async and single-key callers.
    ///
    /// # Errors
    ///
    /// As [`get_or_create_many`](Self::get_or_create_many), and [`LoadError::WouldDeadlock`]
    /// for a key whose load an async caller leads on this same thread (see
    /// [`get_or_create_sync`](Self::get_or_create_sync)).
    pub fn get_or_create_many_sync<T, E, F, I>(
        &self,
        keys: impl IntoIterator<Item = impl std::borrow::Borrow<Key>>,
        factory: F,
    ) -> Result<HashMap<Key, Option<Arc<T>>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        let keys = keys.into_iter().map(|key| key.borrow().clone()).collect();
        self.inner.load_many_sync(keys, factory)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_kept_once_in_first_seen_order() {
        let [a, b] = [Key::from_text("a"), Key::from_text("b")];
        let keys = distinct([b.clone(), a.clone(), b.clone(), a.clone()]);
        assert_eq!(keys, vec![b, a]);
    }

    #[test]
    fn the_first_error_in_request_order_wins() {
        let [a, b] = [Key::from_text("a"), Key::from_text("b")];
        let mut results: HashMap<Key, Result<Item<u8>, LoadError<&str>>> = HashMap::new();
        results.insert(b.clone(), Err(LoadError::Factory(Arc::new("b failed"))));
        results.insert(a.clone(), Err(LoadError::Factory(Arc::new("a failed"))));
        let error = collect(&[a, b], results).err().unwrap();
        assert_eq!(**error.factory_error().unwrap(), "a failed");
    }
}
