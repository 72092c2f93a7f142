//! Helpers shared by the store's integration tests: stores, regions, and gates that let a
//! test hold a factory at a chosen point (deterministic interleavings, no sleeps).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache_keys::Key;
use nearcache_store::{Clock, Mock, Store, StoreOptions};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

pub mod held_load;

nearcache_regions::region! {
    pub Catalog = "catalog";
    pub Pricing = "pricing";
}

/// A store with default options on the real clock.
pub fn store() -> Store {
    store_with(StoreOptions::default())
}

/// A store with `options` on the real clock.
pub fn store_with(options: StoreOptions) -> Store {
    Store::new(options).expect("valid options")
}

/// A store with `enabled: false`: every call runs its factory, nothing is stored.
pub fn disabled_store() -> Store {
    store_with(StoreOptions {
        enabled: false,
        ..StoreOptions::default()
    })
}

/// A store with `cache_none: false`: a load that finds nothing is returned as `None` and
/// not stored.
pub fn store_not_caching_none() -> Store {
    store_with(StoreOptions {
        cache_none: false,
        ..StoreOptions::default()
    })
}

/// A store with `options` on a mock clock, and the handle that moves it.
pub fn mock_store(options: StoreOptions) -> (Store, Arc<Mock>) {
    let (clock, mock) = Clock::mock();
    (
        Store::with_clock(options, clock).expect("valid options"),
        mock,
    )
}

pub fn key(text: &str) -> Key {
    Key::from_text(text)
}

/// A gate that starts closed and opens once, for threads and tasks alike.
#[derive(Clone)]
pub struct Gate(Arc<RwLock<()>>);

/// Opens its gate when dropped (or on [`Opener::open`]).
pub struct Opener(Option<OwnedRwLockWriteGuard<()>>);

impl Gate {
    pub fn closed() -> (Gate, Opener) {
        let lock = Arc::new(RwLock::new(()));
        let guard = Arc::clone(&lock)
            .try_write_owned()
            .expect("a new lock is free");
        (Gate(lock), Opener(Some(guard)))
    }

    /// Blocks the thread until the gate opens (not on an async worker thread).
    pub fn pass_blocking(&self) {
        drop(self.0.blocking_read());
    }

    /// Waits until the gate opens.
    pub async fn pass(&self) {
        drop(self.0.read().await);
    }
}

impl Opener {
    pub fn open(mut self) {
        self.0.take();
    }
}

/// Polls `condition` until it holds, failing the test after `timeout`. For conditions with
/// no signal to await (how many callers have joined a flight).
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `n` callers wait on `key`'s flight.
pub fn wait_for_waiters(store: &Store, key: &Key, n: usize) {
    wait_until(
        &format!("{n} callers wait on {key}"),
        Duration::from_secs(30),
        || store.flight_waiters(key) == Some(n),
    );
}

/// Waits until the purger has served every purge request made so far (a region expiry's,
/// `clear`'s, `purge_now`'s): what they killed is then removed. Fails after 60 s.
pub fn wait_for_purges(store: &Store) {
    let requested = store.purge_progress().requested;
    assert!(
        store.wait_for_purge(|p| p.served >= requested, Duration::from_secs(60)),
        "the purger served the {requested} purge requests made so far"
    );
}

/// A multi-thread runtime for tests that also block threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The error the tests' factories fail with.
#[derive(Debug, PartialEq, Eq)]
pub struct BackendDown(pub u32);

impl std::fmt::Display for BackendDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend down (attempt {})", self.0)
    }
}

impl std::error::Error for BackendDown {}
