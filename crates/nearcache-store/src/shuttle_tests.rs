//! Model checking of single flight and the stale-insert rule with shuttle: instead of hoping
//! that threads collide, shuttle runs each scenario under thousands of schedules, choosing at
//! every synchronisation point of the flight table (shard locks, the flight's atomics and its
//! event) which thread or task goes next, and fails with a replayable schedule.
//!
//! ```text
//! RUSTFLAGS="--cfg shuttle" cargo test -p nearcache-store --lib --profile shuttle \
//!     --target-dir target/shuttle shuttle_   # `cargo xtask shuttle`: this, 3000 schedules
//! NEARCACHE_SHUTTLE_ITERATIONS=20000 RUSTFLAGS=... cargo test ...   # explore more schedules
//! SEED=<printed schedule> RUSTFLAGS=... cargo test ... -- <one test> # replay a failure
//! ```
//!
//! Scenarios: sync threads and async tasks sharing one flight (guarantee 1); a load racing
//! `remove`, `set`, `clear`, a region expiry and a sub-key expiry (guarantee 3: a read that
//! starts after the invalidation returned gets the new version, and afterwards the store
//! holds nothing older than the "database"); a factory that panics and an async leader
//! dropped mid-load (guarantee 2: nobody hangs, a waiter takes over); a failing factory whose
//! error is shared by its flight. Each schedule ends with every caller joined, so a waiter
//! left hanging is reported by shuttle as a deadlock.
//!
//! The purger thread and quick_cache's locks are real, not modelled: they never hold a lock
//! across a flight-table operation, so they cannot deadlock the model, but they take no part
//! in the interleavings explored here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::sync::{Arc, Once};
use std::task::Poll;
use std::time::Duration;

use nearcache_keys::Key;
use nearcache_regions::region;
use shuttle::scheduler::{PctScheduler, RandomScheduler, ReplayScheduler, Scheduler};
use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use shuttle::{future, thread};

use crate::{LoadError, Store, StoreOptions};

region!(Catalog = "catalog");

/// Schedules explored per test and scheduler (random, then PCT); `NEARCACHE_SHUTTLE_ITERATIONS`
/// overrides it.
const DEFAULT_ITERATIONS: usize = 500;

/// The payload of the panics the tests plan; the panic hook stays quiet about them.
const PLANNED_PANIC: &str = "nearcache shuttle test: planned factory panic";

fn iterations() -> usize {
    std::env::var("NEARCACHE_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

fn run_with(scheduler: impl Scheduler + 'static, scenario: fn()) {
    let mut config = shuttle::Config::default();
    config.max_steps = shuttle::MaxSteps::FailAfter(200_000);
    shuttle::Runner::new(scheduler, config).run(move || {
        quiet_planned_panics();
        scenario();
    });
}

/// Runs `scenario` under a random and a PCT scheduler, or replays the schedule in `SEED`.
fn check(scenario: fn()) {
    if let Ok(seed) = std::env::var("SEED") {
        let seed = std::fs::read_to_string(&seed).unwrap_or(seed);
        run_with(ReplayScheduler::new_from_encoded(seed.trim()), scenario);
        return;
    }
    let n = iterations();
    run_with(RandomScheduler::new(n), scenario);
    run_with(PctScheduler::new(3, n), scenario);
}

/// Shuttle's panic hook prints the schedule of every panic, planned ones included; wrap it so
/// that the factory panics the tests plan stay quiet. Installed from inside an execution, so
/// after shuttle's own hook.
fn quiet_planned_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let shuttle_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&PLANNED_PANIC) {
                shuttle_hook(info);
            }
        }));
    });
}

fn store() -> Store {
    // The purger only sweeps dead entries; keep it asleep unless a test expires something.
    Store::new(StoreOptions {
        purge_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    })
    .unwrap()
}

fn key() -> Key {
    Key::from_text("Product:get-1")
}

/// Polls `main` and `timeout` in turn (`main` first); `None` if `timeout` finished first, in
/// which case `main` is dropped where it stood — how a caller is cancelled.
async fn or_cancel<T>(
    main: impl Future<Output = T>,
    timeout: impl Future<Output = ()>,
) -> Option<T> {
    let mut main = pin!(main);
    let mut timeout = pin!(timeout);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = main.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        if timeout.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

async fn yields(n: usize) {
    for _ in 0..n {
        future::yield_now().await;
    }
}

/// Guarantee 1: two threads and two async tasks on a cold key share one load and one `Arc`.
fn mixed_callers_share_one_load() {
    let store = store();
    let loads = Arc::new(AtomicUsize::new(0));
    let load = {
        let loads = Arc::clone(&loads);
        move || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(7_u32)
        }
    };
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, load) = (store.clone(), load.clone());
            thread::spawn(move || {
                store
                    .get_or_create_sync(&key(), |_| {
                        thread::yield_now();
                        load()
                    })
                    .unwrap()
            })
        })
        .collect();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (store, load) = (store.clone(), load.clone());
            future::spawn(async move {
                store
                    .get_or_create(&key(), async |_| {
                        future::yield_now().await;
                        load()
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut values: Vec<Arc<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for task in tasks {
        values.push(future::block_on(task).unwrap());
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for every caller");
    assert_eq!(store.stats().loads, 1);
    assert!(values.iter().all(|v| Arc::ptr_eq(v, &values[0])), "one Arc");
    assert!(store.get::<u32>(&key()).unwrap().is_some());
}

#[test]
fn shuttle_mixed_callers_share_one_load() {
    check(mixed_callers_share_one_load);
}

/// How the writer invalidates the key after updating the database.
#[derive(Debug, Clone, Copy)]
enum Invalidation {
    Remove,
    Set,
    Clear,
    Region,
    RegionKey,
}

/// Guarantee 3: a writer updates the database and then invalidates, while a thread and a task
/// load the key (a factory reads the database, and ties its entry to the region at a point
/// the schedule picks). Once the invalidation has returned, the writer reads the key itself:
/// that late caller must get the new version, whether it hits, joins a load in progress or
/// loads. Once everyone is done the store holds nothing older than the database.
fn invalidation_racing_loads(how: Invalidation) {
    let store = store();
    let db = Arc::new(AtomicU64::new(0));
    let load_sync = {
        let db = Arc::clone(&db);
        move |entry: &mut crate::EntryOptions| {
            entry.region_key::<Catalog>("c1");
            let version = db.load(Ordering::SeqCst);
            thread::yield_now();
            Ok::<_, ()>(version)
        }
    };
    let loader = {
        let store = store.clone();
        thread::spawn(move || store.get_or_create_sync(&key(), load_sync).unwrap())
    };
    let task = {
        let (store, db) = (store.clone(), Arc::clone(&db));
        future::spawn(async move {
            store
                .get_or_create(&key(), async |entry| {
                    let version = db.load(Ordering::SeqCst);
                    future::yield_now().await;
                    // Asked for after reading: an expiry in between must still count.
                    entry.region_key::<Catalog>("c1");
                    Ok::<_, ()>(version)
                })
                .await
                .unwrap()
        })
    };
    let writer = {
        let (store, db) = (store.clone(), Arc::clone(&db));
        thread::spawn(move || {
            let version = db.fetch_add(1, Ordering::SeqCst) + 1;
            match how {
                Invalidation::Remove => {
                    store.remove(&key());
                }
                Invalidation::Set => {
                    store.set(key(), version);
                }
                Invalidation::Clear => store.clear(),
                Invalidation::Region => store.expire_region::<Catalog>(),
                Invalidation::RegionKey => store.expire_region_key::<Catalog>("c1"),
            }
            let late = store
                .get_or_create_sync(&key(), |entry| {
                    entry.region_key::<Catalog>("c1");
                    Ok::<_, ()>(db.load(Ordering::SeqCst))
                })
                .unwrap();
            assert_eq!(
                *late, version,
                "{how:?}: a read that started after the invalidation got an older load"
            );
        })
    };
    loader.join().unwrap();
    future::block_on(task).unwrap();
    writer.join().unwrap();
    let now = db.load(Ordering::SeqCst);
    if let Some(cached) = store.get::<u64>(&key()).unwrap() {
        assert_eq!(
            *cached, now,
            "{how:?}: the store kept a value older than the database"
        );
    }
}

#[test]
fn shuttle_remove_racing_loads_serves_and_stores_nothing_stale() {
    check(|| invalidation_racing_loads(Invalidation::Remove));
}

#[test]
fn shuttle_set_racing_loads_serves_and_keeps_the_new_value() {
    check(|| invalidation_racing_loads(Invalidation::Set));
}

#[test]
fn shuttle_clear_racing_loads_serves_and_stores_nothing_stale() {
    check(|| invalidation_racing_loads(Invalidation::Clear));
}

#[test]
fn shuttle_region_expiry_racing_loads_serves_and_stores_nothing_stale() {
    check(|| invalidation_racing_loads(Invalidation::Region));
}

#[test]
fn shuttle_sub_key_expiry_racing_loads_serves_and_stores_nothing_stale() {
    check(|| invalidation_racing_loads(Invalidation::RegionKey));
}

/// Guarantee 2: whichever caller leads first panics in its factory; nobody hangs, the panic
/// reaches only that caller, and the others get one value from one takeover load.
fn factory_panic_hands_the_load_over() {
    let store = store();
    let panicked = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (store, panicked) = (store.clone(), Arc::clone(&panicked));
            thread::spawn(move || {
                panic::catch_unwind(AssertUnwindSafe(|| {
                    store
                        .get_or_create_sync(&key(), |_| {
                            thread::yield_now();
                            if !panicked.swap(true, Ordering::SeqCst) {
                                panic::panic_any(PLANNED_PANIC);
                            }
                            Ok::<_, ()>(11_u32)
                        })
                        .unwrap()
                }))
            })
        })
        .collect();
    let results: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    let values: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(values.len(), 2, "only the panicking caller fails");
    assert!(values.iter().all(|v| ***v == 11));
    let stats = store.stats();
    assert_eq!(stats.load_abandons, 1);
    assert!(
        stats.loads >= 2,
        "the failed load and a takeover: {stats:?}"
    );
    assert_eq!(*store.get::<u32>(&key()).unwrap().unwrap(), 11);
}

#[test]
fn shuttle_factory_panic_hands_the_load_over() {
    check(factory_panic_hands_the_load_over);
}

/// Guarantee 2: an async caller is cancelled at a point the schedule picks (maybe mid-load,
/// maybe while waiting); the other callers never hang and all get a value.
fn dropped_caller_never_strands_waiters() {
    let store = store();
    let dropped = {
        let store = store.clone();
        future::spawn(async move {
            let key = key();
            let load = store.get_or_create(&key, async |_| {
                yields(2).await;
                Ok::<_, ()>(5_u32)
            });
            or_cancel(load, yields(1)).await.map(Result::unwrap)
        })
    };
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            future::spawn(async move {
                store
                    .get_or_create(&key(), async |_| {
                        future::yield_now().await;
                        Ok::<_, ()>(5_u32)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let blocking = {
        let store = store.clone();
        thread::spawn(move || {
            store
                .get_or_create_sync(&key(), |_| Ok::<_, ()>(5_u32))
                .unwrap()
        })
    };
    let cancelled_result = future::block_on(dropped).unwrap();
    for waiter in waiters {
        assert_eq!(*future::block_on(waiter).unwrap(), 5);
    }
    assert_eq!(*blocking.join().unwrap(), 5);
    if let Some(value) = cancelled_result {
        assert_eq!(*value, 5);
    }
    let stats = store.stats();
    assert!(stats.loads <= 4 && stats.loads >= 1, "{stats:?}");
    assert_eq!(*store.get::<u32>(&key()).unwrap().unwrap(), 5);
}

#[test]
fn shuttle_dropped_caller_never_strands_waiters() {
    check(dropped_caller_never_strands_waiters);
}

/// Guarantee 2: a failing factory's error goes to every caller of its flight as one `Arc`,
/// is never cached, and the backend is called once per flight, not once per caller.
fn errors_are_shared_per_flight_and_not_cached() {
    let store = store();
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (store, calls) = (store.clone(), Arc::clone(&calls));
            thread::spawn(move || {
                let result = store.get_or_create_sync(&key(), |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    Err::<u32, _>("backend down")
                });
                match result {
                    Err(LoadError::Factory(error)) => error,
                    other => panic!("expected the factory's error, got {other:?}"),
                }
            })
        })
        .collect();
    let errors: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    let calls = calls.load(Ordering::SeqCst);
    let distinct = (0..errors.len())
        .filter(|&i| !errors[..i].iter().any(|e| Arc::ptr_eq(e, &errors[i])))
        .count();
    assert_eq!(distinct, calls, "one shared error per backend call");
    assert_eq!(store.stats().load_errors as usize, calls);
    assert!(
        store.get::<u32>(&key()).unwrap().is_none(),
        "errors are not cached"
    );
}

#[test]
fn shuttle_errors_are_shared_per_flight_and_not_cached() {
    check(errors_are_shared_per_flight_and_not_cached);
}
