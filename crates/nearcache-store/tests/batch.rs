//! Batch get-or-create: one factory call for the keys nobody has, each key its own flight
//! (joined by single-key callers and other batches, invalidated on its own). Interleavings
//! are forced with gates and by waiting for callers to join a flight, never with sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::held_load::{Ties, hold_load};
use common::{
    BackendDown, Catalog, Gate, Opener, disabled_store, key, mock_store, runtime, store,
    store_not_caching_none, wait_for_waiters, wait_until,
};
use nearcache_keys::Key;
use nearcache_store::{BatchEntries, LoadError, Store, StoreOptions};

/// `(key, "<prefix>-<key>")` for every key of the batch.
fn rows(batch: &BatchEntries, prefix: &str) -> Vec<(Key, String)> {
    batch
        .keys()
        .map(|key| (key.clone(), format!("{prefix}-{key}")))
        .collect()
}

fn text(found: &HashMap<Key, Option<Arc<String>>>, key: &Key) -> Option<String> {
    found
        .get(key)
        .expect("every requested key")
        .as_deref()
        .cloned()
}

fn cached(store: &Store, key: &Key) -> Option<String> {
    store.get::<String>(key).unwrap().as_deref().cloned()
}

/// Waits until a flight for `key` is in progress (its leader is inside its factory or
/// about to be).
fn wait_for_flight(store: &Store, key: &Key) {
    wait_until(
        &format!("a flight of {key}"),
        Duration::from_secs(30),
        || store.flight_waiters(key).is_some(),
    );
}

/// What a blocking batch caller gets.
type Found<V, E> = Result<HashMap<Key, Option<Arc<V>>>, LoadError<E>>;

/// Starts a blocking batch load of `keys` on a thread of its own whose `factory` is handed a
/// closed gate to wait at; returns once the last key's flight is under way (so whatever the
/// test does next overlaps the batch) with the caller's thread and the gate's opener.
fn hold_batch<V, E>(
    store: &Store,
    keys: &[Key],
    mut factory: impl FnMut(&mut BatchEntries, &Gate) -> Result<Vec<(Key, V)>, E> + Send + 'static,
) -> (JoinHandle<Found<V, E>>, Opener)
where
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    let (gate, opener) = Gate::closed();
    let caller = {
        let (store, keys) = (store.clone(), keys.to_vec());
        std::thread::spawn(move || {
            store.get_or_create_many_sync(&keys, |batch| factory(batch, &gate))
        })
    };
    wait_for_flight(store, keys.last().expect("a batch of keys"));
    (caller, opener)
}

/// 24 callers (12 tokio tasks, 12 threads) released together by a barrier each ask for an
/// overlapping window of 8 of 32 keys; repeated over 30 rounds with fresh keys. Every key is
/// loaded exactly once in total, and every caller gets every key it asked for, with the
/// value of that one load.
#[test]
fn overlapping_batches_from_many_callers_load_each_key_once() {
    const CALLERS: usize = 24;
    const KEYS: usize = 32;
    const WINDOW: usize = 8;
    let rt = runtime();
    let store = store();
    for round in 0..30 {
        let keys: Arc<Vec<Key>> =
            Arc::new((0..KEYS).map(|i| key(&format!("r{round}-k{i}"))).collect());
        let loads: Arc<Mutex<HashMap<Key, usize>>> = Arc::default();
        let barrier = Arc::new(Barrier::new(CALLERS));
        let window = |caller: usize| -> Vec<Key> {
            (0..WINDOW)
                .map(|i| keys[(caller * 3 + i) % KEYS].clone())
                .collect()
        };
        let count = |loads: &Mutex<HashMap<Key, usize>>, batch: &BatchEntries| {
            let mut loads = loads.lock().unwrap();
            for key in batch.keys() {
                *loads.entry(key.clone()).or_default() += 1;
            }
        };
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        for caller in 0..CALLERS {
            let (store, loads, barrier) = (store.clone(), Arc::clone(&loads), Arc::clone(&barrier));
            let wanted = window(caller);
            if caller % 2 == 0 {
                tasks.push(rt.spawn(async move {
                    // A blocking barrier on a worker thread: the runtime has 4 workers
                    // and 12 tasks, so it is passed inside `block_in_place`.
                    tokio::task::block_in_place(|| barrier.wait());
                    let found = store
                        .get_or_create_many(&wanted, async move |batch| {
                            count(&loads, batch);
                            Ok::<_, Infallible>(rows(batch, "v"))
                        })
                        .await
                        .unwrap();
                    (wanted, found)
                }));
            } else {
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    let found = store
                        .get_or_create_many_sync(&wanted, |batch| {
                            count(&loads, batch);
                            Ok::<_, Infallible>(rows(batch, "v"))
                        })
                        .unwrap();
                    (wanted, found)
                }));
            }
        }
        let mut answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for task in tasks {
            answers.push(rt.block_on(task).unwrap());
        }
        for (wanted, found) in &answers {
            assert_eq!(found.len(), wanted.len());
            for key in wanted {
                assert_eq!(text(found, key), Some(format!("v-{key}")));
            }
        }
        let loads = loads.lock().unwrap();
        let requested: std::collections::HashSet<&Key> =
            answers.iter().flat_map(|(wanted, _)| wanted).collect();
        assert_eq!(
            loads.len(),
            requested.len(),
            "round {round}: every key loaded"
        );
        for (key, n) in loads.iter() {
            assert_eq!(*n, 1, "round {round}: {key} loaded {n} times");
        }
    }
}

/// A batch finds one of its keys loading in a single-key flight: the factory gets only the
/// other keys, and the batch returns the single load's value for that one.
#[test]
fn a_batch_joins_a_single_key_flight_in_progress() {
    let store = store();
    let [a, b, c] = [key("a"), key("b"), key("c")];
    let single = hold_load(&store, &b, Ties::Nothing, String::from("single-b"));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let batch = {
        let (store, keys, asked) = (
            store.clone(),
            [a.clone(), b.clone(), c.clone()],
            Arc::clone(&asked),
        );
        std::thread::spawn(move || {
            store.get_or_create_many_sync(&keys, |batch| {
                asked.lock().unwrap().extend(batch.keys().cloned());
                Ok::<_, Infallible>(rows(batch, "batch"))
            })
        })
    };
    wait_for_waiters(&store, &b, 1);
    assert_eq!(*asked.lock().unwrap(), vec![a.clone(), c.clone()]);
    single.release.open();
    let found = batch.join().unwrap().unwrap();
    assert_eq!(text(&found, &a).as_deref(), Some("batch-a"));
    assert_eq!(text(&found, &b).as_deref(), Some("single-b"));
    assert_eq!(text(&found, &c).as_deref(), Some("batch-c"));
    assert_eq!(*single.caller.join().unwrap().unwrap(), "single-b");
    assert_eq!(store.stats().loads, 3, "one load per key");
}

/// A single-key caller (async) finds its key loading in a batch: it joins and gets the
/// batch's value without running its own factory.
#[test]
fn a_single_key_caller_joins_a_batch_in_progress() {
    let rt = runtime();
    let store = store();
    let keys = [key("a"), key("b")];
    let (batch, opener) = hold_batch(&store, &keys, |batch, release| {
        release.pass_blocking();
        Ok::<_, Infallible>(rows(batch, "batch"))
    });
    let single_calls = Arc::new(AtomicUsize::new(0));
    let single = {
        let (store, b, calls) = (store.clone(), keys[1].clone(), Arc::clone(&single_calls));
        rt.spawn(async move {
            store
                .get_or_create(&b, async |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(String::from("single-b"))
                })
                .await
        })
    };
    wait_for_waiters(&store, &keys[1], 1);
    opener.open();
    let from_batch = batch.join().unwrap().unwrap();
    let joined = rt.block_on(single).unwrap().unwrap();
    assert_eq!(*joined, "batch-b");
    assert!(Arc::ptr_eq(&joined, from_batch[&keys[1]].as_ref().unwrap()));
    assert_eq!(single_calls.load(Ordering::SeqCst), 0);
}

/// `remove(b)` while a batch of a, b, c loads: the batch's caller still gets all three, a
/// and c are stored, b is not; a caller of b that starts after the remove (while the batch
/// is still loading) does not join the batch's flight but loads b afresh, and that fresh
/// value is what stays cached.
#[test]
fn a_remove_during_a_batch_keeps_only_that_key_out() {
    let store = store();
    let [a, b, c] = [key("a"), key("b"), key("c")];
    let (batch, opener) = hold_batch(
        &store,
        &[a.clone(), b.clone(), c.clone()],
        |batch, release| {
            release.pass_blocking();
            Ok::<_, Infallible>(rows(batch, "old"))
        },
    );
    store.remove(&b);
    let late = store
        .get_or_create_sync(&b, |_| Ok::<_, Infallible>(String::from("fresh-b")))
        .unwrap();
    assert_eq!(*late, "fresh-b", "a caller after the remove loads anew");
    opener.open();
    let found = batch.join().unwrap().unwrap();
    for k in [&a, &b, &c] {
        assert_eq!(
            text(&found, k),
            Some(format!("old-{k}")),
            "overlapping caller"
        );
    }
    assert_eq!(cached(&store, &a).as_deref(), Some("old-a"));
    assert_eq!(cached(&store, &b).as_deref(), Some("fresh-b"));
    assert_eq!(cached(&store, &c).as_deref(), Some("old-c"));
    assert_eq!(store.stats().inserts_rejected_stale, 1);
}

/// Each key is tied to its own sub-key of `Catalog`; expiring sub-key "b" while the batch
/// loads keeps only b out. A second batch that starts after the expiry joins both flights
/// and gets a from the first batch, but not b's stale value: it loads b again itself.
#[test]
fn a_region_expiry_during_a_batch_keeps_that_key_out_of_later_callers() {
    let store = store();
    let [a, b] = [key("a"), key("b")];
    let tie = |batch: &mut BatchEntries| {
        for entry in batch.entries_mut() {
            let sub = entry.key().as_str().to_owned();
            entry.region_key::<Catalog>(sub.as_str());
        }
    };
    let (first, opener) = hold_batch(&store, &[a.clone(), b.clone()], move |batch, release| {
        tie(batch);
        release.pass_blocking();
        Ok::<_, Infallible>(rows(batch, "old"))
    });
    store.expire_region_key::<Catalog>("b");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let second = {
        let (store, keys, asked) = (store.clone(), [a.clone(), b.clone()], Arc::clone(&asked));
        std::thread::spawn(move || {
            store.get_or_create_many_sync(&keys, |batch| {
                asked
                    .lock()
                    .unwrap()
                    .push(batch.keys().cloned().collect::<Vec<_>>());
                tie(batch);
                Ok::<_, Infallible>(rows(batch, "fresh"))
            })
        })
    };
    wait_for_waiters(&store, &a, 1);
    wait_for_waiters(&store, &b, 1);
    opener.open();
    let first = first.join().unwrap().unwrap();
    assert_eq!(
        text(&first, &b).as_deref(),
        Some("old-b"),
        "it overlapped the expiry"
    );
    let second = second.join().unwrap().unwrap();
    assert_eq!(text(&second, &a).as_deref(), Some("old-a"));
    assert_eq!(text(&second, &b).as_deref(), Some("fresh-b"));
    assert_eq!(
        *asked.lock().unwrap(),
        vec![vec![b.clone()]],
        "one more call, for b only"
    );
    assert_eq!(cached(&store, &a).as_deref(), Some("old-a"));
    assert_eq!(cached(&store, &b).as_deref(), Some("fresh-b"));
}

/// Keys the factory leaves out come back as `None`; with `cache_none` (the default) they
/// are cached as negative entries and the next batch does not ask for them.
#[test]
fn omitted_keys_are_none_and_cached_when_cache_none_is_on() {
    let store = store();
    let keys = [key("found"), key("missing")];
    let calls = AtomicUsize::new(0);
    let load = |batch: &mut BatchEntries| {
        calls.fetch_add(1, Ordering::SeqCst);
        let found = key("found");
        assert!(batch.entry(&found).is_some());
        Ok::<_, Infallible>(
            batch
                .keys()
                .filter(|k| **k == found)
                .map(|k| (k.clone(), String::from("here")))
                .collect::<Vec<_>>(),
        )
    };
    let first = store.get_or_create_many_sync(&keys, load).unwrap();
    assert_eq!(text(&first, &keys[0]).as_deref(), Some("here"));
    assert_eq!(text(&first, &keys[1]), None);
    assert_eq!(store.get_optional::<String>(&keys[1]).unwrap(), Some(None));
    let again = store.get_or_create_many_sync(&keys, load).unwrap();
    assert_eq!(again, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "both keys were hits");
}

/// With `cache_none` off, an omitted key is returned as `None` and asked for again.
#[test]
fn omitted_keys_are_not_cached_when_cache_none_is_off() {
    let store = store_not_caching_none();
    let keys = [key("found"), key("missing")];
    let asked = Mutex::new(Vec::new());
    let load = |batch: &mut BatchEntries| {
        asked.lock().unwrap().push(batch.len());
        Ok::<_, Infallible>(vec![(key("found"), String::from("here"))])
    };
    let first = store.get_or_create_many_sync(&keys, load).unwrap();
    assert_eq!(text(&first, &keys[1]), None);
    assert_eq!(store.get_optional::<String>(&keys[1]).unwrap(), None);
    store.get_or_create_many_sync(&keys, load).unwrap();
    assert_eq!(
        *asked.lock().unwrap(),
        vec![2, 1],
        "only the missing key again"
    );
}

/// A batch that fails fails exactly the keys it was loading, for every caller waiting on
/// them (a single-key caller and another batch get the same `Arc`), while the other batch's
/// own key loads and is stored. Nothing of the failed load is cached.
#[test]
fn a_factory_error_reaches_every_waiter_of_its_keys() {
    let store = store();
    let [a, b, c] = [key("a"), key("b"), key("c")];
    let (failing, opener) = hold_batch(&store, &[a.clone(), b.clone()], |_batch, release| {
        release.pass_blocking();
        Err::<Vec<(Key, String)>, _>(BackendDown(1))
    });
    let single = {
        let (store, a) = (store.clone(), a.clone());
        std::thread::spawn(move || {
            store.get_or_create_sync(&a, |_| Ok::<_, BackendDown>(String::from("single-a")))
        })
    };
    let other = {
        let (store, keys) = (store.clone(), [b.clone(), c.clone()]);
        std::thread::spawn(move || {
            store.get_or_create_many_sync(&keys, |batch| Ok::<_, BackendDown>(rows(batch, "other")))
        })
    };
    wait_for_waiters(&store, &a, 1);
    wait_for_waiters(&store, &b, 1);
    opener.open();
    let Err(LoadError::Factory(error)) = failing.join().unwrap() else {
        panic!("the failing batch errs")
    };
    assert_eq!(*error, BackendDown(1));
    let Err(LoadError::Factory(seen_by_single)) = single.join().unwrap() else {
        panic!("the single-key waiter gets the error")
    };
    let Err(LoadError::Factory(seen_by_other)) = other.join().unwrap() else {
        panic!("the other batch gets the error of its joined key")
    };
    assert!(Arc::ptr_eq(&error, &seen_by_single));
    assert!(Arc::ptr_eq(&error, &seen_by_other));
    assert_eq!(cached(&store, &a), None);
    assert_eq!(cached(&store, &b), None);
    assert_eq!(
        cached(&store, &c).as_deref(),
        Some("other-c"),
        "its own key loaded"
    );
    assert_eq!(store.stats().load_errors, 1, "one failed factory call");
}

/// A batch factory that panics abandons its flights: a single-key waiter takes its key over
/// and another batch loads its joined key with a second call of its own factory.
#[test]
fn a_factory_panic_hands_its_keys_to_their_waiters() {
    let store = store();
    let [a, b] = [key("a"), key("b")];
    let (panicking, opener) = hold_batch(
        &store,
        &[a.clone(), b.clone()],
        |_batch, release| -> Result<Vec<(Key, u8)>, Infallible> {
            release.pass_blocking();
            panic!("the database driver panicked");
        },
    );
    let single = {
        let (store, a) = (store.clone(), a.clone());
        std::thread::spawn(move || store.get_or_create_sync(&a, |_| Ok::<_, Infallible>(1_u8)))
    };
    let other_calls = Arc::new(Mutex::new(Vec::new()));
    let other = {
        let (store, b, calls) = (store.clone(), b.clone(), Arc::clone(&other_calls));
        std::thread::spawn(move || {
            store.get_or_create_many_sync([&b], |batch| {
                calls.lock().unwrap().push(batch.len());
                Ok::<_, Infallible>(batch.keys().map(|k| (k.clone(), 2_u8)).collect::<Vec<_>>())
            })
        })
    };
    wait_for_waiters(&store, &a, 1);
    wait_for_waiters(&store, &b, 1);
    opener.open();
    assert!(
        panicking.join().is_err(),
        "the panic reaches its own caller"
    );
    assert_eq!(*single.join().unwrap().unwrap(), 1);
    let other = other.join().unwrap().unwrap();
    assert_eq!(other[&b].as_deref(), Some(&2));
    assert_eq!(*other_calls.lock().unwrap(), vec![1], "called once, for b");
    assert_eq!(store.stats().load_abandons, 2);
}

/// Duplicates in the request are loaded once and returned once; per-key entry options
/// apply to their key only; the batch counters move.
#[tokio::test]
async fn duplicates_options_and_counters() {
    let (store, clock) = mock_store(StoreOptions::default());
    let [a, b] = [key("a"), key("b")];
    let found = store
        .get_or_create_many(&[a.clone(), b.clone(), a.clone()], async |batch| {
            assert_eq!(batch.len(), 2, "each key once");
            batch
                .entry(&key("a"))
                .unwrap()
                .time_to_live(Duration::from_secs(1));
            assert!(batch.entry(&key("not-asked")).is_none());
            Ok::<_, Infallible>(rows(batch, "v"))
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let stats = store.stats();
    assert_eq!((stats.batch_loads, stats.batch_keys_loaded), (1, 2));
    assert_eq!((stats.misses, stats.loads), (2, 2));
    clock.increment(Duration::from_secs(2));
    assert_eq!(cached(&store, &a), None, "a expired after its own 1 s");
    assert_eq!(
        cached(&store, &b).as_deref(),
        Some("v-b"),
        "b keeps the default"
    );

    let none = store
        .get_or_create_many(Vec::<Key>::new(), async |_| {
            panic!("never called without keys");
            #[allow(unreachable_code)]
            Ok::<Vec<(Key, u8)>, Infallible>(Vec::new())
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// A value of another type under one key fails the call with a type mismatch; the other
/// keys are still loaded and stored.
#[test]
fn a_type_mismatch_fails_the_call_but_not_the_other_keys() {
    let store = store();
    let [a, b] = [key("a"), key("b")];
    store.set(a.clone(), 7_u64);
    let result =
        store.get_or_create_many_sync([&a, &b], |batch| Ok::<_, Infallible>(rows(batch, "v")));
    assert!(matches!(result, Err(LoadError::TypeMismatch(_))));
    assert_eq!(cached(&store, &b).as_deref(), Some("v-b"));
}

/// A disabled store runs the factory with every key and stores nothing.
#[test]
fn a_disabled_store_passes_every_key_through() {
    let store = disabled_store();
    let keys = [key("a"), key("b")];
    let found = store
        .get_or_create_many_sync(&keys, |batch| {
            assert_eq!(batch.len(), 2);
            Ok::<_, Infallible>(rows(batch, "v"))
        })
        .unwrap();
    assert_eq!(text(&found, &keys[1]).as_deref(), Some("v-b"));
    assert!(store.is_empty());
}

/// An async batch dropped while its factory runs (a `select!`, a timeout) abandons its
/// flights: a single-key waiter takes its key over, and nothing of the dropped batch is
/// stored.
#[test]
fn a_dropped_async_batch_hands_its_keys_to_their_waiters() {
    let rt = runtime();
    let store = store();
    let [a, b] = [key("a"), key("b")];
    let (release, _never_opened) = Gate::closed();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let dropped = {
        let (store, keys) = (store.clone(), [a.clone(), b.clone()]);
        rt.spawn(async move {
            tokio::select! {
                found = store.get_or_create_many(&keys, async move |batch| {
                    release.pass().await;
                    Ok::<_, Infallible>(rows(batch, "dropped"))
                }) => Some(found),
                _ = stop => None,
            }
        })
    };
    wait_for_flight(&store, &b);
    let waiter = {
        let (store, b) = (store.clone(), b.clone());
        std::thread::spawn(move || {
            store.get_or_create_sync(&b, |_| Ok::<_, Infallible>(String::from("taken-over")))
        })
    };
    wait_for_waiters(&store, &b, 1);
    stop_tx.send(()).unwrap();
    assert!(
        rt.block_on(dropped).unwrap().is_none(),
        "the batch was dropped"
    );
    assert_eq!(*waiter.join().unwrap().unwrap(), "taken-over");
    assert_eq!(cached(&store, &a), None);
    assert_eq!(cached(&store, &b).as_deref(), Some("taken-over"));
    assert_eq!(store.stats().load_abandons, 2);
}
