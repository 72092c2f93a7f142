//! Fail-safe: a value whose time expired is kept up to `fail_safe_max_duration`, and served
//! in place of a failed load (an error or a panic) to every caller of that flight, then
//! re-armed for `fail_safe_throttle` so the failing source is not called meanwhile. A value
//! that was invalidated (removed, replaced, its region or sub-key expired, the store
//! cleared) is never served by it. Every test runs on a mock clock: no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{BackendDown, Catalog, Gate, key, mock_store, wait_for_waiters};
use nearcache_keys::Key;
use nearcache_store::{LoadError, Mock, Store, StoreOptions};

const SECOND: Duration = Duration::from_secs(1);

/// Fail-safe kept 10 minutes past expiry, re-armed 30 s after each activation.
fn options() -> StoreOptions {
    StoreOptions {
        fail_safe_max_duration: Some(600 * SECOND),
        fail_safe_throttle: 30 * SECOND,
        ..StoreOptions::default()
    }
}

/// Loads `value` under `k`, living 10 s (tied to `Catalog`'s sub-key "c1").
fn load(store: &Store, k: &Key, value: &str) -> Arc<String> {
    let value = value.to_owned();
    store
        .get_or_create_sync(k, |entry| {
            entry.time_to_live(10 * SECOND).region_key::<Catalog>("c1");
            Ok::<_, Infallible>(value)
        })
        .unwrap()
}

/// A get-or-create whose source is down; counts its calls.
fn load_failing(
    store: &Store,
    k: &Key,
    calls: &AtomicU32,
) -> Result<Arc<String>, LoadError<BackendDown>> {
    store.get_or_create_sync(k, |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        Err(BackendDown(n))
    })
}

fn expired(store_and_clock: (Store, Arc<Mock>), k: &Key) -> (Store, Arc<Mock>, Arc<String>) {
    let (store, clock) = store_and_clock;
    let v1 = load(&store, k, "v1");
    clock.increment(11 * SECOND);
    (store, clock, v1)
}

#[test]
fn a_failing_source_gets_the_expired_value_and_is_called_once_per_throttle_window() {
    let k = key("product:1");
    let (store, clock, v1) = expired(mock_store(options()), &k);
    assert!(
        store.get::<String>(&k).unwrap().is_none(),
        "a kept entry is not a hit for get"
    );

    let calls = AtomicU32::new(0);
    let served = load_failing(&store, &k, &calls).unwrap();
    assert!(Arc::ptr_eq(&served, &v1), "the expired value itself");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.stats().fail_safe_activations, 1);
    assert_eq!(store.stats().load_errors, 1, "the failure is still counted");

    // Within the throttle window the source is left alone: every call is served the value.
    for _ in 0..29 {
        clock.increment(SECOND);
        let served = load_failing(&store, &k, &calls).unwrap();
        assert!(Arc::ptr_eq(&served, &v1));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no call during the throttle"
    );

    // Past it, the source is tried again (once), and fails again: served again.
    clock.increment(2 * SECOND);
    let served = load_failing(&store, &k, &calls).unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(store.stats().fail_safe_activations, 2);

    // Once the source is back and the throttle is over, its value replaces the old one.
    clock.increment(31 * SECOND);
    let v2 = load(&store, &k, "v2");
    assert_eq!(*v2, "v2");
    assert!(Arc::ptr_eq(&store.get::<String>(&k).unwrap().unwrap(), &v2));
}

#[tokio::test]
async fn async_callers_and_panicking_factories_get_the_expired_value_too() {
    let k = key("product:2");
    let (store, _clock, v1) = expired(
        mock_store(StoreOptions {
            fail_safe_throttle: Duration::ZERO,
            ..options()
        }),
        &k,
    );
    let served = store
        .get_or_create(&k, async |_| Err::<String, _>(BackendDown(1)))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&served, &v1));

    // A zero throttle re-arms nothing: the next call runs the factory, which panics.
    let served = store
        .get_or_create(&k, async |_| -> Result<String, BackendDown> {
            panic!("the source's driver panicked")
        })
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    let served = store
        .get_or_create_sync(&k, |_| -> Result<String, BackendDown> {
            panic!("the source's driver panicked")
        })
        .unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    assert_eq!(store.stats().fail_safe_activations, 3);
    assert_eq!(
        store.stats().load_abandons,
        0,
        "a served panic abandons nothing"
    );
}

#[test]
fn every_caller_of_the_failing_flight_gets_the_same_expired_value_from_one_call() {
    let k = key("product:3");
    let (store, _clock, v1) = expired(mock_store(options()), &k);
    let calls = AtomicU32::new(0);
    let (gate, opener) = Gate::closed();
    let results = std::thread::scope(|s| {
        let leader = s.spawn(|| {
            store.get_or_create_sync(&k, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.pass_blocking();
                Err::<String, _>(BackendDown(1))
            })
        });
        common::wait_until("the leader runs", 30 * SECOND, || {
            calls.load(Ordering::SeqCst) == 1
        });
        let waiters: Vec<_> = (0..8)
            .map(|_| s.spawn(|| load_failing(&store, &k, &calls)))
            .collect();
        wait_for_waiters(&store, &k, 8);
        opener.open();
        let mut all = vec![leader.join().unwrap()];
        all.extend(waiters.into_iter().map(|w| w.join().unwrap()));
        all
    });
    for result in results {
        assert!(Arc::ptr_eq(&result.unwrap(), &v1));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one factory call for the flight"
    );
    assert_eq!(store.stats().fail_safe_activations, 1);
}

#[test]
fn without_fail_safe_or_past_its_window_the_error_is_shared_as_before() {
    let k = key("product:4");
    let (store, _clock, _v1) = expired(mock_store(StoreOptions::default()), &k);
    let calls = AtomicU32::new(0);
    let error = load_failing(&store, &k, &calls).unwrap_err();
    assert!(matches!(error, LoadError::Factory(e) if *e == BackendDown(1)));

    let (store, clock, _v1) = expired(mock_store(options()), &k);
    clock.increment(600 * SECOND);
    assert!(
        load_failing(&store, &k, &calls).is_err(),
        "the window is over"
    );
    assert_eq!(store.stats().fail_safe_activations, 0);
}

#[test]
fn an_entry_overriding_the_default_keeps_or_drops_its_value() {
    let (store, clock) = mock_store(StoreOptions::default());
    let kept = key("kept");
    let v1 = store
        .get_or_create_sync(&kept, |entry| {
            entry
                .time_to_live(10 * SECOND)
                .fail_safe_max_duration(60 * SECOND);
            Ok::<_, Infallible>(String::from("v1"))
        })
        .unwrap();
    let (fs, fsc) = mock_store(options());
    let dropped = key("dropped");
    fs.get_or_create_sync(&dropped, |entry| {
        entry
            .time_to_live(10 * SECOND)
            .fail_safe_max_duration(Duration::ZERO);
        Ok::<_, Infallible>(String::from("v1"))
    })
    .unwrap();
    clock.increment(30 * SECOND);
    fsc.increment(30 * SECOND);
    let calls = AtomicU32::new(0);
    assert!(Arc::ptr_eq(
        &load_failing(&store, &kept, &calls).unwrap(),
        &v1
    ));
    assert!(load_failing(&fs, &dropped, &calls).is_err());
}

#[test]
fn kept_entries_hold_their_weight_until_the_window_ends_and_the_purger_drops_them() {
    let k = key("product:5");
    let (store, clock, _v1) = expired(mock_store(options()), &k);
    assert_eq!(store.purge_now(), 0, "kept, not purged");
    assert_eq!((store.len(), store.weight()), (1, 1));
    clock.increment(600 * SECOND);
    assert_eq!(store.purge_now(), 1, "past the window: purged");
    assert_eq!(store.len(), 0);
}

/// One way of invalidating a key, by name.
type Invalidation = (&'static str, fn(&Store, &Key));

/// Each way of invalidating `k` after its time expired; none may leave the value for
/// fail-safe.
fn invalidations() -> Vec<Invalidation> {
    vec![
        ("remove", |store, k| {
            store.remove(k);
        }),
        ("region expiry", |store, _| store.expire_region::<Catalog>()),
        ("sub-key expiry", |store, _| {
            store.expire_region_key::<Catalog>("c1")
        }),
        ("clear", |store, _| store.clear()),
        ("region expiry by name", |store, _| {
            store.expire_region_by_name("catalog").unwrap()
        }),
        ("sub-key expiry by name", |store, _| {
            store.expire_region_key_by_name("catalog", "c1").unwrap()
        }),
    ]
}

#[test]
fn an_invalidated_entry_is_never_served_by_fail_safe() {
    for (name, invalidate) in invalidations() {
        let k = key("product:6");
        let (store, _clock, _v1) = expired(mock_store(options()), &k);
        invalidate(&store, &k);
        let calls = AtomicU32::new(0);
        let result = load_failing(&store, &k, &calls);
        assert!(
            matches!(&result, Err(LoadError::Factory(e)) if **e == BackendDown(1)),
            "{name}: {result:?}"
        );
        assert_eq!(store.stats().fail_safe_activations, 0, "{name}");
        store.purge_now();
        assert_eq!(store.len(), 0, "{name}: the purger drops it");
    }
}

#[test]
fn an_invalidation_during_the_failing_load_leaves_nothing_to_serve() {
    for (name, invalidate) in invalidations() {
        let k = key("product:7");
        let (store, _clock, _v1) = expired(mock_store(options()), &k);
        let result = store.get_or_create_sync(&k, |_| {
            invalidate(&store, &k);
            Err::<String, _>(BackendDown(1))
        });
        assert!(result.is_err(), "{name}: {result:?}");
        assert_eq!(store.stats().fail_safe_activations, 0, "{name}");
    }
}

#[test]
fn an_invalidation_during_the_throttle_ends_it() {
    for (name, invalidate) in invalidations() {
        let k = key("product:8");
        let (store, _clock, v1) = expired(mock_store(options()), &k);
        let calls = AtomicU32::new(0);
        assert!(Arc::ptr_eq(&load_failing(&store, &k, &calls).unwrap(), &v1));
        assert!(
            store.get::<String>(&k).unwrap().is_some(),
            "{name}: re-armed"
        );
        invalidate(&store, &k);
        assert!(store.get::<String>(&k).unwrap().is_none(), "{name}");
        assert!(load_failing(&store, &k, &calls).is_err(), "{name}");
    }
}

#[test]
fn a_set_replaces_the_kept_value_for_good() {
    let k = key("product:9");
    let (store, clock, v1) = expired(mock_store(options()), &k);
    store.set_with(k.clone(), String::from("v2"), |entry| {
        entry.time_to_live(5 * SECOND);
    });
    clock.increment(6 * SECOND);
    let calls = AtomicU32::new(0);
    let served = load_failing(&store, &k, &calls).unwrap();
    assert_eq!(*served, "v2", "the set value, expired in turn: never v1");
    assert!(!Arc::ptr_eq(&served, &v1));
}
