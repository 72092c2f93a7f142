//! The removal listener: every entry that leaves is reported once, with why; and the
//! listener runs outside the store's locks, so one that calls back into the store does not
//! deadlock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Catalog, key, wait_for_purges};
use nearcache_keys::Key;
use nearcache_store::{Clock, Mock, RemovalCause, Store, StoreOptions};

type Seen = Arc<Mutex<Vec<(Key, RemovalCause)>>>;

fn listening_store(options: StoreOptions) -> (Store, Arc<Mock>, Seen) {
    let (clock, mock) = Clock::mock();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let store = Store::with_clock_and_removal_listener(options, clock, move |key, cause| {
        log.lock().unwrap().push((key.clone(), cause));
    })
    .unwrap();
    (store, mock, seen)
}

/// Runs a purge pass here and waits for the purger's pass for every request so far: after
/// this, every entry a region expiry or `clear` killed has been removed and reported.
fn purge(store: &Store) {
    store.purge_now();
    wait_for_purges(store);
}

/// The reports so far, by key; fails if a key was reported twice.
fn by_key(seen: &Seen) -> HashMap<String, RemovalCause> {
    let mut by_key = HashMap::new();
    for (key, cause) in seen.lock().unwrap().iter() {
        let earlier = by_key.insert(key.to_string(), *cause);
        assert!(
            earlier.is_none(),
            "{key} reported twice: {earlier:?}, {cause:?}"
        );
    }
    by_key
}

/// One entry per cause, each removed by its own path; each is reported exactly once, with
/// its cause, and nothing else is reported.
#[test]
fn each_cause_is_reported_once() {
    let (store, clock, seen) = listening_store(StoreOptions::default());
    let ttl = |entry: &mut nearcache_store::EntryOptions| {
        entry.time_to_live(Duration::from_secs(1));
    };

    // Replaced: a set over a value, then a load over a dead entry reports it Expired.
    store.set(key("replaced"), 1_u8);
    store.set(key("replaced"), 2_u8);
    // Invalidated here, and for a peer.
    store.set(key("removed"), 1_u8);
    assert!(store.remove(&key("removed")));
    store.set(key("peer"), 1_u8);
    assert!(store.remove_from_peer(&key("peer")));
    // Expired: one swept by the purger, one found dead by a read, one under a new load.
    store.set_with(key("expired-swept"), 1_u8, ttl);
    store.set_with(key("expired-read"), 1_u8, ttl);
    store.set_with(key("expired-reloaded"), 1_u8, ttl);
    // Region and sub-key expiry, clear.
    store
        .get_or_create_sync(&key("region"), |entry| {
            entry.region::<Catalog>();
            Ok::<_, Infallible>(1_u8)
        })
        .unwrap();
    store.set_with(key("sub-key"), 1_u8, |entry| {
        entry.region_key::<Catalog>("c1");
    });
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "replaced, removed, peer so far"
    );

    clock.increment(Duration::from_secs(2));
    assert!(store.get::<u8>(&key("expired-read")).unwrap().is_none());
    store
        .get_or_create_sync(&key("expired-reloaded"), |_| Ok::<_, Infallible>(2_u8))
        .unwrap();
    store.expire_region_key::<Catalog>("c1");
    purge(&store);
    store.expire_region::<Catalog>();
    purge(&store);
    store.set(key("cleared"), 1_u8);
    store.clear();
    purge(&store);

    let mut seen: Vec<(String, RemovalCause)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.to_string(), *c))
        .collect();
    let mut expected: Vec<(String, RemovalCause)> = [
        ("replaced", RemovalCause::Replaced),
        ("removed", RemovalCause::Invalidated),
        ("peer", RemovalCause::PeerInvalidated),
        ("expired-swept", RemovalCause::Expired),
        ("expired-read", RemovalCause::Expired),
        ("expired-reloaded", RemovalCause::Expired),
        ("region", RemovalCause::Invalidated),
        ("sub-key", RemovalCause::Invalidated),
        ("cleared", RemovalCause::Invalidated),
        // The values still live at the clear: the second "replaced" and the reloaded one.
        ("replaced", RemovalCause::Invalidated),
        ("expired-reloaded", RemovalCause::Invalidated),
    ]
    .into_iter()
    .map(|(k, c)| (k.to_owned(), c))
    .collect();
    let order = |v: &mut Vec<(String, RemovalCause)>| {
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")))
    };
    order(&mut seen);
    order(&mut expected);
    assert_eq!(
        seen, expected,
        "each entry once, with its cause, and nothing else"
    );
}

/// Capacity evictions are reported as `Evicted`, one report per eviction counted, each key
/// once.
#[test]
fn capacity_evictions_are_reported_once_each() {
    let (store, _clock, seen) = listening_store(StoreOptions {
        max_capacity: 32,
        shards: Some(1),
        ..StoreOptions::default()
    });
    for i in 0..500_u32 {
        store
            .get_or_create_sync(&key(&format!("k{i}")), |_| Ok::<_, Infallible>(i))
            .unwrap();
    }
    let evictions = store.stats().evictions;
    assert!(evictions >= 500 - 32);
    let seen = by_key(&seen);
    assert_eq!(seen.len() as u64, evictions);
    assert!(seen.values().all(|cause| *cause == RemovalCause::Evicted));
    for k in seen.keys() {
        assert!(store.get::<u32>(&key(k)).unwrap().is_none(), "{k} is gone");
    }
}

/// A listener that reads, removes the very key it is told about, and counts the store,
/// from every path that removes entries: a load's insert evicting, a `set` replacing, a
/// `remove`, a read finding a dead entry, and the purger after a `clear`. It must finish;
/// the work runs on its own thread so that a deadlock fails the test instead of hanging it.
#[test]
fn a_listener_that_calls_into_the_store_does_not_deadlock() {
    let (clock, mock) = Clock::mock();
    let handle: Arc<Mutex<Option<Store>>> = Arc::default();
    let calls = Arc::new(Mutex::new(0_usize));
    let store = {
        let (handle, calls) = (Arc::clone(&handle), Arc::clone(&calls));
        Store::with_clock_and_removal_listener(
            StoreOptions {
                max_capacity: 32,
                shards: Some(1),
                ..StoreOptions::default()
            },
            clock,
            move |key, _cause| {
                let store = handle.lock().unwrap().clone();
                if let Some(store) = store {
                    let _ = store.get::<u32>(key);
                    store.remove(key);
                    let _ = store.len();
                    *calls.lock().unwrap() += 1;
                }
            },
        )
        .unwrap()
    };
    *handle.lock().unwrap() = Some(store.clone());

    let (done_tx, done) = mpsc::channel();
    let worker = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..200_u32 {
                store
                    .get_or_create_sync(&key(&format!("k{i}")), |_| Ok::<_, Infallible>(i))
                    .unwrap();
            }
            store.set(key("s"), 1_u32);
            store.set(key("s"), 2_u32);
            store.set(key("r"), 1_u32);
            store.remove(&key("r"));
            store.set_with(key("t"), 1_u32, |entry| {
                entry.time_to_live(Duration::from_secs(1));
            });
            mock.increment(Duration::from_secs(2));
            assert!(store.get::<u32>(&key("t")).unwrap().is_none());
            store.clear();
            purge(&store);
            done_tx.send(()).unwrap();
        })
    };
    assert!(
        done.recv_timeout(Duration::from_secs(60)).is_ok(),
        "a listener calling into the store deadlocked it"
    );
    worker.join().unwrap();
    assert!(
        *calls.lock().unwrap() >= 200 - 32 + 4,
        "the listener ran on every path"
    );
    // Break the cycle: the listener holds a handle, which keeps the purger alive.
    handle.lock().unwrap().take();
}

/// A listener that panics does not undo or stop the removal.
#[test]
fn a_panicking_listener_does_not_stop_the_removal() {
    let (clock, _mock) = Clock::mock();
    let store = Store::with_clock_and_removal_listener(StoreOptions::default(), clock, |_, _| {
        panic!("listener bug")
    })
    .unwrap();
    store.set(key("k"), 1_u8);
    store.set(key("k"), 2_u8);
    assert_eq!(store.get::<u8>(&key("k")).unwrap().as_deref(), Some(&2));
    assert!(store.remove(&key("k")));
    assert!(store.get::<u8>(&key("k")).unwrap().is_none());
}
