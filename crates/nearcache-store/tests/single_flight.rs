//! Guarantee 1: concurrent callers of one key — async and blocking mixed — run the factory
//! once and all receive the same `Arc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Gate, key, runtime, store, wait_for_waiters};

const TASKS: usize = 500;
const THREADS: usize = 500;
const CALLERS: usize = TASKS + THREADS;

/// 500 tokio tasks and 500 OS threads, released together, call one cold key. The factory
/// (whoever leads) is held until the other 999 callers wait on its flight, so every caller
/// truly overlaps the load. Exactly one factory call; every caller gets the same `Arc`.
#[test]
fn thousand_mixed_callers_on_a_cold_key_run_one_load() {
    let rt = runtime();
    let store = store();
    for round in 0..3_u64 {
        let key = key(&format!("stampede-{round}"));
        let calls = Arc::new(AtomicUsize::new(0));
        let (start, open_start) = Gate::closed();
        let (release, open_release) = Gate::closed();

        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
                let (start, release) = (start.clone(), release.clone());
                rt.spawn(async move {
                    start.pass().await;
                    store
                        .get_or_create(&key, async |_entry| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            release.pass().await;
                            Ok::<_, Infallible>(round)
                        })
                        .await
                })
            })
            .collect();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
                let (start, release) = (start.clone(), release.clone());
                std::thread::spawn(move || {
                    start.pass_blocking();
                    store.get_or_create_sync(&key, |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.pass_blocking();
                        Ok::<_, Infallible>(round)
                    })
                })
            })
            .collect();

        open_start.open();
        wait_for_waiters(&store, &key, CALLERS - 1);
        open_release.open();

        let mut values: Vec<Arc<u64>> = threads
            .into_iter()
            .map(|t| t.join().expect("no panic").expect("loaded"))
            .collect();
        for task in tasks {
            values.push(rt.block_on(task).expect("no panic").expect("loaded"));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: one factory call"
        );
        assert_eq!(values.len(), CALLERS);
        assert!(
            values.iter().all(|v| Arc::ptr_eq(v, &values[0])),
            "round {round}: every caller got the same Arc"
        );
        assert_eq!(*values[0], round);
    }
    let stats = store.stats();
    assert_eq!(stats.loads, 3);
    assert_eq!(
        stats.misses,
        3 * CALLERS as u64,
        "every caller of a cold key missed"
    );
    assert_eq!(stats.inserts, 3);
}

/// Callers that arrive as a flight finishes either join it or hit what it stored: many rounds
/// of threads released by a barrier onto fresh keys, with a factory that does not wait.
#[test]
fn callers_racing_a_finishing_flight_never_load_twice() {
    let store = store();
    let threads = 8;
    let rounds = 300;
    let barrier = std::sync::Barrier::new(threads);
    let calls: Vec<AtomicUsize> = (0..rounds).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for (round, calls) in calls.iter().enumerate() {
                    let key = key(&format!("race-{round}"));
                    barrier.wait();
                    let value = store
                        .get_or_create_sync(&key, |_entry| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(round)
                        })
                        .unwrap();
                    assert_eq!(*value, round);
                }
            });
        }
    });
    for (round, calls) in calls.iter().enumerate() {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "round {round}");
    }
    let stats = store.stats();
    assert_eq!(stats.loads, rounds as u64);
    assert_eq!(stats.hits + stats.misses, (threads * rounds) as u64);
}

/// A blocking caller joins an async leader's flight (and the reverse): one mechanism.
#[test]
fn async_and_blocking_callers_share_flights_both_ways() {
    let rt = runtime();
    let store = store();
    for (i, async_leads) in [true, false].into_iter().enumerate() {
        let key = key(&format!("shared-{i}"));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, opener) = Gate::closed();
        let spawn_async = |release: Gate| {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            rt.spawn(async move {
                store
                    .get_or_create(&key, async |_entry| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.pass().await;
                        Ok::<_, Infallible>("value")
                    })
                    .await
            })
        };
        let spawn_thread = |release: Gate| {
            let (store, key, calls) = (store.clone(), key.clone(), Arc::clone(&calls));
            std::thread::spawn(move || {
                store.get_or_create_sync(&key, |_entry| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.pass_blocking();
                    Ok::<_, Infallible>("value")
                })
            })
        };
        let (task, thread) = if async_leads {
            let task = spawn_async(release.clone());
            common::wait_until(
                "the async leader runs",
                std::time::Duration::from_secs(10),
                || calls.load(Ordering::SeqCst) == 1,
            );
            (task, spawn_thread(release.clone()))
        } else {
            let thread = spawn_thread(release.clone());
            common::wait_until(
                "the blocking leader runs",
                std::time::Duration::from_secs(10),
                || calls.load(Ordering::SeqCst) == 1,
            );
            (spawn_async(release.clone()), thread)
        };
        wait_for_waiters(&store, &key, 1);
        opener.open();
        let a = rt.block_on(task).unwrap().unwrap();
        let b = thread.join().unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
