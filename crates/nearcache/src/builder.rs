//! [`CacheBuilder`]: wiring a store to an optional backplane.

use std::fmt;
use std::sync::Arc;

use nearcache_backplane::Backplane;
use nearcache_backplane::wire::InstanceId;
use nearcache_keys::Key;
use nearcache_store::{RemovalCause, Store};

use crate::cache::Cache;
use crate::error::BuildError;
use crate::identity::Identity;
use crate::options::CacheOptions;
use crate::propagation::Propagation;

/// Builds a [`Cache`]: options, then an optional backplane.
///
/// ```
/// use nearcache::{Cache, CacheOptions, InMemoryBackplane};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nearcache::BuildError> {
/// let bus = InMemoryBackplane::new();
/// let cache = Cache::builder()
///     .options(CacheOptions { name: Some("catalog".into()), ..CacheOptions::default() })
///     .shards(16)
///     .backplane(bus.clone())
///     .build()?;
/// cache.ready().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until .build()"]
pub struct CacheBuilder {
    options: CacheOptions,
    backplane: Option<Arc<dyn Backplane>>,
    #[cfg(feature = "test-util")]
    clock: Option<quanta::Clock>,
    removal_listener: Option<RemovalListener>,
}

/// A removal listener as the builder keeps it.
type RemovalListener = Box<dyn Fn(&Key, RemovalCause) + Send + Sync>;

impl CacheBuilder {
    pub(crate) fn new() -> Self {
        CacheBuilder {
            options: CacheOptions::default(),
            backplane: None,
            #[cfg(feature = "test-util")]
            clock: None,
            removal_listener: None,
        }
    }

    /// Sets every option at once (see [`CacheOptions`]).
    pub fn options(mut self, options: CacheOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the number of shards of the store (see [`StoreOptions::shards`](nearcache_store::StoreOptions::shards));
    /// the same as `options.store.shards`. Call it after [`options`](Self::options), which
    /// sets every option, this one included.
    pub fn shards(mut self, shards: usize) -> Self {
        self.options.store.shards = Some(shards);
        self
    }

    /// Connects the cache to its peers through `backplane`. Without one the cache is local
    /// to this process (its invalidations reach nobody else).
    pub fn backplane(mut self, backplane: impl Backplane) -> Self {
        self.backplane = Some(Arc::new(backplane));
        self
    }

    /// Like [`backplane`](Self::backplane), for a backplane already behind an `Arc`.
    pub fn shared_backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// Calls `listener` with the key and the [`RemovalCause`] of each entry that leaves this
    /// instance's store (moka's `eviction_listener`): `Evicted` (capacity), `Expired` (time),
    /// `Invalidated` (this instance's `remove`, region or sub-key expiry, or `clear`, the
    /// clears after a lost message included), `PeerInvalidated` (a peer invalidated the
    /// key), `Replaced` (a `set` or a load stored over it). Each removal is reported once.
    ///
    /// It runs on the thread that removed the entry — the caller of `set`, `remove` or a
    /// get-or-create, the task applying a peer's message, or the store's purger thread
    /// (time expiries, and the entries of a region expiry or `clear`, which are swept out
    /// shortly after the O(1) expiry) — after the store's locks are released, and never on
    /// a hit. It may read, `set`, `remove` and expire (the `_sync` calls: it is not async);
    /// it must not call a get-or-create, which could wait for a load its own thread leads.
    /// Keep it quick: the caller that removed the entry waits for it. A peer's region
    /// expiry or clear reports `Invalidated`, not `PeerInvalidated`: whose it was is no
    /// longer known when those entries are swept. Without a listener nothing of this costs
    /// anything.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use nearcache::{Cache, Key, RemovalCause};
    ///
    /// # fn main() -> Result<(), nearcache::BuildError> {
    /// let evictions = Arc::new(AtomicU64::new(0));
    /// let counted = Arc::clone(&evictions);
    /// let cache = Cache::builder()
    ///     .removal_listener(move |_key, cause| {
    ///         if cause == RemovalCause::Evicted {
    ///             counted.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// cache.set(Key::from_text("k"), 1_u8);
    /// cache.remove(Key::from_text("k"));
    /// assert_eq!(evictions.load(Ordering::Relaxed), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn removal_listener(
        mut self,
        listener: impl Fn(&Key, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.removal_listener = Some(Box::new(listener));
        self
    }

    /// Uses `clock` for expiry instead of the real one (tests: `quanta::Clock::mock()`).
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the cache. With a backplane, this starts its background tasks on the current
    /// tokio runtime and returns at once, without waiting for the network (so it can run in
    /// sync code inside a runtime). Until the subscription is made the cache works but does
    /// not serve from its store: reads miss and loads are not stored, because a peer's
    /// invalidation could go by unheard. [`Cache::ready`] waits for the subscription.
    ///
    /// The tasks need the runtime's time driver (`enable_all()`, or `#[tokio::main]`).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOptions`] when a store option is out of range,
    /// [`BuildError::InvalidBackplaneOption`] when a backplane option is (checked with or
    /// without a backplane, so a bad configuration fails early);
    /// [`BuildError::NoRuntime`] when a backplane is given outside a tokio runtime.
    pub fn build(self) -> Result<Cache, BuildError> {
        self.options.backplane.check()?;
        let store_options = self.options.store.clone();
        #[cfg(feature = "test-util")]
        let store = match (self.clock, self.removal_listener) {
            (Some(clock), None) => Store::with_clock(store_options, clock),
            (None, None) => Store::new(store_options),
            (Some(clock), Some(listener)) => {
                Store::with_clock_and_removal_listener(store_options, clock, listener)
            }
            (None, Some(listener)) => Store::with_removal_listener(store_options, listener),
        };
        #[cfg(not(feature = "test-util"))]
        let store = match self.removal_listener {
            None => Store::new(store_options),
            Some(listener) => Store::with_removal_listener(store_options, listener),
        };
        let store = store.map_err(BuildError::InvalidOptions)?;
        let identity = Identity::new(
            self.options.cache_name(),
            InstanceId::random(),
            self.options.store.log_keys,
        );
        let propagation = match self.backplane {
            None => None,
            Some(backplane) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
                // Until the subscription is live, peers' invalidations would be missed:
                // reads bypass the store, and the receiver lifts this once it listens.
                store.set_read_bypass(true);
                Some(Propagation::start(
                    store.clone(),
                    backplane,
                    self.options.backplane.clone(),
                    identity.clone(),
                    &runtime,
                ))
            }
        };
        Ok(Cache::from_parts(store, propagation, identity))
    }

    /// Connects to the Redis of `options.backplane.redis` (with the backplane's
    /// `publish_timeout` and reconnect delays), then builds.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRedisUrl`] when no Redis is configured or its URL is empty (a
    /// `[backplane.redis]` section without `url`), [`BuildError::Redis`] when
    /// Redis cannot be reached, refuses the credentials or a setting (an unreadable
    /// `tls_ca_file`), and those of [`build`](Self::build).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it before it completes closes the connections it opened.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn connect(self) -> Result<Cache, BuildError> {
        self.options.backplane.check()?;
        let config = self
            .options
            .backplane
            .redis_config()
            .filter(|redis| !redis.url.is_empty())
            .ok_or(BuildError::NoRedisUrl)?;
        let backplane = nearcache_redis::RedisBackplane::connect_with(config)
            .await
            .map_err(BuildError::Redis)?;
        self.backplane(backplane).build()
    }
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("options", &self.options)
            .field("backplane", &self.backplane)
            .field("removal_listener", &self.removal_listener.is_some())
            .finish_non_exhaustive()
    }
}
