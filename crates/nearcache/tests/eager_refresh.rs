//! Eager refresh through the detached loaders: past the threshold, callers keep getting the
//! current value while one background reload runs through the key's single flight, and an
//! invalidation during that reload keeps its value out. Expiry runs on a mock clock; the
//! reload is held at a gate the test opens, and signals when it starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use loader_support::{Catalog, DatabaseDown, SECOND, load_v1_detached, refused};
use nearcache::{Cache, CacheOptions, Key, OptionsError, StoreOptions};
use tokio::sync::{Barrier, Semaphore, mpsc};

mod loader_support;

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// A cache refreshing past 80 % of a 10 s time to live, on a mock clock.
fn cache() -> (Cache, Arc<quanta::Mock>) {
    let (clock, mock) = quanta::Clock::mock();
    let cache = Cache::builder()
        .options(CacheOptions {
            store: StoreOptions {
                eager_refresh_threshold: Some(0.8),
                ..StoreOptions::default()
            },
            ..CacheOptions::default()
        })
        .clock(clock)
        .build()
        .unwrap();
    (cache, mock)
}

/// What the reloading factory shares with the test: its call count, a signal when it
/// starts, and the gate it waits at.
#[derive(Clone)]
struct Reload {
    calls: Arc<AtomicU32>,
    started: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
}

/// Opens the gate for good when dropped, so a failing test never leaves a refresh waiting
/// (the runtime's shutdown waits for its blocking pool).
struct OpenOnDrop(Arc<Semaphore>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Reload {
    /// A guard that opens the gate for good when the test ends, however it ends.
    fn opener(&self) -> OpenOnDrop {
        OpenOnDrop(Arc::clone(&self.gate))
    }

    fn new() -> (Reload, mpsc::UnboundedReceiver<()>) {
        let (started, rx) = mpsc::unbounded_channel();
        let reload = Reload {
            calls: Arc::new(AtomicU32::new(0)),
            started,
            gate: Arc::new(Semaphore::new(0)),
        };
        (reload, rx)
    }

    async fn call(self, cache: &Cache, k: &Key) -> Arc<u64> {
        cache
            .get_or_create_detached(k, async move |entry| {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let _ = self.started.send(());
                let _permit = self.gate.acquire().await;
                entry.time_to_live(10 * SECOND).region::<Catalog>();
                Ok::<_, DatabaseDown>(2_u64)
            })
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_callers_past_the_threshold_get_the_current_value_and_one_refresh_runs() {
    let (cache, clock) = cache();
    let k = Key::from_text("hot");
    let v1 = load_v1_detached(&cache, &k).await;
    clock.increment(8_500 * Duration::from_millis(1));

    let (reload, mut started) = Reload::new();
    let _open = reload.opener();
    let barrier = Arc::new(Barrier::new(100));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, k, reload, barrier) = (
                cache.clone(),
                k.clone(),
                reload.clone(),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                reload.call(&cache, &k).await
            })
        })
        .collect();
    for caller in callers {
        let got = within("a caller", caller).await.unwrap();
        assert!(
            Arc::ptr_eq(&got, &v1),
            "every caller gets the current value"
        );
    }
    within("the refresh to start", started.recv())
        .await
        .unwrap();
    assert_eq!(reload.calls.load(Ordering::SeqCst), 1, "one refresh");
    assert_eq!(cache.stats().store.eager_refreshes, 1);

    // Past expiry, a foreground caller joins the refresh (or finds its value): no second
    // load either way.
    reload.gate.add_permits(1);
    clock.increment(2 * SECOND);
    let foreground_calls = AtomicU32::new(0);
    let got = cache
        .get_or_create(&k, async |_| {
            foreground_calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DatabaseDown>(99_u64)
        })
        .await
        .unwrap();
    assert_eq!(*got, 2, "the refreshed value");
    assert_eq!(foreground_calls.load(Ordering::SeqCst), 0);
    assert_eq!(reload.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.stats().store.loads,
        2,
        "the first load and the refresh"
    );
}

/// Polls until no load of `k` is in progress (no signal marks the end of a background
/// refresh's store).
async fn until_no_load(cache: &Cache, k: &Key) {
    let deadline = Instant::now() + WAIT;
    while cache.flight_waiters(k).is_some() {
        assert!(Instant::now() < deadline, "the refresh did not finish");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_the_background_refresh_keeps_its_value_out() {
    for region_expiry in [false, true] {
        let (cache, clock) = cache();
        let k = Key::from_text("hot");
        let v1 = load_v1_detached(&cache, &k).await;
        clock.increment(9 * SECOND);
        let (reload, mut started) = Reload::new();
        let _open = reload.opener();
        let got = reload.clone().call(&cache, &k).await;
        assert!(Arc::ptr_eq(&got, &v1));
        within("the refresh to start", started.recv())
            .await
            .unwrap();
        if region_expiry {
            cache.expire_region::<Catalog>().await;
        } else {
            cache.remove(&k).await;
        }
        reload.gate.add_permits(1);
        until_no_load(&cache, &k).await;
        assert!(
            cache.get::<u64>(&k).unwrap().is_none(),
            "region expiry {region_expiry}: the refresh's value is not stored"
        );
        assert_eq!(cache.stats().store.inserts_rejected_stale, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_caller_outside_the_runtime_refreshes_on_the_caches_runtime() {
    let (cache, clock) = cache();
    let k = Key::from_text("hot");
    let v1 = load_v1_detached(&cache, &k).await;
    clock.increment(9 * SECOND);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn({
        let (cache, k) = (cache.clone(), k.clone());
        move || {
            cache.get_or_create_detached_sync(&k, move |entry| {
                tx.send(()).unwrap();
                entry.time_to_live(10 * SECOND);
                Ok::<_, DatabaseDown>(2_u64)
            })
        }
    });
    let got = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&got, &v1), "the caller gets the current value");
    tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT).expect("the refresh ran"))
        .await
        .unwrap();
    until_no_load(&cache, &k).await;
    assert_eq!(*cache.get::<u64>(&k).unwrap().unwrap(), 2, "refreshed");
    assert_eq!(cache.stats().store.eager_refreshes, 1);
}

#[test]
fn a_cache_built_outside_a_runtime_refreshes_nothing_early() {
    let (cache, clock) = cache();
    let k = Key::from_text("hot");
    let calls = Arc::new(AtomicU32::new(0));
    let load = |value: u64| {
        let calls = Arc::clone(&calls);
        move |entry: &mut nearcache::EntryOptions| {
            calls.fetch_add(1, Ordering::SeqCst);
            entry.time_to_live(10 * SECOND);
            Ok::<_, DatabaseDown>(value)
        }
    };
    let v1 = cache.get_or_create_detached_sync(&k, load(1)).unwrap();
    clock.increment(9 * SECOND);
    let got = cache.get_or_create_detached_sync(&k, load(2)).unwrap();
    assert!(Arc::ptr_eq(&got, &v1));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing ran the refresh");
    assert_eq!(cache.stats().store.eager_refreshes, 0);
}

#[test]
fn an_eager_refresh_threshold_outside_0_to_1_is_refused() {
    for bad in [0.0, 1.0, 1.2, -0.3] {
        let error = refused("eager_refresh_threshold", |store| {
            store.eager_refresh_threshold = Some(bad)
        });
        assert!(
            matches!(error, OptionsError::EagerRefreshThreshold { .. }),
            "{bad}: {error:?}"
        );
    }
}
