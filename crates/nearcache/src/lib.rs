//! Coherent in-process caches for services that scale out.
//!
//! Each instance of a service caches hot data in its own memory — cache-aside with
//! single-flight loads, injective keys, expiry, and strongly typed regions that evict groups
//! of entries — so a read never costs a network hop. When one instance invalidates something,
//! a [`Backplane`] (Redis pub/sub in production, [`InMemoryBackplane`] in tests and
//! single-process apps) tells every other instance to evict its copy, and an instance that
//! may have missed such a message clears itself instead of serving stale data.
//!
//! Applications depend on this crate only; it re-exports what they need. Backplane authors
//! depend on `nearcache-backplane`.
//!
//! # Quick start
//!
//! Two instances of a service, each with its own [`Cache`], joined by a backplane. In
//! production the backplane is Redis (feature `redis`: set `backplane.redis` in the
//! [`CacheOptions`] and build with `CacheBuilder::connect`); here it is the
//! [`InMemoryBackplane`], so the example runs anywhere.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use nearcache::{Cache, CacheEvent, CacheOptions, InMemoryBackplane, Propagated, cache_key, region};
//!
//! region!(Catalog = "catalog"); // a typed region; its name travels on the wire
//! struct ProductService;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = InMemoryBackplane::new();
//! let options = CacheOptions { name: Some("catalog".into()), ..CacheOptions::default() };
//! let a = Cache::builder().options(options.clone()).backplane(bus.connection()).build()?;
//! let b = Cache::builder().options(options).backplane(bus.connection()).build()?;
//! a.ready().await; // subscribed: until then reads bypass the cache
//! b.ready().await;
//!
//! // Cache-aside: a miss runs the factory (once, however many callers wait for it)...
//! let key = cache_key!(ProductService, "get", &42); // "ProductService:get-42"
//! let first: Arc<String> = b
//!     .get_or_create(&key, async |entry| {
//!         entry.region_key::<Catalog>("c1").time_to_live(Duration::from_secs(300));
//!         Ok::<_, std::io::Error>(String::from("red shoes, v1")) // the database query
//!     })
//!     .await?;
//! // ...and later reads are local hits that return the same `Arc`.
//! let again: Arc<String> = b
//!     .get_or_create_with(&key, async |_| String::from("not called")) // cannot fail
//!     .await?;
//! assert!(Arc::ptr_eq(&first, &again));
//!
//! // Instance `a` updates the database, then invalidates: here at once, on every peer
//! // through the backplane. Events say when a peer applied it (no sleeping and hoping).
//! let mut events = b.events();
//! assert_eq!(a.remove(&key).await, Propagated::Published);
//! while !matches!(events.recv().await?, CacheEvent::Applied { .. }) {}
//! assert_eq!(b.get::<String>(&key)?, None);
//!
//! let stats = b.stats();
//! assert_eq!((stats.store.hits, stats.store.loads), (1, 1));
//! assert_eq!(stats.propagation.map(|p| p.invalidations_applied), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Loading
//!
//! [`Cache::get_or_create`] (async) and [`Cache::get_or_create_sync`] (blocking) share one
//! flight per key: concurrent callers run the factory once and all get the same `Arc`. The
//! factory sets its entry's expiry and regions through [`EntryOptions`]. An `Err` is never cached
//! and goes to every caller of that flight as one shared `Arc<E>` ([`LoadError::Factory`]); a
//! factory that panics, or a caller dropped mid-load, hands the load to a waiter. If the key
//! is invalidated while its factory runs — here or by a peer — the value is returned to its
//! callers but not stored, so a load that read the database before a write never plants the
//! old value after the write's invalidation. The `_optional` variants cache `Ok(None)` as a
//! negative entry when [`StoreOptions::cache_none`] is on. A factory that cannot fail uses
//! [`Cache::get_or_create_with`] (and `_with_sync`), which takes the value itself instead of
//! a `Result`.
//!
//! [`Cache::get_or_create_many`] (and `_sync`) loads many keys with one factory call for
//! those neither cached nor loading ([`BatchEntries`]); each key is still its own flight,
//! shared with single-key callers and other batches and invalidated on its own. Its results
//! are already `Option`s (a key the factory leaves out is `None`, cached as `_optional`
//! loaders cache it), so it has no `_optional` twin. A
//! [removal listener](CacheBuilder::removal_listener) hears of each entry that leaves the
//! store, and why ([`RemovalCause`]).
//!
//! # Invalidating
//!
//! [`Cache::remove`], [`Cache::set`], [`Cache::expire_region`],
//! [`Cache::expire_region_key`] and [`Cache::clear`] act locally and queue the message for
//! every peer before they return. Each returns an [`Invalidation`]: await it to learn whether
//! the backplane took it ([`Propagated`]), or drop it not to wait — the same call serves
//! async and blocking code (in this crate `_sync` means only "blocks the thread"). Only
//! these publish: a load filling a miss, a local expiry or a
//! capacity eviction never does, a region expiry is one message whatever its size, and a peer
//! never re-publishes what it received. Invalidations, not values, travel: nothing on the
//! channel can put data into a cache.
//!
//! # When messages are lost
//!
//! Redis pub/sub delivers at most once. An instance that may have missed an invalidation —
//! its subscription reconnected, ended or went deaf (its own heartbeats stopped coming
//! back), a peer's sequence numbers (or heartbeat, or goodbye) jumped, a peer vanished
//! without a goodbye, its own outbox overflowed while Redis was down — clears its own cache
//! (never the peers') and counts it ([`LossClears`], [`CacheEvent::LossCleared`]) — unless
//! the backplane keeps a replay log (Redis does by default): then, for the losses the log
//! can see (a reconnect, a lagged queue, a dead subscription, a skipped log position), it
//! reads exactly the messages it missed, evicts those keys and keeps everything else
//! ([`LossRepairs`], [`CacheEvent::LossRepaired`]); it clears only when the log cannot cover
//! the gap. With a
//! [`BackplaneOptions::signing_key`], messages are authenticated and others refused. With
//! [`BackplaneOptions::max_staleness`] set, reads bypass the cache while the backplane has
//! been down that long. [`Cache::stats`] has the counters and the propagation-lag histogram
//! (publish on the origin → applied here), so the staleness window is a measured number.
//!
//! # Configuration
//!
//! [`CacheOptions`] deserializes with serde from any config format, with human durations
//! (`"15m"`) and an error for unknown fields. It composes each layer's own options: the
//! store's ([`StoreOptions`], at the top level of a file), the propagation's
//! ([`BackplaneOptions`], `[backplane]`) and, with the `redis` feature, the Redis backplane's
//! (`RedisConfig`, `[backplane.redis]`):
//!
//! ```
//! use std::time::Duration;
//!
//! let options: nearcache::CacheOptions = serde_json::from_str(r#"{
//!     "time_to_idle": "15m",
//!     "backplane": { "max_staleness": "30s" }
//! }"#)?;
//! assert_eq!(options.store.time_to_idle, Some(Duration::from_secs(900)));
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! docs/configuration.md lists every option by layer, with a full example.
//!
//! # Features
//!
//! - `derive` (default): `#[derive(CacheKey)]` for your own key types.
//! - `redis`: `RedisBackplane`, `RedisConfig` and `CacheBuilder::connect`.
//! - `tls`: `rediss://` for the Redis backplane (implies `redis`).
//! - `metrics`: `nearcache_*` series through the `metrics` facade, labelled `cache` and
//!   `instance` (`Cache::export_metrics`; names and alerts in docs/operations.md).
//! - `test-util`: test hooks, not part of the semver-stable API: a mock clock for expiry
//!   (`CacheBuilder::clock`), `Cache::flight_waiters`, `Cache::stopped`, and the fault
//!   injection of [`InMemoryBackplane`] (`drop_next`, `disconnect`, `inject`,
//!   `hold_publishes`, ...). Turn it on in `[dev-dependencies]` only.
//!
//! The repository's README runs a scale-out demo
//! (`cargo run --release --example scale_out`) that measures all of this and checks that no
//! instance serves a stale read; its `docs/` list each guarantee with the test that shows it.
//!
//! # Keys
//!
//! A cache key is text that every instance computes the same way: [`cache_key!`] builds
//! `Type:method-arg1-arg2` keys, [`Key::of`] turns one value into a key, and
//! `#[derive(CacheKey)]` (feature `derive`, on by default) makes your own types usable as
//! arguments. Key text is injective (distinct arguments never share a key), case-sensitive,
//! stable across builds, and readable; the grammar is in [`nearcache_keys`'s
//! docs](nearcache_keys#grammar).
//!
//! ```
//! use nearcache::{CacheKey, Key, cache_key};
//!
//! #[derive(CacheKey)]
//! struct ProductQuery {
//!     catalog: String,
//!     term: String,
//!     page: u32,
//! }
//!
//! struct ProductService;
//!
//! let query = ProductQuery { catalog: "c1".into(), term: "red shoes".into(), page: 2 };
//! let key: Key = cache_key!(ProductService, "search", &query);
//! assert_eq!(key.as_str(), "ProductService:search-(c1-red shoes-2)");
//! assert_eq!(cache_key!(ProductService, "get", &42).as_str(), "ProductService:get-42");
//! assert_eq!(query.catalog.key_text(), "c1"); // what a region sub-key is made of
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod builder;
mod cache;
mod error;
mod events;
mod health;
mod identity;
mod infallible;
mod invalidation;
mod metrics;
mod options;
mod propagation;
mod stats;

pub use builder::CacheBuilder;
pub use cache::Cache;
pub use error::{
    BuildError, FactoryTimeout, FactoryTimeoutDetails, LoadError, OptionsError, TypeMismatch,
    TypeMismatchDetails, WouldDeadlock, WouldDeadlockDetails,
};
pub use events::{CacheEvent, ClearCause};
pub use health::{Coherence, Health, PeerHealth};
pub use invalidation::{Invalidation, Propagated, WaitPublished};
pub use options::{
    BackplaneOptions, CacheOptions, LossPolicy, OnHardTimeout, Secret, StoreOptions,
};
pub use stats::{
    CacheStats, InvalidationKinds, LagSummary, LossClears, LossRepairs, PropagationStats,
    StoreStats,
};

// ---- Keys: nearcache-keys and nearcache-derive --------------------------------------------
// The trait and the derive macro share the name `CacheKey` (type and macro namespaces), as
// serde's `Serialize` does.

#[doc(inline)]
pub use nearcache_keys::{CacheKey, CompositeWriter, Key, KeyBuilder, KeyWriter, cache_key};

#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use nearcache_derive::CacheKey;
// ---- end of Keys ----------------------------------------------------------------------------

// ---- regions and entries ----
pub use nearcache_regions::{ChangeToken, Region, SubKey, SubKeyText, region};
#[allow(deprecated)]
pub use nearcache_store::Entry;
pub use nearcache_store::{BatchEntries, EntryOptions, Loaded, RemovalCause, Source};

// ---- backplanes ----
pub use nearcache_backplane::wire::InstanceId;
pub use nearcache_backplane::{Backplane, BackplaneError, BackplaneEvent, InMemoryBackplane};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use nearcache_redis::{
    ReconnectBackoff, RedactedUrl, RedisBackplane, RedisBackplaneError, RedisConfig, RedisUrl,
};

/// The repository's README, whose usage example `cargo test` compiles and runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
