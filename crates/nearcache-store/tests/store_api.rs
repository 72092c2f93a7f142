//! The rest of the store's contract: typed reads, pass-through, negative caching, capacity,
//! weights, read bypass, bad input, and the counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::held_load::{Ties, hold_outcome};
use common::{
    BackendDown, Gate, disabled_store, key, runtime, store, store_not_caching_none, store_with,
    wait_for_waiters,
};
use nearcache_keys::Key;
use nearcache_store::{LoadError, OptionsError, Store, StoreOptions};

#[test]
fn reading_a_key_as_another_type_is_a_typed_error() {
    let store = store();
    let k = key("k");
    store.set(k.clone(), String::from("text"));
    let mismatch = store.get::<u64>(&k).unwrap_err();
    assert_eq!(mismatch.key, k);
    assert_eq!(mismatch.expected, "u64");
    assert_eq!(mismatch.found, "alloc::string::String");

    let calls = AtomicUsize::new(0);
    let loaded = store.get_or_create_sync(&k, |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Infallible>(5_u64)
    });
    assert_a_mismatch_and_no_load(loaded, &calls, "no load over a value of another type");
    let rt = runtime();
    let loaded = rt.block_on(store.get_or_create(&k, async |_| Ok::<_, Infallible>(5_u64)));
    assert!(matches!(loaded, Err(LoadError::TypeMismatch(_))));
    assert_eq!(
        *store.get::<String>(&k).unwrap().unwrap(),
        "text",
        "untouched"
    );
}

#[test]
fn a_cached_none_read_as_another_type_names_the_type_it_is_a_none_of() {
    let store = store();
    let k = key("k");
    let none = store.get_or_create_optional_sync(&k, |_| Ok::<Option<u32>, Infallible>(None));
    assert!(none.unwrap().is_none());
    assert_eq!(store.get_optional::<u32>(&k).unwrap(), Some(None));
    let mismatch = store.get_optional::<String>(&k).unwrap_err();
    assert_eq!(
        (mismatch.expected, mismatch.found),
        ("alloc::string::String", "u32")
    );
    let optional = store.get_or_create_optional_sync(&k, |_| Ok::<_, Infallible>(Some(1_u8)));
    match optional {
        Err(LoadError::TypeMismatch(m)) => assert_eq!(m.found, "u32"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

/// A caller asking for a `u64` that joins a load of a `String` gets a `TypeMismatch` naming
/// both types once that load ends: not a panic, not the other type's value, and its own factory
/// is never called (the key holds a value; it is not this caller's to replace).
#[test]
fn a_waiter_asking_for_another_type_gets_a_mismatch_not_a_panic() {
    let calls = Arc::new(AtomicUsize::new(0));
    let waiter_calls = Arc::clone(&calls);
    let (store, k, led, got) =
        a_waiter_of_a_held_leader(Ok(String::from("text")), move |store, k| {
            store.get_or_create_sync(k, |_| {
                waiter_calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(5_u64)
            })
        });
    assert_eq!(*led.unwrap(), "text");
    assert_a_mismatch_and_no_load(got, &calls, "the waiter's factory never ran");
    assert_eq!(*store.get::<String>(&k).unwrap().unwrap(), "text");
}

/// Asserts that a `u64` caller of a key holding a `String` got a `TypeMismatch` naming both
/// types, and that its factory (which counts its runs in `calls`) never ran: `why` says why.
fn assert_a_mismatch_and_no_load(
    loaded: Result<Arc<u64>, LoadError<Infallible>>,
    calls: &AtomicUsize,
    why: &str,
) {
    match loaded {
        Err(LoadError::TypeMismatch(m)) => {
            assert_eq!((m.expected, m.found), ("u64", "alloc::string::String"));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "{why}");
}

/// What the leader of a held load got.
type Led<L> = Result<Arc<L>, LoadError<BackendDown>>;

/// Runs `waiter` as a second caller of one key while a leader's load is held open, then lets
/// the leader's factory return `outcome`; returns the store, the key, what the leader got and
/// what the waiter got.
fn a_waiter_of_a_held_leader<L, R>(
    outcome: Result<L, BackendDown>,
    waiter: impl FnOnce(&Store, &Key) -> R + Send + 'static,
) -> (Store, Key, Led<L>, R)
where
    L: Send + Sync + 'static,
    R: Send + 'static,
{
    let store = store();
    let k = key("k");
    let leader = hold_outcome(&store, &k, Ties::Nothing, outcome);
    let waiter = {
        let (store, k) = (store.clone(), k.clone());
        std::thread::spawn(move || waiter(&store, &k))
    };
    wait_for_waiters(&store, &k, 1);
    leader.release.open();
    let led = leader.caller.join().unwrap();
    let got = waiter.join().unwrap();
    (store, k, led, got)
}

/// [`a_waiter_of_a_held_leader`] whose leader's load of an `L` fails with `BackendDown`.
fn a_waiter_of_a_failing_leader<L, R>(
    waiter: impl FnOnce(&Store, &Key) -> R + Send + 'static,
) -> (Store, Key, R)
where
    L: Send + Sync + 'static,
    R: Send + 'static,
{
    let (store, k, led, got) = a_waiter_of_a_held_leader::<L, R>(Err(BackendDown(1)), waiter);
    assert!(matches!(led, Err(LoadError::Factory(_))));
    (store, k, got)
}

/// A waiter whose error type is not the failed leader's cannot be handed that error; nothing
/// is stored under the key either, so it is no type mismatch: the waiter loads for itself.
#[test]
fn a_waiter_with_another_error_type_loads_for_itself_when_the_leader_fails() {
    let (_, _, got) = a_waiter_of_a_failing_leader::<String, _>(|store, k| {
        store.get_or_create_sync(k, |_| Err::<u64, _>(std::fmt::Error))
    });
    match got {
        Err(LoadError::Factory(e)) => assert_eq!(*e, std::fmt::Error),
        other => panic!("expected the waiter's own factory error, got {other:?}"),
    }
}

/// The same for an infallible loader joining a fallible load: it gets its own value.
#[test]
fn an_infallible_waiter_of_a_failed_load_gets_its_own_value() {
    let (store, k, got) = a_waiter_of_a_failing_leader::<u64, _>(|store, k| {
        store.get_or_create_sync(k, |_| Ok::<u64, Infallible>(7))
    });
    assert_eq!(*got.unwrap(), 7);
    assert_eq!(*store.get::<u64>(&k).unwrap().unwrap(), 7);
}

#[test]
fn a_disabled_store_runs_the_factory_every_time_and_stores_nothing() {
    let store = disabled_store();
    let k = key("k");
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let value = store
            .get_or_create_sync(&k, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(1_u8)
            })
            .unwrap();
        assert_eq!(*value, 1);
    }
    let failed = store.get_or_create_sync(&k, |_| Err::<u8, _>(BackendDown(0)));
    assert!(matches!(failed, Err(LoadError::Factory(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(!store.set(k.clone(), 2_u8));
    assert!(store.get::<u8>(&k).unwrap().is_none());
    assert!(store.is_empty());
    let stats = store.stats();
    assert_eq!((stats.loads, stats.misses, stats.load_errors), (4, 5, 1));
}

#[test]
fn cache_none_on_stores_a_negative_entry() {
    let store = store();
    let k = key("missing");
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let found = store
            .get_or_create_optional_sync(&k, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, Infallible>(None)
            })
            .unwrap();
        assert!(found.is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the None was cached");
    assert_eq!(store.get_optional::<String>(&k).unwrap(), Some(None));
    assert_eq!(store.get::<String>(&k).unwrap(), None);
    assert!(
        store.get_optional::<u8>(&k).is_err(),
        "a cached None is typed too"
    );

    // A plain loader cannot use a cached None: it loads and replaces it.
    let value = store
        .get_or_create_sync(&k, |_| Ok::<_, Infallible>(String::from("now here")))
        .unwrap();
    assert_eq!(*value, "now here");
    let read = store.get_or_create_optional_sync(&k, |_| Ok::<Option<String>, Infallible>(None));
    assert!(Arc::ptr_eq(&read.unwrap().unwrap(), &value));
}

#[test]
fn cache_none_off_returns_none_without_storing_it() {
    let store = store_not_caching_none();
    let k = key("missing");
    let calls = AtomicUsize::new(0);
    let rt = runtime();
    for _ in 0..3 {
        let found = rt
            .block_on(store.get_or_create_optional(&k, async |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, Infallible>(None)
            }))
            .unwrap();
        assert!(found.is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(store.get_optional::<String>(&k).unwrap(), None);
    let some = store
        .get_or_create_optional_sync(&k, |_| Ok::<_, Infallible>(Some(String::from("v"))))
        .unwrap();
    assert_eq!(some.as_deref().map(String::as_str), Some("v"));
    assert!(
        store.get::<String>(&k).unwrap().is_some(),
        "values are still stored"
    );
}

#[test]
fn capacity_evictions_are_counted() {
    let store = store_with(StoreOptions {
        max_capacity: 100,
        ..StoreOptions::default()
    });
    for i in 0..1_000_u32 {
        store.set(key(&format!("k{i}")), i);
    }
    assert!(store.len() <= 100, "{} entries", store.len());
    let stats = store.stats();
    assert_eq!(stats.inserts, 1_000);
    assert_eq!(stats.evictions, 1_000 - store.len() as u64);
}

#[test]
fn a_weight_budget_bounds_total_weight_and_refuses_too_heavy_entries() {
    let store = store_with(StoreOptions {
        max_weight: Some(1_000),
        shards: Some(1),
        ..StoreOptions::default()
    });
    assert_eq!(store.capacity(), 1_000);
    assert_eq!(store.max_entry_weight(), 970, "97 % of the one shard");
    let heavy = key("heavy");
    let value = store
        .get_or_create_sync(&heavy, |e| {
            e.weight(971);
            Ok::<_, Infallible>(vec![0_u8; 971])
        })
        .unwrap();
    assert_eq!(value.len(), 971, "returned to the caller");
    assert!(
        store.get::<Vec<u8>>(&heavy).unwrap().is_none(),
        "but not stored"
    );
    assert_eq!(store.stats().inserts_rejected_too_heavy, 1);
    assert!(!store.set_with(key("heavy-set"), 0_u8, |e| {
        e.weight(u32::MAX);
    }));
    assert_eq!(store.stats().inserts_rejected_too_heavy, 2);

    assert!(store.set_with(key("fits"), 0_u8, |e| {
        e.weight(970);
    }));
    assert_eq!(store.weight(), 970);
    for i in 0..10 {
        store.set_with(key(&format!("w{i}")), i, |e| {
            e.weight(100);
        });
    }
    assert!(store.weight() <= 1_000, "weight {}", store.weight());
    assert!(store.stats().evictions > 0);
}

#[test]
fn read_bypass_misses_and_loads_without_storing_but_keeps_single_flight() {
    let store = store();
    let k = key("k");
    store.set(k.clone(), 1_u32);
    store.set_read_bypass(true);
    assert!(store.is_read_bypassed());
    assert!(store.get::<u32>(&k).unwrap().is_none(), "reads miss");

    let calls = Arc::new(AtomicUsize::new(0));
    let (release, opener) = Gate::closed();
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (store, k, counter, release) = (
                store.clone(),
                k.clone(),
                Arc::clone(&calls),
                release.clone(),
            );
            let handle = std::thread::spawn(move || {
                store.get_or_create_sync(&k, |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    release.pass_blocking();
                    Ok::<_, Infallible>(2_u32)
                })
            });
            if i == 0 {
                common::wait_until(
                    "the leader runs",
                    std::time::Duration::from_secs(10),
                    || calls.load(Ordering::SeqCst) == 1,
                );
            }
            handle
        })
        .collect();
    wait_for_waiters(&store, &k, 3);
    opener.open();
    for caller in callers {
        assert_eq!(*caller.join().unwrap().unwrap(), 2);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "still one flight");

    store.set_read_bypass(false);
    assert_eq!(
        *store.get::<u32>(&k).unwrap().unwrap(),
        1,
        "the bypassed load stored nothing"
    );
}

#[test]
fn zero_capacity_is_a_typed_error() {
    let error = Store::new(StoreOptions {
        max_capacity: 0,
        ..StoreOptions::default()
    })
    .unwrap_err();
    assert!(matches!(error, OptionsError::ZeroCapacity));
    assert!(matches!(
        Store::new(StoreOptions {
            max_weight: Some(0),
            ..StoreOptions::default()
        }),
        Err(OptionsError::ZeroWeight)
    ));
}

#[test]
fn huge_keys_are_accepted() {
    let store = store();
    let huge = key(&"k".repeat(1 << 20));
    assert!(store.set(huge.clone(), 1_u8));
    assert_eq!(*store.get::<u8>(&huge).unwrap().unwrap(), 1);
    let copy = key(&"k".repeat(1 << 20));
    assert_eq!(
        *store.get::<u8>(&copy).unwrap().unwrap(),
        1,
        "found by text"
    );
    assert!(store.remove(&copy));
    assert!(store.is_empty());
}

#[test]
fn remove_reports_whether_a_live_entry_went() {
    let store = store();
    let k = key("k");
    assert!(!store.remove(&k));
    store.set(k.clone(), 1_u8);
    assert!(store.remove(&k));
    assert!(store.get::<u8>(&k).unwrap().is_none());
    store.set(k.clone(), 1_u8);
    store.clear();
    assert!(!store.remove(&k), "a dead entry is not a removal");
    let stats = store.stats();
    assert_eq!(stats.removals, 1);
    assert_eq!(stats.expirations, 1);
}

#[test]
fn reads_of_cached_nones_and_other_types_are_one_hit_each() {
    // The hit path hands anything but a value of the caller's type to a cold path that
    // reads the entry again; each call must still count once.
    let store = store();
    let (none, text) = (key("none"), key("text"));
    store
        .get_or_create_optional_sync(&none, |_| Ok::<Option<u8>, Infallible>(None))
        .unwrap();
    store.set(text.clone(), String::from("t"));
    let before = store.stats();
    assert_eq!(store.get::<u8>(&none).unwrap(), None);
    assert_eq!(store.get_optional::<u8>(&none).unwrap(), Some(None));
    assert!(store.get::<u8>(&text).is_err());
    assert!(store.get_optional::<u8>(&text).is_err());
    let optional = store.get_or_create_optional_sync(&none, |_| Ok::<_, Infallible>(Some(1_u8)));
    assert_eq!(optional.unwrap(), None, "a cached None of u8 is a hit here");
    let loaded = store.get_or_create_sync(&text, |_| Ok::<_, Infallible>(1_u8));
    assert!(matches!(loaded, Err(LoadError::TypeMismatch(_))));
    let after = store.stats();
    assert_eq!(
        (
            after.hits - before.hits,
            after.misses - before.misses,
            after.loads - before.loads
        ),
        (6, 0, 0)
    );
}

#[test]
fn counters_count_hits_misses_loads_and_inserts() {
    let store = store();
    let k = key("k");
    assert!(store.get::<u8>(&k).unwrap().is_none());
    store
        .get_or_create_sync(&k, |_| Ok::<_, Infallible>(1_u8))
        .unwrap();
    store
        .get_or_create_sync(&k, |_| Ok::<_, Infallible>(2_u8))
        .unwrap();
    assert_eq!(*store.get::<u8>(&k).unwrap().unwrap(), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.loads, stats.inserts),
        (2, 2, 1, 1)
    );
    assert_eq!(
        (
            stats.load_errors,
            stats.load_abandons,
            stats.evictions,
            stats.removals
        ),
        (0, 0, 0, 0)
    );
}

/// The futures of the async loaders are `Send` when the factory's is, so they can be spawned.
#[test]
fn async_loads_can_be_spawned() {
    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    let rt = runtime();
    let store = store();
    let k = key("k");
    let task = {
        let (store, k) = (store.clone(), k.clone());
        rt.spawn(async move {
            let value = assert_send(store.get_or_create(&k, async |entry| {
                entry.region::<common::Catalog>();
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(1_u8)
            }))
            .await?;
            let none = assert_send(
                store.get_or_create_optional(&common::key("none"), async |_| {
                    Ok::<Option<u8>, Infallible>(None)
                }),
            )
            .await?;
            Ok::<_, LoadError<Infallible>>((value, none))
        })
    };
    let (value, none) = rt.block_on(task).unwrap().unwrap();
    assert_eq!((*value, none), (1, None));
}
