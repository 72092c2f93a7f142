//! What the tests on a real Redis share (one server, a Cluster or Sentinels): a quick Redis
//! config, subscribed caches, product keys, a "database" of versioned products read
//! cache-aside, and waiting for a cache's events with a deadline (nothing sleeps to let
//! something happen).
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nearcache::{
    Cache, CacheEvent, CacheOptions, InstanceId, Key, PropagationStats, ReconnectBackoff,
    RedisBackplane, RedisConfig, cache_key,
};
use tokio::sync::broadcast;

/// How long one expected event may take unless the test says otherwise
/// ([`Events::with_wait`]); generous for a loaded 2-core CI machine.
pub(crate) const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The publish timeout of every instance: short, so an outage costs little test time.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_millis(300);

/// The Redis config of application `app` on `url` for tests: short timeouts (an outage
/// costs little test time), reconnects from 10 ms doubling up to `reconnect_max`, and no
/// replay log (the log-less path: every loss is a counted clear, payloads travel unframed;
/// tests that want the log set its length).
pub(crate) fn quick_config(url: String, app: &str, reconnect_max: Duration) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        connect_timeout: Duration::from_secs(2),
        publish_timeout: PUBLISH_TIMEOUT,
        ping_interval: Duration::from_millis(100),
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(10),
            max: reconnect_max,
            jitter: 0.5,
        },
        replay_log_len: 0,
        ..RedisConfig::for_app(app)
    }
}

/// A cache with `options` on `backplane`, once it has subscribed (within `wait`).
pub(crate) async fn subscribed(
    options: CacheOptions,
    backplane: RedisBackplane,
    wait: Duration,
) -> Cache {
    let cache = Cache::builder()
        .options(options)
        .backplane(backplane)
        .build()
        .expect("valid options inside a runtime");
    tokio::time::timeout(wait, cache.ready())
        .await
        .expect("the cache subscribes within the deadline");
    cache
}

struct Product;

pub(crate) fn product(id: u32) -> Key {
    cache_key!(Product, "get", &id)
}

pub(crate) fn stats(cache: &Cache) -> PropagationStats {
    cache.stats().propagation.expect("a cache with a backplane")
}

/// Runs a blocking harness call without stalling the runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// One cache's events, with "wait for this one" helpers that fail after the wait
/// ([`EVENT_WAIT`] unless set).
pub(crate) struct Events {
    name: &'static str,
    rx: broadcast::Receiver<CacheEvent>,
    wait: Duration,
}

impl Events {
    pub(crate) fn of(name: &'static str, cache: &Cache) -> Self {
        Self {
            name,
            rx: cache.events(),
            wait: EVENT_WAIT,
        }
    }

    /// The same, waiting up to `wait` for each event.
    pub(crate) fn with_wait(self, wait: Duration) -> Self {
        Self { wait, ..self }
    }

    /// Skips events until `pick` returns `Some`.
    pub(crate) async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&CacheEvent) -> Option<T>,
    ) -> T {
        let wait = self.wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("{}: no {what} within {wait:?}", self.name),
                Ok(Err(err)) => panic!(
                    "{}: events ended or lagged ({err}) before {what}",
                    self.name
                ),
                Ok(Ok(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
            }
        }
    }

    /// The next message from `origin` applied here; returns how many invalidations it carried.
    pub(crate) async fn applied_from(&mut self, origin: InstanceId) -> u64 {
        self.until("Applied", |event| match event {
            CacheEvent::Applied {
                origin: from,
                invalidations,
                ..
            } if *from == origin => Some(*invalidations),
            _ => None,
        })
        .await
    }
}

/// The "database" behind the caches: product `i` has version `versions[i]`.
pub(crate) struct Db {
    versions: Vec<AtomicU32>,
}

impl Db {
    pub(crate) fn new(products: usize) -> Arc<Self> {
        Arc::new(Self {
            versions: (0..products).map(|_| AtomicU32::new(1)).collect(),
        })
    }

    pub(crate) fn get(&self, id: u32) -> u32 {
        self.versions[id as usize].load(Ordering::SeqCst)
    }

    pub(crate) fn bump(&self, id: u32) -> u32 {
        self.versions[id as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Cache-aside read of product `id` from `db`.
pub(crate) async fn load(cache: &Cache, db: &Db, id: u32) -> u32 {
    *cache
        .get_or_create_with(product(id), async |_| db.get(id))
        .await
        .unwrap()
}

/// Caches products `ids` on each of `caches` (a miss each, read from `db`).
pub(crate) async fn load_everywhere(caches: &[&Cache], db: &Db, ids: std::ops::Range<u32>) {
    for cache in caches {
        for id in ids.clone() {
            load(cache, db, id).await;
        }
    }
}

pub(crate) fn cached(cache: &Cache, id: u32) -> Option<u32> {
    cache.get::<u32>(product(id)).unwrap().as_deref().copied()
}

/// Every entry `cache` holds for products `0..n` is the database's current version.
pub(crate) fn assert_nothing_stale(name: &str, cache: &Cache, db: &Db, n: u32) {
    for id in 0..n {
        if let Some(version) = cached(cache, id) {
            assert_eq!(version, db.get(id), "{name} serves a stale product {id}");
        }
    }
}
