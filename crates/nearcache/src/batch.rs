//! Batch get-or-create on the cache: the store's batch (one factory call for the keys
//! nobody has, one flight per key), with the batch's span and load duration.
//!
//! Nothing here touches the backplane: loads publish nothing, and a peer's invalidation of
//! one key during a batch reaches the store as a local `remove` would, keeping only that
//! key's value out.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use nearcache_keys::Key;
use nearcache_store::{BatchEntries, LoadError};

use crate::cache::{Cache, Inner};

impl Inner {
    /// The span of one batch factory call: how many keys it loads (never the keys).
    fn batch_span(&self, keys: usize) -> tracing::Span {
        let id = &self.identity;
        tracing::info_span!(
            "load_batch",
            cache = %id.name,
            instance = %id.instance_text,
            keys
        )
    }
}

impl Cache {
    /// The values under `keys`, loading the missing ones with **one** call of `factory`.
    ///
    /// `factory` gets only the keys that are neither cached nor being loaded by another
    /// caller ([`BatchEntries::keys`]) and returns `(key, value)` pairs (a `Vec`, a
    /// `HashMap`, any iterator of them); it may set each key's expiry and regions through
    /// [`BatchEntries::entry`]. Keys another caller is loading — a single-key
    /// [`get_or_create`](Self::get_or_create) or another batch — are joined, so overlapping
    /// batches load each key once, and single-key callers join a batch's keys. Each key is
    /// its own load: if it is invalidated while the batch loads (here or by a peer, or by an
    /// expiry of a region it is tied to), its value is returned to this caller but not
    /// stored, and callers that start after the invalidation load it again; the other keys
    /// are stored.
    ///
    /// The result holds every requested key once (duplicates are loaded once): `Some`, or
    /// `None` for a key the factory left out, which is cached as a negative entry when
    /// `cache_none` is on. The factory is called again only for keys whose joined load ended
    /// without a value this caller may take (its leader panicked or was dropped, or it was
    /// invalidated before this call began), hence `AsyncFnMut`.
    ///
    /// In a spawned task write the factory as `async move |batch| …` over owned (cloned)
    /// captures: a non-`move` async closure that borrows the task's locals trips a
    /// limitation of the compiler ("implementation of `Send` is not general enough").
    ///
    /// # Errors
    ///
    /// The first failing key's error, in the order of `keys`: [`LoadError::Factory`] when
    /// the factory failed (every caller waiting on a key it was loading gets the same
    /// `Arc`; nothing is cached) or a load it joined failed; [`LoadError::TypeMismatch`]
    /// when a key holds another type. Values that did load are stored all the same.
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create): dropping the future while the factory
    /// runs hands its keys to their waiters.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use nearcache::{BatchEntries, Cache, CacheOptions, Key, cache_key};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// struct UserService;
    /// let cache = Cache::new(CacheOptions::default())?;
    /// let keys: Vec<Key> = [1_u32, 2, 3].iter().map(|id| cache_key!(UserService, "get", id)).collect();
    ///
    /// let users = cache
    ///     .get_or_create_many(&keys, async |batch: &mut BatchEntries| {
    ///         // SELECT … WHERE id IN (…): one query for every key not cached
    ///         let rows: Vec<(Key, String)> = batch
    ///             .keys()
    ///             .map(|key| (key.clone(), format!("user of {key}")))
    ///             .collect();
    ///         Ok::<_, std::io::Error>(rows)
    ///     })
    ///     .await?;
    /// assert_eq!(users.len(), 3);
    /// let first: &Arc<String> = users[&keys[0]].as_ref().expect("found");
    /// assert!(first.starts_with("user of"));
    /// assert_eq!(cache.stats().store.batch_loads, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_create_many<T, E, F, I>(
        &self,
        keys: impl IntoIterator<Item = impl Borrow<Key>>,
        mut factory: F,
    ) -> Result<HashMap<Key, Option<Arc<T>>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        // Owned, not `&Inner`: a borrowed capture would make this future `Send` only for one
        // lifetime, and `tokio::spawn` asks for all (see the note above).
        let inner = Arc::clone(&self.inner);
        let store = inner.store.clone();
        let factory = async move |batch: &mut BatchEntries| {
            let span = inner.batch_span(batch.len());
            inner.observe_load_async(span, factory(batch)).await
        };
        store.get_or_create_many(keys, factory).await
    }

    /// The blocking twin of [`get_or_create_many`](Self::get_or_create_many); it shares
    /// loads with async and single-key callers. What
    /// [`get_or_create_sync`](Self::get_or_create_sync) says about async runtimes holds here.
    ///
    /// # Errors
    ///
    /// As [`get_or_create_many`](Self::get_or_create_many), and [`LoadError::WouldDeadlock`]
    /// for a key whose load an async task leads on this same current-thread runtime.
    pub fn get_or_create_many_sync<T, E, F, I>(
        &self,
        keys: impl IntoIterator<Item = impl Borrow<Key>>,
        mut factory: F,
    ) -> Result<HashMap<Key, Option<Arc<T>>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnMut(&mut BatchEntries) -> Result<I, E>,
        I: IntoIterator<Item = (Key, T)>,
    {
        let inner = &*self.inner;
        let factory = |batch: &mut BatchEntries| {
            inner.observe_load(inner.batch_span(batch.len()), || factory(batch))
        };
        inner.store.get_or_create_many_sync(keys, factory)
    }
}
