//! Guarantee 2: a factory error is not cached and goes to every caller of its flight as the
//! same `Arc<E>` (one backend call per flight); a panicking factory or a dropped async leader
//! never strands the waiters — exactly one of them takes over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{BackendDown, Gate, key, runtime, store, wait_for_waiters, wait_until};
use nearcache_store::LoadError;

const WAITERS: usize = 7;

fn factory_error(result: Result<Arc<u32>, LoadError<BackendDown>>) -> Arc<BackendDown> {
    match result {
        Err(LoadError::Factory(error)) => error,
        other => panic!("expected the factory's error, got {other:?}"),
    }
}

#[test]
fn a_blocking_flight_shares_its_error_with_every_caller_and_caches_nothing() {
    let store = store();
    let key = key("failing");
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, opener) = Gate::closed();
    let callers: Vec<_> = (0..=WAITERS)
        .map(|i| {
            let (store, key, counter, release) = (
                store.clone(),
                key.clone(),
                Arc::clone(&calls),
                release.clone(),
            );
            let handle = std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| {
                    let attempt = counter.fetch_add(1, Ordering::SeqCst) as u32;
                    release.pass_blocking();
                    Err::<u32, _>(BackendDown(attempt))
                })
            });
            if i == 0 {
                wait_until("the leader runs", Duration::from_secs(10), || {
                    calls.load(Ordering::SeqCst) == 1
                });
            }
            handle
        })
        .collect();
    wait_for_waiters(&store, &key, WAITERS);
    opener.open();
    let errors: Vec<Arc<BackendDown>> = callers
        .into_iter()
        .map(|c| factory_error(c.join().unwrap()))
        .collect();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one backend call for the flight"
    );
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one shared Arc<E>"
    );
    assert_eq!(*errors[0], BackendDown(0));
    assert_eq!(store.stats().load_errors, 1);
    assert!(
        store.get::<u32>(&key).unwrap().is_none(),
        "the error was not cached"
    );

    let value = store
        .get_or_create_sync(&key, |_entry| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BackendDown>(7_u32)
        })
        .unwrap();
    assert_eq!(*value, 7);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the next call ran the factory again"
    );
}

#[test]
fn an_async_flight_shares_its_error_with_every_caller_and_caches_nothing() {
    let rt = runtime();
    let store = store();
    let key = key("failing-async");
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, opener) = Gate::closed();
    let callers: Vec<_> = (0..=WAITERS)
        .map(|_| {
            let (store, key, calls, release) = (
                store.clone(),
                key.clone(),
                Arc::clone(&calls),
                release.clone(),
            );
            rt.spawn(async move {
                store
                    .get_or_create(&key, async |_entry| {
                        let attempt = calls.fetch_add(1, Ordering::SeqCst) as u32;
                        release.pass().await;
                        Err::<u32, _>(BackendDown(attempt))
                    })
                    .await
            })
        })
        .collect();
    wait_for_waiters(&store, &key, WAITERS);
    opener.open();
    let errors: Vec<Arc<BackendDown>> = callers
        .into_iter()
        .map(|c| factory_error(rt.block_on(c).unwrap()))
        .collect();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert!(store.get::<u32>(&key).unwrap().is_none());
    let again = rt.block_on(store.get_or_create(&key, async |_entry| {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<u32, _>(BackendDown(99))
    }));
    assert_eq!(*factory_error(again), BackendDown(99));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "errors are never cached");
    assert_eq!(store.stats().load_errors, 2);
}

/// The leader's factory panics while waiters are parked on its flight: no waiter is
/// stranded, exactly one of them runs its factory, and all get that value.
#[test]
fn a_panicking_blocking_factory_hands_the_load_to_exactly_one_waiter() {
    for round in 0..5 {
        let store = store();
        let key = key("panicky");
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, opener) = Gate::closed();
        let leader = {
            let (store, key, calls, release) = (
                store.clone(),
                key.clone(),
                Arc::clone(&calls),
                release.clone(),
            );
            std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| -> Result<u32, BackendDown> {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.pass_blocking();
                    panic!("factory bug (expected by the test)");
                })
            })
        };
        wait_until("the leader runs", Duration::from_secs(10), || {
            calls.load(Ordering::SeqCst) == 1
        });
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
                std::thread::spawn(move || {
                    store.get_or_create_sync(&key, |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, BackendDown>(42_u32)
                    })
                })
            })
            .collect();
        wait_for_waiters(&store, &key, WAITERS);
        opener.open();
        assert!(
            leader.join().is_err(),
            "the panic reaches the leader's caller"
        );
        let values: Vec<Arc<u32>> = waiters
            .into_iter()
            .map(|w| w.join().unwrap().unwrap())
            .collect();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "round {round}: one takeover"
        );
        assert!(values.iter().all(|v| Arc::ptr_eq(v, &values[0])));
        assert_eq!(store.stats().load_abandons, 1);
        assert_eq!(*store.get::<u32>(&key).unwrap().unwrap(), 42);
    }
}

#[test]
fn a_panicking_async_factory_hands_the_load_to_exactly_one_waiter() {
    let rt = runtime();
    let store = store();
    let key = key("panicky-async");
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, opener) = Gate::closed();
    let leader = {
        let (store, key, calls, release) = (
            store.clone(),
            key.clone(),
            Arc::clone(&calls),
            release.clone(),
        );
        rt.spawn(async move {
            store
                .get_or_create(&key, async |_entry| -> Result<u32, BackendDown> {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.pass().await;
                    panic!("factory bug (expected by the test)");
                })
                .await
        })
    };
    wait_until("the leader runs", Duration::from_secs(10), || {
        calls.load(Ordering::SeqCst) == 1
    });
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            rt.spawn(async move {
                store
                    .get_or_create(&key, async |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, BackendDown>(42_u32)
                    })
                    .await
            })
        })
        .collect();
    wait_for_waiters(&store, &key, WAITERS);
    opener.open();
    assert!(rt.block_on(leader).unwrap_err().is_panic());
    let values: Vec<Arc<u32>> = waiters
        .into_iter()
        .map(|w| rt.block_on(w).unwrap().unwrap())
        .collect();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one takeover");
    assert!(values.iter().all(|v| Arc::ptr_eq(v, &values[0])));
    assert_eq!(store.stats().load_abandons, 1);
}

/// The async leader is dropped mid-load (its `select!` takes the other branch); an async
/// and a blocking waiter are parked on the flight. Exactly one of them takes over.
#[test]
fn a_dropped_async_leader_hands_the_load_to_exactly_one_waiter() {
    let rt = runtime();
    for round in 0..5 {
        let store = store();
        let key = key("dropped-leader");
        let calls = Arc::new(AtomicUsize::new(0));
        let (never, _never_opened) = Gate::closed();
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            rt.spawn(async move {
                tokio::select! {
                    _ = store.get_or_create(&key, async |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        never.pass().await;
                        Ok::<_, BackendDown>(0_u32)
                    }) => "finished",
                    _ = cancelled => "dropped",
                }
            })
        };
        wait_until("the leader runs", Duration::from_secs(10), || {
            calls.load(Ordering::SeqCst) == 1
        });
        let task = {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            rt.spawn(async move {
                store
                    .get_or_create(&key, async |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, BackendDown>(7_u32)
                    })
                    .await
            })
        };
        let thread = {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BackendDown>(7_u32)
                })
            })
        };
        wait_for_waiters(&store, &key, 2);
        cancel.send(()).unwrap();
        assert_eq!(rt.block_on(leader).unwrap(), "dropped");
        let a = rt.block_on(task).unwrap().unwrap();
        let b = thread.join().unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "round {round}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "round {round}: one takeover"
        );
        assert_eq!(store.stats().load_abandons, 1);
    }
}

/// Aborting the leader's task is the other way an async leader disappears.
#[test]
fn an_aborted_leader_task_hands_the_load_to_a_waiter() {
    let rt = runtime();
    let store = store();
    let key = key("aborted-leader");
    let calls = Arc::new(AtomicUsize::new(0));
    let (never, _never_opened) = Gate::closed();
    let leader = {
        let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
        rt.spawn(async move {
            store
                .get_or_create(&key, async |_entry| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    never.pass().await;
                    Ok::<_, BackendDown>(0_u32)
                })
                .await
        })
    };
    wait_until("the leader runs", Duration::from_secs(10), || {
        calls.load(Ordering::SeqCst) == 1
    });
    let waiter = {
        let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
        std::thread::spawn(move || {
            store.get_or_create_sync(&key, |_entry| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BackendDown>(5_u32)
            })
        })
    };
    wait_for_waiters(&store, &key, 1);
    leader.abort();
    assert!(rt.block_on(leader).unwrap_err().is_cancelled());
    assert_eq!(*waiter.join().unwrap().unwrap(), 5);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(store.stats().load_abandons, 1);
}
