//! Guarantee 2: a factory error is not cached and goes to every caller of its flight as the
//! same `Arc<E>` (one backend call per flight); a panicking factory or a dropped async leader
//! never strands the waiters — exactly one of them takes over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{BackendDown, Gate, key, runtime, store, wait_for_waiters, wait_until};
use nearcache_keys::Key;
use nearcache_store::{LoadError, Store};
use tokio::runtime::Runtime;

const WAITERS: usize = 7;

type Loaded = Result<Arc<u32>, LoadError<BackendDown>>;

fn factory_error(result: Loaded) -> Arc<BackendDown> {
    match result {
        Err(LoadError::Factory(error)) => error,
        other => panic!("expected the factory's error, got {other:?}"),
    }
}

/// Every caller holds the one `Arc` its flight produced.
fn assert_one_shared<T>(values: &[Arc<T>]) {
    assert!(
        values.iter().all(|v| Arc::ptr_eq(v, &values[0])),
        "one shared Arc"
    );
}

/// One key's flight in a fresh store, and how many factories ran for it (each factory
/// counts itself first, so the leader's run is call 1).
struct Flight {
    store: Store,
    key: Key,
    calls: Arc<AtomicUsize>,
}

impl Flight {
    fn new(key_text: &str) -> Self {
        Self {
            store: store(),
            key: key(key_text),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What a caller on another thread or task needs: the store, the key, the counter.
    fn handles(&self) -> (Store, Key, Arc<AtomicUsize>) {
        (
            self.store.clone(),
            self.key.clone(),
            Arc::clone(&self.calls),
        )
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until the leader's factory runs.
    fn wait_for_leader(&self) {
        wait_until("the leader runs", Duration::from_secs(10), || {
            self.calls() == 1
        });
    }

    /// A caller on its own thread whose factory counts itself and returns `value`.
    fn blocking_caller(&self, value: u32) -> std::thread::JoinHandle<Loaded> {
        let (store, key, calls) = self.handles();
        std::thread::spawn(move || {
            store.get_or_create_sync(&key, |_entry| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BackendDown>(value)
            })
        })
    }

    /// A leader's load, not yet started: its factory counts itself, then waits at `gate` (and
    /// returns 0 if it ever opens).
    fn load_held_at(&self, gate: Gate) -> impl Future<Output = Loaded> + Send + 'static {
        let (store, key, calls) = self.handles();
        async move {
            store
                .get_or_create(&key, async |_entry| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.pass().await;
                    Ok::<_, BackendDown>(0_u32)
                })
                .await
        }
    }

    /// A caller in a task on `rt` whose factory counts itself and returns `value`.
    fn async_caller(&self, rt: &Runtime, value: u32) -> tokio::task::JoinHandle<Loaded> {
        let (store, key, calls) = self.handles();
        rt.spawn(async move {
            store
                .get_or_create(&key, async |_entry| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BackendDown>(value)
                })
                .await
        })
    }
}

#[test]
fn a_blocking_flight_shares_its_error_with_every_caller_and_caches_nothing() {
    let flight = Flight::new("failing");
    let (release, opener) = Gate::closed();
    let callers: Vec<_> = (0..=WAITERS)
        .map(|i| {
            let ((store, key, counter), release) = (flight.handles(), release.clone());
            let handle = std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| {
                    let attempt = counter.fetch_add(1, Ordering::SeqCst) as u32;
                    release.pass_blocking();
                    Err::<u32, _>(BackendDown(attempt))
                })
            });
            if i == 0 {
                flight.wait_for_leader();
            }
            handle
        })
        .collect();
    wait_for_waiters(&flight.store, &flight.key, WAITERS);
    opener.open();
    let errors: Vec<Arc<BackendDown>> = callers
        .into_iter()
        .map(|c| factory_error(c.join().unwrap()))
        .collect();
    assert_eq!(flight.calls(), 1, "one backend call for the flight");
    assert_one_shared(&errors);
    assert_eq!(*errors[0], BackendDown(0));
    let store = &flight.store;
    assert_eq!(store.stats().load_errors, 1);
    assert!(
        store.get::<u32>(&flight.key).unwrap().is_none(),
        "the error was not cached"
    );

    let value = flight.blocking_caller(7).join().unwrap().unwrap();
    assert_eq!(*value, 7);
    assert_eq!(flight.calls(), 2, "the next call ran the factory again");
}

#[test]
fn an_async_flight_shares_its_error_with_every_caller_and_caches_nothing() {
    let rt = runtime();
    let flight = Flight::new("failing-async");
    let (release, opener) = Gate::closed();
    let callers: Vec<_> = (0..=WAITERS)
        .map(|_| {
            let ((store, key, calls), release) = (flight.handles(), release.clone());
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
    wait_for_waiters(&flight.store, &flight.key, WAITERS);
    opener.open();
    let errors: Vec<Arc<BackendDown>> = callers
        .into_iter()
        .map(|c| factory_error(rt.block_on(c).unwrap()))
        .collect();
    assert_eq!(flight.calls(), 1);
    assert_one_shared(&errors);
    let (store, key) = (&flight.store, &flight.key);
    assert!(store.get::<u32>(key).unwrap().is_none());
    let again = rt.block_on(store.get_or_create(key, async |_entry| {
        flight.calls.fetch_add(1, Ordering::SeqCst);
        Err::<u32, _>(BackendDown(99))
    }));
    assert_eq!(*factory_error(again), BackendDown(99));
    assert_eq!(flight.calls(), 2, "errors are never cached");
    assert_eq!(store.stats().load_errors, 2);
}

/// The leader's factory panics while waiters are parked on its flight: no waiter is
/// stranded, exactly one of them runs its factory, and all get that value.
#[test]
fn a_panicking_blocking_factory_hands_the_load_to_exactly_one_waiter() {
    for round in 0..5 {
        let flight = Flight::new("panicky");
        let (release, opener) = Gate::closed();
        let leader = {
            let ((store, key, calls), release) = (flight.handles(), release.clone());
            std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| -> Result<u32, BackendDown> {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.pass_blocking();
                    panic!("factory bug (expected by the test)");
                })
            })
        };
        flight.wait_for_leader();
        let waiters: Vec<_> = (0..WAITERS).map(|_| flight.blocking_caller(42)).collect();
        wait_for_waiters(&flight.store, &flight.key, WAITERS);
        opener.open();
        assert!(
            leader.join().is_err(),
            "the panic reaches the leader's caller"
        );
        let values: Vec<Arc<u32>> = waiters
            .into_iter()
            .map(|w| w.join().unwrap().unwrap())
            .collect();
        assert_eq!(flight.calls(), 2, "round {round}: one takeover");
        assert_one_shared(&values);
        assert_eq!(flight.store.stats().load_abandons, 1);
        assert_eq!(*flight.store.get::<u32>(&flight.key).unwrap().unwrap(), 42);
    }
}

#[test]
fn a_panicking_async_factory_hands_the_load_to_exactly_one_waiter() {
    let rt = runtime();
    let flight = Flight::new("panicky-async");
    let (release, opener) = Gate::closed();
    let leader = {
        let ((store, key, calls), release) = (flight.handles(), release.clone());
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
    flight.wait_for_leader();
    let waiters: Vec<_> = (0..WAITERS).map(|_| flight.async_caller(&rt, 42)).collect();
    wait_for_waiters(&flight.store, &flight.key, WAITERS);
    opener.open();
    assert!(rt.block_on(leader).unwrap_err().is_panic());
    let values: Vec<Arc<u32>> = waiters
        .into_iter()
        .map(|w| rt.block_on(w).unwrap().unwrap())
        .collect();
    assert_eq!(flight.calls(), 2, "one takeover");
    assert_one_shared(&values);
    assert_eq!(flight.store.stats().load_abandons, 1);
}

/// The async leader is dropped mid-load (its `select!` takes the other branch); an async
/// and a blocking waiter are parked on the flight. Exactly one of them takes over.
#[test]
fn a_dropped_async_leader_hands_the_load_to_exactly_one_waiter() {
    let rt = runtime();
    for round in 0..5 {
        let flight = Flight::new("dropped-leader");
        let (never, _never_opened) = Gate::closed();
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let load = flight.load_held_at(never);
        let leader = rt.spawn(async move {
            tokio::select! {
                _ = load => "finished",
                _ = cancelled => "dropped",
            }
        });
        flight.wait_for_leader();
        let task = flight.async_caller(&rt, 7);
        let thread = flight.blocking_caller(7);
        wait_for_waiters(&flight.store, &flight.key, 2);
        cancel.send(()).unwrap();
        assert_eq!(rt.block_on(leader).unwrap(), "dropped");
        let a = rt.block_on(task).unwrap().unwrap();
        let b = thread.join().unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "round {round}");
        assert_eq!(flight.calls(), 2, "round {round}: one takeover");
        assert_eq!(flight.store.stats().load_abandons, 1);
    }
}

/// Aborting the leader's task is the other way an async leader disappears.
#[test]
fn an_aborted_leader_task_hands_the_load_to_a_waiter() {
    let rt = runtime();
    let flight = Flight::new("aborted-leader");
    let (never, _never_opened) = Gate::closed();
    let leader = rt.spawn(flight.load_held_at(never));
    flight.wait_for_leader();
    let waiter = flight.blocking_caller(5);
    wait_for_waiters(&flight.store, &flight.key, 1);
    leader.abort();
    assert!(rt.block_on(leader).unwrap_err().is_cancelled());
    assert_eq!(*waiter.join().unwrap().unwrap(), 5);
    assert_eq!(flight.calls(), 2);
    assert_eq!(flight.store.stats().load_abandons, 1);
}
