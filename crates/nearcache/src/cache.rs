//! [`Cache`]: the handle applications use.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use nearcache_backplane::wire::InstanceId;
use nearcache_keys::{CacheKey, Key};
use nearcache_regions::{Region, SubKey};
use nearcache_store::{EntryOptions, LoadError, Loaded, Store, TypeMismatch};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::builder::CacheBuilder;
use crate::error::BuildError;
use crate::events::CacheEvent;
use crate::health::{self, Health};
use crate::identity::Identity;
use crate::invalidation::Invalidation;
#[cfg(feature = "metrics")]
use crate::metrics::Exported;
use crate::metrics::Seconds;
use crate::options::CacheOptions;
use crate::propagation::Propagation;
use crate::propagation::outbox::Pending;
use crate::stats::{CacheStats, PropagationStats};

/// A coherent in-process cache: local cache-aside with single-flight loads, kept in sync with
/// the other instances of a service through a backplane.
///
/// Cloning is cheap (one `Arc`); clones share everything. Reads never touch the network.
/// Invalidations (`remove`, `set`, region expiries, `clear`) act locally at once and are
/// then published to every peer; loads, local expiry and capacity evictions publish nothing.
/// Dropping the last handle stops the background tasks after they publish what is queued;
/// [`shutdown`](Self::shutdown) does the same and waits for it.
///
/// ```
/// use std::sync::Arc;
/// use nearcache::{Cache, CacheOptions, cache_key};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// struct ProductService;
/// let cache = Cache::new(CacheOptions::default())?;
/// let key = cache_key!(ProductService, "get", &42);
/// let name: Arc<String> = cache.get_or_create_sync(&key, |_entry| {
///     Ok::<_, std::io::Error>(String::from("forty-two"))
/// })?;
/// assert_eq!(*name, "forty-two");
/// assert_eq!(cache.stats().store.loads, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
    /// The same store as `inner.store`, held here too so that a read reaches it with one
    /// pointer load fewer (the hit path: the handle → the store, not → `Inner` → the store).
    store: Store,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    propagation: Option<Arc<Propagation>>,
    /// Handed out by `events()` when there is no backplane: it carries only
    /// `ExpiredServed`.
    idle_events: broadcast::Sender<CacheEvent>,
    /// Handed out by `watch_health()` when there is no backplane: always coherent.
    local_health: watch::Sender<Health>,
    /// The name and instance in spans and metrics; whether keys may be shown.
    pub(crate) identity: Identity,
    /// Exported counters and gauges (feature `metrics`).
    #[cfg(feature = "metrics")]
    exported: Exported,
    /// `nearcache_load_duration_seconds` (feature `metrics`).
    pub(crate) load_duration: Seconds,
}

impl Inner {
    /// The span of one factory run: the key is recorded only when `log_keys` allows it
    /// (else its hash), and only formatted when a subscriber wants the span.
    fn load_span(&self, key: &Key) -> tracing::Span {
        let id = &self.identity;
        let span = tracing::info_span!(
            "load",
            cache = %id.name,
            instance = %id.instance_text,
            key = tracing::field::Empty
        );
        if !span.is_disabled() {
            span.record("key", id.key(key.as_str()));
        }
        span
    }

    /// Runs one factory call (`load`) inside `span`, timed into
    /// `nearcache_load_duration_seconds`: what every blocking get-or-create wraps its
    /// factory in.
    pub(crate) fn observe_load<R>(&self, span: tracing::Span, load: impl FnOnce() -> R) -> R {
        let started = std::time::Instant::now();
        let loaded = span.in_scope(load);
        self.load_duration.record(started.elapsed());
        loaded
    }

    /// [`observe_load`](Self::observe_load) for an async factory call.
    pub(crate) async fn observe_load_async<F: Future>(
        &self,
        span: tracing::Span,
        load: F,
    ) -> F::Output {
        let started = std::time::Instant::now();
        let loaded = load.instrument(span).await;
        self.load_duration.record(started.elapsed());
        loaded
    }

    /// `factory` as every get-or-create hands it to the store: each run inside the key's
    /// load span, timed by [`observe_load`](Self::observe_load). `inner` and `key` are
    /// borrowed for a load that runs with its call, owned (`Arc`, `Key`) for one that may
    /// go on detached from it.
    fn observed<R>(
        inner: impl Deref<Target = Inner>,
        key: impl Borrow<Key>,
        factory: impl FnOnce(&mut EntryOptions) -> R,
    ) -> impl FnOnce(&mut EntryOptions) -> R {
        move |entry| inner.observe_load(inner.load_span(key.borrow()), || factory(entry))
    }

    /// One async factory call (`load`) as every async get-or-create runs it: in the key's
    /// load span, timed by [`observe_load_async`](Self::observe_load_async). (An async
    /// twin of [`observed`](Self::observed) cannot return the wrapped factory: the
    /// returned `impl AsyncFnOnce` would hide whether its future is `Send`.)
    async fn observe_key_load<F: Future>(&self, key: &Key, load: F) -> F::Output {
        self.observe_load_async(self.load_span(key), load).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(propagation) = &self.propagation {
            // The sender publishes what is queued, then both tasks exit.
            propagation.close();
        }
    }
}

impl Cache {
    /// A builder: options, then an optional backplane.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A cache with `options` and no backplane (its invalidations stay in this process).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOptions`] when an option is out of range.
    pub fn new(options: CacheOptions) -> Result<Cache, BuildError> {
        Cache::builder().options(options).build()
    }

    pub(crate) fn from_parts(
        store: Store,
        propagation: Option<Arc<Propagation>>,
        identity: Identity,
    ) -> Cache {
        let (idle_events, _) = broadcast::channel(16);
        // Weak: the store must not keep the events channel open after the cache is gone.
        let events = match &propagation {
            Some(p) => p.events.downgrade(),
            None => idle_events.downgrade(),
        };
        store.on_expired_served(move |source| {
            if let Some(events) = events.upgrade() {
                let _ = events.send(CacheEvent::ExpiredServed { source });
            }
        });
        let cache = Cache {
            store: store.clone(),
            inner: Arc::new(Inner {
                store,
                propagation,
                idle_events,
                local_health: watch::Sender::new(Health::local()),
                #[cfg(feature = "metrics")]
                exported: Exported::new(&identity),
                load_duration: crate::metrics::load_duration(&identity),
                identity,
            }),
        };
        #[cfg(feature = "metrics")]
        cache.spawn_export();
        cache
    }

    /// The value stored under `key`, if it is there, alive, and a `T`.
    ///
    /// # Errors
    ///
    /// [`TypeMismatch`] when `key` holds a value of another type.
    #[inline]
    pub fn get<T: Send + Sync + 'static>(
        &self,
        key: impl Borrow<Key>,
    ) -> Result<Option<Arc<T>>, TypeMismatch> {
        self.store.get(key.borrow())
    }

    /// The value under `key`, loading it with `factory` on a miss.
    ///
    /// Concurrent callers of one key — async and blocking alike — share one load: the
    /// factory runs once and every caller gets the same `Arc`. An `Err` is never cached; it
    /// goes to every caller of that load as the same `Arc<E>`. If the key is invalidated
    /// while the factory runs (here or by a peer), the value is returned but not stored.
    /// The factory sets the entry's expiry and regions through its `&mut EntryOptions`.
    ///
    /// `cache_none` does not apply here (a generic `T` cannot be told to be an `Option`):
    /// use [`get_or_create_optional`](Self::get_or_create_optional) for factories that may
    /// find nothing.
    ///
    /// # Errors
    ///
    /// [`LoadError::Factory`] with the factory's error, shared by the flight;
    /// [`LoadError::TypeMismatch`] when `key` holds a value of another type;
    /// [`LoadError::Timeout`] past `hard_timeout` with no expired value kept.
    ///
    /// # Timeouts
    ///
    /// This call runs the factory in place when it leads the load, so it waits for it (up
    /// to `hard_timeout`, which cancels it) and never answers at `soft_timeout`; when it
    /// joins another caller's load it stops at either timeout like any waiter. For loads
    /// that go on in the background, use [`get_or_create_detached`](Self::get_or_create_detached).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes never strands other callers: if it was
    /// running the factory, one of the waiters takes the load over.
    pub async fn get_or_create<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        let key = key.borrow();
        let inner = &*self.inner;
        let factory =
            async move |entry: &mut EntryOptions| inner.observe_key_load(key, factory(entry)).await;
        self.store.get_or_create(key, factory).await
    }

    /// The blocking twin of [`get_or_create`](Self::get_or_create); it shares flights with
    /// async callers of the same key.
    ///
    /// Meant for threads outside an async runtime. Called on a multi-thread tokio runtime's
    /// worker, a wait for another caller's load runs inside `tokio::task::block_in_place`, so
    /// the worker's other tasks (that load's async leader among them) move to another thread
    /// first; hits and loads this call leads itself pay nothing for it. On a current-thread
    /// runtime's thread it cannot do that: if it would have to wait for a load that an async
    /// task leads on that same thread, it returns [`LoadError::WouldDeadlock`] instead of
    /// hanging. From async code, use [`get_or_create`](Self::get_or_create).
    ///
    /// Timeouts: when this call leads the load it runs the factory on its own thread and
    /// waits for it, however long (a blocking function cannot be stopped from outside; bound
    /// it inside the factory, e.g. with the database client's timeout), and the factory's
    /// value is returned and stored as usual. When it joins another caller's load it stops
    /// waiting at `soft_timeout` (with the expired value kept for fail-safe) or `hard_timeout`
    /// (with that value, else [`LoadError::Timeout`]). For a blocking load that callers may
    /// leave behind, use [`get_or_create_detached_sync`](Self::get_or_create_detached_sync).
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create), and [`LoadError::WouldDeadlock`] as above.
    pub fn get_or_create_sync<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        let key = key.borrow();
        let factory = Inner::observed(&*self.inner, key, factory);
        self.inner.store.get_or_create_sync(key, factory)
    }

    /// Like [`get_or_create`](Self::get_or_create) for a factory that may find nothing:
    /// `Ok(None)` is stored as a negative entry when `cache_none` is on (the default), and
    /// only returned when it is off.
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create).
    pub async fn get_or_create_optional<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Option<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<Option<T>, E>,
    {
        let key = key.borrow();
        let inner = &*self.inner;
        let factory =
            async move |entry: &mut EntryOptions| inner.observe_key_load(key, factory(entry)).await;
        self.inner.store.get_or_create_optional(key, factory).await
    }

    /// The blocking twin of [`get_or_create_optional`](Self::get_or_create_optional); on
    /// async runtimes it behaves as [`get_or_create_sync`](Self::get_or_create_sync).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_optional_sync<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Option<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<Option<T>, E>,
    {
        let key = key.borrow();
        let factory = Inner::observed(&*self.inner, key, factory);
        self.inner.store.get_or_create_optional_sync(key, factory)
    }

    /// Like [`get_or_create`](Self::get_or_create), for a factory that may run detached
    /// from its caller (`Send + 'static`: it owns what it uses, e.g. a cloned pool), which
    /// enables **eager refresh**: with `eager_refresh_threshold` (or the entry's
    /// `EntryOptions::eager_refresh_threshold`), the first hit past that fraction of the entry's
    /// absolute time to live starts one background reload through the key's single flight
    /// (a foreground load of the key joins it), and every caller keeps getting the current
    /// value meanwhile. An invalidation during the reload keeps its value out, as for any
    /// load.
    ///
    /// The reload runs on the blocking pool of the tokio runtime the cache was built in
    /// (the async factory is driven there by the runtime's handle). A cache built outside a
    /// runtime refreshes nothing early (logged once): entries reload when they expire.
    ///
    /// These loaders also honour **`soft_timeout`** and **`hard_timeout_action =
    /// "background"`**: under a timeout a load this call leads runs on that runtime, and this
    /// call stops waiting at the soft timeout (with the expired value kept for fail-safe) or
    /// at the hard timeout (with that value, else [`LoadError::Timeout`]) while the load goes
    /// on and stores its value, unless an invalidation overlapped it.
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create); a background reload's failure reaches no
    /// caller (the current value stays until it expires).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create); a started refresh goes on regardless.
    pub async fn get_or_create_detached<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        let key = key.borrow();
        let (inner, span_key) = (Arc::clone(&self.inner), key.clone());
        let factory = async move |entry: &mut EntryOptions| {
            inner.observe_key_load(&span_key, factory(entry)).await
        };
        self.inner.store.get_or_create_detached(key, factory).await
    }

    /// The blocking twin of [`get_or_create_detached`](Self::get_or_create_detached): its
    /// eager refreshes run on the runtime the cache was built in, even when this is called
    /// from a thread outside it.
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_detached_sync<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        let key = key.borrow();
        let factory = Inner::observed(Arc::clone(&self.inner), key.clone(), factory);
        self.inner.store.get_or_create_detached_sync(key, factory)
    }

    /// [`get_or_create`](Self::get_or_create), returning with the value where it came from
    /// ([`Loaded::source`]): a hit ([`Cached`](crate::Source::Cached)), a load
    /// ([`Loaded`](crate::Source::Loaded)), or an expired value —
    /// [`FailSafe`](crate::Source::FailSafe) (the load failed or ran past `hard_timeout`) or
    /// [`SoftTimeout`](crate::Source::SoftTimeout) — for callers that must say so (an `Age`
    /// or `Warning` header, a "may be out of date" banner);
    /// [`is_expired`](crate::Source::is_expired) tells them apart.
    ///
    /// ```
    /// use nearcache::{Cache, CacheOptions, Key, Source};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = Cache::new(CacheOptions::default())?;
    /// let key = Key::from_text("product:42");
    /// let product = cache
    ///     .get_or_create_with_source(&key, async |_| Ok::<_, std::io::Error>("forty-two"))
    ///     .await?;
    /// assert_eq!(product.source, Source::Loaded);
    /// if product.source.is_expired() {
    ///     // e.g. answer with `Warning: 110 - "Response is Stale"`
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create).
    pub async fn get_or_create_with_source<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        let key = key.borrow();
        let inner = &*self.inner;
        let factory =
            async move |entry: &mut EntryOptions| inner.observe_key_load(key, factory(entry)).await;
        self.inner
            .store
            .get_or_create_with_source(key, factory)
            .await
    }

    /// The blocking twin of [`get_or_create_with_source`](Self::get_or_create_with_source).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_sync_with_source<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        let key = key.borrow();
        let factory = Inner::observed(&*self.inner, key, factory);
        self.inner
            .store
            .get_or_create_sync_with_source(key, factory)
    }

    /// The blocking twin of
    /// [`get_or_create_detached_with_source`](Self::get_or_create_detached_with_source).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_detached_sync`](Self::get_or_create_detached_sync).
    pub fn get_or_create_detached_sync_with_source<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        let key = key.borrow();
        let factory = Inner::observed(Arc::clone(&self.inner), key.clone(), factory);
        self.inner
            .store
            .get_or_create_detached_sync_with_source(key, factory)
    }

    /// [`get_or_create_detached`](Self::get_or_create_detached), returning with the value
    /// where it came from, as [`get_or_create_with_source`](Self::get_or_create_with_source)
    /// does: the detached loaders are the ones that answer at `soft_timeout`
    /// ([`Source::SoftTimeout`](crate::Source::SoftTimeout)).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_detached`](Self::get_or_create_detached).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create_detached`](Self::get_or_create_detached).
    pub async fn get_or_create_detached_with_source<T, E, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        let key = key.borrow();
        let (inner, span_key) = (Arc::clone(&self.inner), key.clone());
        let factory = async move |entry: &mut EntryOptions| {
            inner.observe_key_load(&span_key, factory(entry)).await
        };
        self.inner
            .store
            .get_or_create_detached_with_source(key, factory)
            .await
    }

    /// Stores `value` under `key` here (with the default expiry) and evicts the peers' copies,
    /// which are now stale.
    ///
    /// Both have happened when the call returns: the value is stored and the eviction is
    /// queued for the peers. Await the returned [`Invalidation`] to wait, at most
    /// `publish_timeout`, for the eviction to be published; drop it to not wait.
    ///
    /// # Cancel safety
    ///
    /// The local store and the outbox are updated before the call returns; dropping the
    /// [`Invalidation`] or its future only stops the wait, never the invalidation.
    pub fn set<T: Send + Sync + 'static>(
        &self,
        key: impl Borrow<Key>,
        value: T,
    ) -> Invalidation<'_> {
        let key = key.borrow();
        self.inner.store.set(key.clone(), value);
        self.enqueue(Pending::Remove(key.clone()))
    }

    /// Like [`set`](Self::set), with entry options (expiry, regions) set by `configure`.
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Self::set).
    pub fn set_with<T: Send + Sync + 'static>(
        &self,
        key: impl Borrow<Key>,
        value: T,
        configure: impl FnOnce(&mut EntryOptions),
    ) -> Invalidation<'_> {
        let key = key.borrow();
        self.inner.store.set_with(key.clone(), value, configure);
        self.enqueue(Pending::Remove(key.clone()))
    }

    /// [`set`](Self::set) without waiting for the publish.
    #[deprecated(
        since = "0.2.0",
        note = "call `set` and drop the result: `cache.set(key, value);` stores here and \
                queues the peers' eviction without waiting"
    )]
    pub fn set_sync<T: Send + Sync + 'static>(&self, key: impl Borrow<Key>, value: T) {
        let _ = self.set(key, value);
    }

    /// Removes `key` here and on every peer.
    ///
    /// It is removed here, and its removal queued for the peers, when the call returns.
    /// Await the returned [`Invalidation`] to wait, at most `publish_timeout`, for the removal
    /// to be published; drop it to not wait.
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Self::set).
    pub fn remove(&self, key: impl Borrow<Key>) -> Invalidation<'_> {
        let key = key.borrow();
        self.inner.store.remove(key);
        self.enqueue(Pending::Remove(key.clone()))
    }

    /// [`remove`](Self::remove) without waiting for the publish.
    #[deprecated(
        since = "0.2.0",
        note = "call `remove` and drop the result: `cache.remove(key);` removes here and \
                queues the peers' removal without waiting"
    )]
    pub fn remove_sync(&self, key: impl Borrow<Key>) {
        let _ = self.remove(key);
    }

    /// Expires every entry of region `R` here and on every peer: one message, O(1) here.
    ///
    /// Expired here, and queued for the peers, when the call returns; await the returned
    /// [`Invalidation`] to wait for the publish, or drop it.
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Self::set).
    pub fn expire_region<R: Region>(&self) -> Invalidation<'_> {
        self.inner.store.expire_region::<R>();
        self.enqueue(Pending::ExpireRegion(R::NAME.to_owned()))
    }

    /// [`expire_region`](Self::expire_region) without waiting for the publish.
    #[deprecated(
        since = "0.2.0",
        note = "call `expire_region` and drop the result: `cache.expire_region::<R>();` \
                expires here and queues the peers' expiry without waiting"
    )]
    pub fn expire_region_sync<R: Region>(&self) {
        let _ = self.expire_region::<R>();
    }

    /// Expires the entries of region `R` tied to `sub_key` here and on every peer.
    ///
    /// Expired here, and queued for the peers, when the call returns; await the returned
    /// [`Invalidation`] to wait for the publish, or drop it.
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Self::set).
    pub fn expire_region_key<R: Region, K: CacheKey + ?Sized>(
        &self,
        sub_key: &K,
    ) -> Invalidation<'_> {
        self.inner.store.expire_region_key::<R>(sub_key);
        // The one spelling of a sub-key, the one the store just used.
        let sub_key = sub_key.sub_key_text().into_owned();
        self.enqueue(Pending::ExpireRegionKey(R::NAME.to_owned(), sub_key))
    }

    /// [`expire_region_key`](Self::expire_region_key) without waiting for the publish.
    #[deprecated(
        since = "0.2.0",
        note = "call `expire_region_key` and drop the result: \
                `cache.expire_region_key::<R, _>(sub_key);` expires here and queues the \
                peers' expiry without waiting"
    )]
    pub fn expire_region_key_sync<R: Region, K: CacheKey + ?Sized>(&self, sub_key: &K) {
        let _ = self.expire_region_key::<R, K>(sub_key);
    }

    /// Expires everything here (the global region) and on every peer.
    ///
    /// Cleared here, and queued for the peers, when the call returns; await the returned
    /// [`Invalidation`] to wait for the publish, or drop it.
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Self::set).
    pub fn clear(&self) -> Invalidation<'_> {
        self.inner.store.clear();
        self.enqueue(Pending::Clear)
    }

    /// [`clear`](Self::clear) without waiting for the publish.
    #[deprecated(
        since = "0.2.0",
        note = "call `clear` and drop the result: `cache.clear();` clears here and queues \
                the peers' clear without waiting"
    )]
    pub fn clear_sync(&self) {
        let _ = self.clear();
    }

    /// Queues `op` for the peers (the background sender publishes it) and returns at once.
    fn enqueue(&self, op: Pending) -> Invalidation<'_> {
        let propagation = self.inner.propagation.as_deref();
        let ticket = propagation.and_then(|p| p.enqueue(&self.inner.store, op));
        Invalidation::new(propagation, ticket)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let store = &self.inner.store;
        CacheStats {
            store: store.stats(),
            propagation: self.inner.propagation.as_ref().map(|p| PropagationStats {
                bypassing_reads: store.is_read_bypassed(),
                ..p.stats()
            }),
        }
    }

    /// This instance's coherence now: the state, the staleness bound it can promise, and
    /// what each peer last said. A readiness probe should check
    /// [`Health::is_ready`]; see docs/operations.md.
    pub fn health(&self) -> Health {
        match &self.inner.propagation {
            Some(p) => health::compute(p, &self.inner.store),
            None => Health::local(),
        }
    }

    /// A watch of [`health`](Self::health) that changes when the state or the staleness
    /// bound does (checked on every propagation event and at least every second). Its
    /// per-peer figures are as of the last change: call [`health`](Self::health) for
    /// current ones. A cache without a backplane stays coherent.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        match &self.inner.propagation {
            Some(p) => p.health.watch.subscribe(),
            None => self.inner.local_health.subscribe(),
        }
    }

    /// The cache's name in logs, spans and metrics (the `name` option, else the app's).
    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    /// Sets every exported series from the current counters (feature `metrics`). A task
    /// does it every second on the runtime the cache was built in (none is started outside
    /// a runtime); call it before a scrape for up-to-the-moment values, or in tests.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn export_metrics(&self) {
        let inner = &self.inner;
        inner.exported.export(
            &self.stats(),
            &self.health(),
            inner.store.len(),
            inner.store.weight(),
        );
    }

    /// Starts the export task; it ends when the last handle is dropped.
    #[cfg(feature = "metrics")]
    fn spawn_export(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let span = self.inner.identity.span("metrics");
        runtime.spawn(
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(inner) => Cache {
                            store: inner.store.clone(),
                            inner,
                        }
                        .export_metrics(),
                        None => return,
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Events of the propagation layer (applied messages, loss clears, connection changes)
    /// and expired values served ([`CacheEvent::ExpiredServed`]), from now on. A cache
    /// without a backplane yields only the latter.
    pub fn events(&self) -> broadcast::Receiver<CacheEvent> {
        match &self.inner.propagation {
            Some(p) => p.events.subscribe(),
            None => self.inner.idle_events.subscribe(),
        }
    }

    /// Waits until the backplane subscription is live; returns at once without a backplane
    /// or after [`shutdown`](Self::shutdown). Until the subscription is live, reads bypass
    /// the local store (they miss, and loads run single-flight without storing), so nothing
    /// is served that a peer's invalidation could have missed; when it becomes live, what
    /// [`set`](Self::set) stored meanwhile is dropped for the same reason.
    ///
    /// It waits as long as subscribing takes (the backplane retries with backoff): wrap it
    /// in `tokio::time::timeout` to bound a start-up.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn ready(&self) {
        if let Some(p) = &self.inner.propagation {
            let mut ready = p.ready.subscribe();
            let mut shutdown = p.shutdown.subscribe();
            tokio::select! {
                _ = ready.wait_for(|ready| *ready) => {}
                _ = shutdown.wait_for(|closed| *closed) => {}
            }
        }
    }

    /// This instance's id on the backplane, if it has one.
    pub fn instance_id(&self) -> Option<InstanceId> {
        self.inner.propagation.as_ref().map(|p| p.instance)
    }

    /// Number of entries held now (dead ones not yet purged included).
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes what is queued and stops the background tasks; returns how many
    /// invalidations could not be published (0 when all went out).
    ///
    /// Once shut down, a publish that fails is not retried, so this returns within a few
    /// `publish_timeout`s even when the backplane is down. Afterwards the cache still works
    /// as a pass-through: it no longer hears its peers, so reads bypass the store (they
    /// miss; loads still run single-flight but are not stored), and its own invalidations
    /// stay local ([`Propagated::Local`](crate::Propagated::Local)). Calling it again returns at once, with the same
    /// count.
    /// Without a backplane it does nothing and returns 0.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the tasks stopping on their own.
    pub async fn shutdown(&self) -> usize {
        match &self.inner.propagation {
            Some(p) => {
                let unsent = p.shutdown().await;
                // The receiver does this as it exits; if it had to be aborted, make sure.
                self.inner.store.set_read_bypass(true);
                unsent
            }
            None => 0,
        }
    }

    /// How many callers have joined `key`'s load in progress, or `None` when none is in
    /// progress. For tests that need every caller parked on a flight.
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn flight_waiters(&self, key: impl Borrow<Key>) -> Option<usize> {
        self.inner.store.flight_waiters(key.borrow())
    }

    /// Resolves once this cache's background tasks have ended: after
    /// [`shutdown`](Self::shutdown), or once every handle is dropped (the future does not
    /// keep the cache alive). At once without a backplane.
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = self.inner.propagation.as_ref().map(|p| p.stopped());
        async move {
            if let Some(stopped) = stopped {
                stopped.await;
            }
        }
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name())
            .field("len", &self.inner.store.len())
            .field("instance", &self.instance_id())
            .finish_non_exhaustive()
    }
}
