//! Fail-safe and the hard timeout through the facade: an expired value stands in for a failed
//! or timed-out load, but never one a peer invalidated (through the in-memory backplane).
//! Expiry runs on a mock clock; the hard timeout on tokio's real timers, against factories
//! that never finish (so only the timeout can end them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use invalidation_support::How;
use loader_support::{
    Catalog, DatabaseDown, SECOND, pair_on_a_mock_clock, refused, with_hard_timeout,
};
use nearcache::{
    Cache, CacheEvent, CacheOptions, Key, LoadError, OptionsError, Propagated, StoreOptions,
};
use tokio::sync::broadcast;

mod invalidation_support;
mod loader_support;

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn options() -> CacheOptions {
    let mut options = CacheOptions {
        store: StoreOptions {
            fail_safe_max_duration: Some(600 * SECOND),
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    };
    options.backplane.heartbeat_interval = Duration::from_secs(3600);
    options
}

/// Two instances on one bus, on one mock clock.
async fn pair() -> (Cache, Cache, Arc<quanta::Mock>) {
    let (a, b, mock) = pair_on_a_mock_clock(options);
    within("a", a.ready()).await;
    within("b", b.ready()).await;
    (a, b, mock)
}

async fn applied(events: &mut broadcast::Receiver<CacheEvent>) {
    within("a peer's message to be applied", async {
        while !matches!(events.recv().await.unwrap(), CacheEvent::Applied { .. }) {}
    })
    .await;
}

/// Loads version 1 of `k`, living 10 s, tied to `Catalog`'s sub-key "c1".
async fn load_v1(cache: &Cache, k: &Key) -> Arc<u64> {
    cache
        .get_or_create(k, async |entry| {
            entry.time_to_live(10 * SECOND).region_key::<Catalog>("c1");
            Ok::<_, DatabaseDown>(1_u64)
        })
        .await
        .unwrap()
}

async fn load_failing(cache: &Cache, k: &Key) -> Result<Arc<u64>, LoadError<DatabaseDown>> {
    cache
        .get_or_create(k, async |_| Err::<u64, _>(DatabaseDown))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_peer_invalidated_is_never_served_by_fail_safe() {
    // The control: with no invalidation, the expired value stands in for the failed load.
    let (_a, b, clock) = pair().await;
    let k = Key::from_text("product:1");
    let v1 = load_v1(&b, &k).await;
    clock.increment(11 * SECOND);
    assert!(b.get::<u64>(&k).unwrap().is_none());
    assert!(Arc::ptr_eq(&load_failing(&b, &k).await.unwrap(), &v1));
    assert_eq!(b.stats().store.fail_safe_activations, 1);

    for how in How::ALL {
        let (a, b, clock) = pair().await;
        let mut events = b.events();
        load_v1(&b, &k).await;
        clock.increment(11 * SECOND);
        let published = how.invalidate::<Catalog>(&a, &k, "c1").await;
        assert_eq!(published, Propagated::Published, "{how:?}");
        applied(&mut events).await;
        let result = load_failing(&b, &k).await;
        assert!(
            matches!(&result, Err(LoadError::Factory(e)) if **e == DatabaseDown),
            "{how:?}: {result:?}"
        );
        assert_eq!(b.stats().store.fail_safe_activations, 0, "{how:?}");
    }
}

/// Signals when the factory's future is dropped.
struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_cancels_the_factory_and_its_callers_get_a_timeout_error() {
    let cache = with_hard_timeout(Duration::from_millis(50));
    let k = Key::from_text("slow");
    let (tx, cancelled) = tokio::sync::oneshot::channel();
    let result = cache
        .get_or_create(&k, async |_| {
            let _signal = Dropped(Some(tx));
            std::future::pending::<Result<u64, DatabaseDown>>().await
        })
        .await;
    match result {
        Err(LoadError::Timeout(timeout)) => {
            assert_eq!(timeout.after, Duration::from_millis(50));
            assert!(timeout.to_string().contains("hard_timeout"), "{timeout}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    within("the factory's future to be dropped", cancelled)
        .await
        .unwrap();
    let stats = cache.stats().store;
    assert_eq!((stats.hard_timeouts, stats.fail_safe_activations), (1, 0));
    assert!(cache.get::<u64>(&k).unwrap().is_none(), "nothing cached");

    // Every caller of a timed-out flight gets the timeout; no caller hangs.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (cache, k) = (cache.clone(), k.clone());
            tokio::spawn(async move {
                cache
                    .get_or_create(&k, async |_| {
                        std::future::pending::<Result<u64, DatabaseDown>>().await
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        let result = within("a caller", caller).await.unwrap();
        assert!(matches!(result, Err(LoadError::Timeout(_))), "{result:?}");
    }
    let stats = cache.stats().store;
    assert!(
        (2..=9).contains(&stats.hard_timeouts) && stats.loads == stats.hard_timeouts,
        "one timeout per flight: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_with_fail_safe_serves_the_expired_value() {
    let (clock, mock) = quanta::Clock::mock();
    let cache = Cache::builder()
        .options(CacheOptions {
            store: StoreOptions {
                hard_timeout: Some(Duration::from_millis(50)),
                ..options().store
            },
            ..options()
        })
        .clock(clock)
        .build()
        .unwrap();
    let k = Key::from_text("slow");
    let v1 = load_v1(&cache, &k).await;
    mock.increment(11 * SECOND);
    let served = cache
        .get_or_create(&k, async |_| {
            std::future::pending::<Result<u64, DatabaseDown>>().await
        })
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    let stats = cache.stats().store;
    assert_eq!((stats.hard_timeouts, stats.fail_safe_activations), (1, 1));
    assert!(
        Arc::ptr_eq(&cache.get::<u64>(&k).unwrap().unwrap(), &v1),
        "re-armed for the throttle"
    );
}

#[test]
fn a_zero_hard_timeout_is_refused_with_its_name() {
    let error = refused("hard_timeout", |store| {
        store.hard_timeout = Some(Duration::ZERO)
    });
    assert!(matches!(error, OptionsError::ZeroHardTimeout), "{error:?}");
}
