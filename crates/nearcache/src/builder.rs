//! [`CacheBuilder`]: wiring a store to an optional backplane.

use std::fmt;
use std::sync::Arc;

use nearcache_backplane::Backplane;
use nearcache_backplane::wire::InstanceId;
use nearcache_keys::Key;
use nearcache_store::{RemovalCause, Store, StoreOptions};

use crate::cache::Cache;
use crate::error::BuildError;
use crate::identity::Identity;
#[cfg(feature = "redis")]
use crate::options::BackplaneOptions;
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
///     .options(CacheOptions { max_capacity: 1_000, ..CacheOptions::default() })
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
        let store_options = store_options(&self.options);
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
            self.options.log_keys,
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

    /// Connects to Redis at `options.backplane.redis_url`, then builds.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRedisUrl`] when no URL is configured, [`BuildError::Redis`] when
    /// Redis cannot be reached or refuses the credentials, and those of
    /// [`build`](Self::build).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it before it completes closes the connections it opened.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn connect(self) -> Result<Cache, BuildError> {
        let config = redis_config(&self.options.backplane)?;
        let backplane = nearcache_redis::RedisBackplane::connect_with(config)
            .await
            .map_err(BuildError::Redis)?;
        self.backplane(backplane).build()
    }
}

/// The [`RedisConfig`](nearcache_redis::RedisConfig) that `options` describe: every Redis
/// setting of [`BackplaneOptions`] is mapped here, the rest keeps the backplane's defaults
/// (the reconnect jitter, and `max_payload`, which must stay at the wire format's 1 MiB).
#[cfg(feature = "redis")]
fn redis_config(options: &BackplaneOptions) -> Result<nearcache_redis::RedisConfig, BuildError> {
    let url = options.redis_url.clone().ok_or(BuildError::NoRedisUrl)?;
    let tls_ca_pem = match &options.tls_ca_file {
        None => None,
        // A few KiB, read once at startup: not worth a blocking-pool hop.
        Some(path) => Some(std::fs::read(path).map_err(|source| BuildError::TlsCaFile {
            path: path.clone(),
            source,
        })?),
    };
    Ok(nearcache_redis::RedisConfig {
        url,
        channel: options.channel_name(),
        connect_timeout: options.connect_timeout,
        publish_timeout: options.publish_timeout,
        reconnect: nearcache_redis::ReconnectBackoff {
            initial: options.reconnect_initial_delay,
            max: options.reconnect_max_delay,
            ..nearcache_redis::ReconnectBackoff::default()
        },
        ping_interval: options.ping_interval,
        sharded: options.sharded,
        subscriber_queue: options.subscriber_queue,
        tls_ca_pem,
        replay_log_len: options.replay_log_len,
        ..nearcache_redis::RedisConfig::default()
    })
}

fn store_options(options: &CacheOptions) -> StoreOptions {
    StoreOptions {
        enabled: options.enabled,
        default_absolute_expiration: options.time_to_live,
        default_sliding_expiration: options.time_to_idle,
        max_capacity: options.max_capacity,
        max_weight: options.max_weight,
        cache_none: options.cache_none,
        purge_interval: options.purge_interval,
        log_keys: options.log_keys,
        default_fail_safe_max_duration: options.fail_safe_max_duration,
        fail_safe_throttle: options.fail_safe_throttle,
        hard_timeout: options.hard_timeout,
        soft_timeout: options.soft_timeout,
        hard_timeout_action: options.hard_timeout_action.into(),
        eager_refresh_threshold: options.eager_refresh_threshold,
        ..StoreOptions::default()
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

#[cfg(all(test, feature = "redis"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use nearcache_redis::{ReconnectBackoff, RedisConfig};

    use super::*;

    #[test]
    fn default_options_give_the_backplanes_defaults() {
        let options = BackplaneOptions {
            redis_url: Some("redis://10.0.0.5:6379".into()),
            ..BackplaneOptions::default()
        };
        assert_eq!(
            redis_config(&options).unwrap(),
            RedisConfig::new("redis://10.0.0.5:6379"),
            "the two crates' defaults agree"
        );
    }

    #[test]
    fn every_redis_option_is_mapped() {
        let dir = std::env::temp_dir().join(format!("nearcache-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let options = BackplaneOptions {
            redis_url: Some("rediss://app:pw@redis.internal:6380/1".into()),
            app: "shop".into(),
            publish_timeout: Duration::from_millis(250),
            reconnect_initial_delay: Duration::from_millis(20),
            reconnect_max_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(1500),
            ping_interval: Duration::from_millis(300),
            sharded: true,
            subscriber_queue: 99,
            tls_ca_file: Some(ca.clone()),
            replay_log_len: 7,
            ..BackplaneOptions::default()
        };
        let config = redis_config(&options).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            config,
            RedisConfig {
                url: "rediss://app:pw@redis.internal:6380/1".into(),
                channel: "nearcache:shop:invalidations".into(),
                connect_timeout: Duration::from_millis(1500),
                publish_timeout: Duration::from_millis(250),
                reconnect: ReconnectBackoff {
                    initial: Duration::from_millis(20),
                    max: Duration::from_secs(2),
                    ..ReconnectBackoff::default()
                },
                ping_interval: Duration::from_millis(300),
                sharded: true,
                subscriber_queue: 99,
                tls_ca_pem: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
                replay_log_len: 7,
                ..RedisConfig::default()
            }
        );
    }

    #[test]
    fn a_missing_url_or_ca_file_is_a_typed_error() {
        let err = redis_config(&BackplaneOptions::default()).unwrap_err();
        assert!(matches!(err, BuildError::NoRedisUrl), "{err:?}");
        let options = BackplaneOptions {
            redis_url: Some("rediss://h:1".into()),
            tls_ca_file: Some("/nonexistent/nearcache/ca.pem".into()),
            ..BackplaneOptions::default()
        };
        let err = redis_config(&options).unwrap_err();
        assert!(matches!(err, BuildError::TlsCaFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/nearcache/ca.pem"),
            "{err}"
        );
    }
}
