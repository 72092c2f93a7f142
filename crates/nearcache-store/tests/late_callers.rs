//! Guarantee 3 for every caller: once an invalidation has returned, no get-or-create that
//! starts afterwards returns a value whose load began before it — neither a stored one nor
//! one handed over by a flight still in progress.
//!
//! Each test holds a load of `k` (it read version 1) at a gate, invalidates `k` one way or
//! another, and only then starts the late callers, whose factory reads version 2. The late
//! callers must all get version 2 from one new load; the held load's own caller, which
//! overlapped the invalidation, still gets version 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::held_load::{Ties, hold_load};
use common::{Catalog, Gate, Pricing, key, runtime, store, wait_for_waiters, wait_until};
use nearcache_keys::Key;
use nearcache_regions::{SubKey, SubKeyText};
use nearcache_store::{EntryOptions, LoadError, Store};

/// Late callers started after the invalidation.
const LATE: usize = 6;

/// Starts [`LATE`] blocking callers of `k` at once; each loads version 2 if it must.
fn start_late_callers(
    store: &Store,
    k: &Key,
    loads: &Arc<AtomicUsize>,
    done: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Arc<u32>>> {
    let barrier = Arc::new(Barrier::new(LATE));
    (0..LATE)
        .map(|_| {
            let (store, k, loads, done, barrier) = (
                store.clone(),
                k.clone(),
                Arc::clone(loads),
                Arc::clone(done),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let value = store
                    .get_or_create_sync(&k, |_| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(2_u32)
                    })
                    .unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                value
            })
        })
        .collect()
}

/// How the late callers meet the held load.
enum Meets {
    /// The invalidation told the flight table: they start a new load at once, while the held
    /// one is still paused.
    NewFlightAtOnce,
    /// A region expiry: they join the held flight, which finds itself stale at its end, and
    /// then load again together.
    JoinThenReload,
}

/// Holds a load, runs `invalidate`, then checks what late callers get.
fn late_callers_after(ties: Ties, meets: Meets, invalidate: impl Fn(&Store, &Key)) {
    for _ in 0..5 {
        let store = store();
        let k = key("k");
        let held = hold_load(&store, &k, ties, 1_u32);
        invalidate(&store, &k);

        let (loads, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let late = start_late_callers(&store, &k, &loads, &done);
        match meets {
            Meets::NewFlightAtOnce => wait_until(
                "the late callers finish while the old load is held",
                Duration::from_secs(30),
                || done.load(Ordering::SeqCst) == LATE,
            ),
            Meets::JoinThenReload => wait_for_waiters(&store, &k, LATE),
        }
        held.release.open();
        assert_eq!(
            *held.caller.join().unwrap().unwrap(),
            1,
            "the caller that overlapped the invalidation gets the value it loaded"
        );
        for caller in late {
            assert_eq!(
                *caller.join().unwrap(),
                2,
                "a caller that started after the invalidation returned must not get the old load"
            );
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "single flight among the late callers"
        );
        assert_eq!(*store.get::<u32>(&k).unwrap().unwrap(), 2);
    }
}

#[test]
fn after_a_remove() {
    late_callers_after(Ties::Nothing, Meets::NewFlightAtOnce, |store, k| {
        store.remove(k);
    });
}

#[test]
fn after_a_clear() {
    late_callers_after(Ties::Nothing, Meets::NewFlightAtOnce, |store, _| {
        store.clear();
    });
}

#[test]
fn after_a_region_expiry() {
    late_callers_after(Ties::Catalog, Meets::JoinThenReload, |store, _| {
        store.expire_region::<Catalog>();
    });
}

#[test]
fn after_a_region_expiry_the_load_ties_itself_to_later() {
    late_callers_after(Ties::CatalogLater, Meets::JoinThenReload, |store, _| {
        store.expire_region::<Catalog>();
    });
}

#[test]
fn after_a_sub_key_expiry() {
    late_callers_after(Ties::SubKey("c1"), Meets::JoinThenReload, |store, _| {
        store.expire_region_key::<Catalog>("c1");
    });
}

#[test]
fn after_a_sub_key_expiry_by_name_with_separators() {
    late_callers_after(
        Ties::SubKey("a-b (x)"),
        Meets::JoinThenReload,
        |store, _| {
            store
                .expire_region_key_by_name("catalog", "a-b (x)")
                .unwrap();
        },
    );
}

#[test]
fn after_a_sub_key_expiry_as_a_peer_sends_it() {
    late_callers_after(Ties::SubKey("a~b'"), Meets::JoinThenReload, |store, _| {
        let text = "a~b'".sub_key_text();
        store
            .expire_region_key_by_name("catalog", &SubKeyText::new(&text))
            .unwrap();
    });
}

/// A `set` stores the new value: late callers read it, and none of them loads.
#[test]
fn after_a_set() {
    let store = store();
    let k = key("k");
    let held = hold_load(&store, &k, Ties::Nothing, 1_u32);
    store.set(k.clone(), 3_u32);
    let (loads, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for caller in start_late_callers(&store, &k, &loads, &done) {
        assert_eq!(*caller.join().unwrap(), 3, "the value that was set");
    }
    held.release.open();
    assert_eq!(*held.caller.join().unwrap().unwrap(), 1);
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    assert_eq!(
        *store.get::<u32>(&k).unwrap().unwrap(),
        3,
        "the old load was not stored"
    );
}

/// An expiry of a region the load is not tied to does not restart it: late callers share
/// it and get its value, with no second load.
#[test]
fn an_unrelated_region_expiry_does_not_restart_a_load() {
    let store = store();
    let k = key("k");
    let held = hold_load(&store, &k, Ties::Catalog, 1_u32);
    store.expire_region::<Pricing>();
    store.expire_region_key::<Catalog>("another sub-key");
    let (loads, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let late = start_late_callers(&store, &k, &loads, &done);
    wait_for_waiters(&store, &k, LATE);
    held.release.open();
    assert_eq!(*held.caller.join().unwrap().unwrap(), 1);
    for caller in late {
        assert_eq!(*caller.join().unwrap(), 1, "the load is still good");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0, "no second load");
    assert_eq!(
        *store.get::<u32>(&k).unwrap().unwrap(),
        1,
        "and it was stored"
    );
}

/// Async late callers, on a multi-thread runtime, after a remove and after a region expiry.
#[test]
fn async_late_callers_get_the_new_version() {
    let runtime = runtime();
    for region in [false, true] {
        let store = store();
        let k = key("k");
        let held = hold_load(
            &store,
            &k,
            if region { Ties::Catalog } else { Ties::Nothing },
            1_u32,
        );
        if region {
            store.expire_region::<Catalog>();
        } else {
            store.remove(&k);
        }
        let loads = Arc::new(AtomicUsize::new(0));
        let late: Vec<_> = (0..LATE)
            .map(|_| {
                let (store, k, loads) = (store.clone(), k.clone(), Arc::clone(&loads));
                runtime.spawn(async move {
                    store
                        .get_or_create(&k, async |_| {
                            loads.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(2_u32)
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        if region {
            wait_for_waiters(&store, &k, LATE);
        }
        held.release.open();
        assert_eq!(*held.caller.join().unwrap().unwrap(), 1);
        for caller in late {
            assert_eq!(*runtime.block_on(caller).unwrap(), 2);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}

/// Waiters that joined *before* the invalidation overlapped it: they may get the old value,
/// and they do not load again (only callers that start afterwards are promised more).
#[test]
fn callers_that_overlap_the_invalidation_share_the_old_load() {
    let store = store();
    let k = key("k");
    let held = hold_load(&store, &k, Ties::Catalog, 1_u32);
    let (loads, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let early = start_late_callers(&store, &k, &loads, &done);
    wait_for_waiters(&store, &k, LATE);
    store.expire_region::<Catalog>();
    held.release.open();
    assert_eq!(*held.caller.join().unwrap().unwrap(), 1);
    for caller in early {
        assert_eq!(*caller.join().unwrap(), 1);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    assert!(
        store.get::<u32>(&k).unwrap().is_none(),
        "not stored: it is stale"
    );
}

/// The task of a load that [`held_async_leader`] leads.
type Leader = tokio::task::JoinHandle<Result<Arc<u32>, LoadError<Infallible>>>;

/// Runs `check` on `runtime` with a new store whose key "k" has an async load held at a gate
/// ([`held_async_leader`]), handing it the store, the key, the leader and the gate's opener.
fn with_a_held_async_leader(
    runtime: &tokio::runtime::Runtime,
    check: impl AsyncFnOnce(&Store, &Key, Leader, common::Opener),
) {
    let store = store();
    let k = key("k");
    runtime.block_on(async {
        let (leader, release) = held_async_leader(&store, &k).await;
        check(&store, &k, leader, release).await;
    });
}

/// An async load of `k` on the current runtime, held at a gate once its factory runs; it
/// returns 7 when the gate opens.
async fn held_async_leader(store: &Store, k: &Key) -> (Leader, common::Opener) {
    let (gate, release) = Gate::closed();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let leader = tokio::spawn({
        let (store, k) = (store.clone(), k.clone());
        async move {
            store
                .get_or_create(&k, async |_| {
                    started_tx.send(()).unwrap();
                    gate.pass().await;
                    Ok::<_, Infallible>(7_u32)
                })
                .await
        }
    });
    started.await.unwrap();
    (leader, release)
}

/// A blocking caller on a current-thread runtime that would wait for an async load led on
/// its own thread gets a typed error instead of hanging; from a thread of its own it waits.
#[test]
fn a_blocking_wait_for_an_async_leader_on_the_same_thread_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    with_a_held_async_leader(&runtime, async |store, k, leader, release| {
        let refused = store.get_or_create_sync(k, |_| Ok::<_, Infallible>(8_u32));
        match refused {
            Err(LoadError::WouldDeadlock(error)) => {
                assert_eq!(&error.key, k);
                let text = LoadError::<Infallible>::WouldDeadlock(error).to_string();
                assert!(text.contains("async get_or_create"), "{text}");
            }
            other => panic!("expected WouldDeadlock, got {other:?}"),
        }
        // A thread outside the runtime may wait: the leader runs on. The count is read
        // before the thread starts, or a thread that joins at once would be counted in it
        // and the wait below would never end.
        let waiters = store.flight_waiters(k);
        let elsewhere = tokio::task::spawn_blocking({
            let (store, k) = (store.clone(), k.clone());
            move || store.get_or_create_sync(&k, |_| Ok::<_, Infallible>(8_u32))
        });
        while store.flight_waiters(k) == waiters {
            tokio::task::yield_now().await;
        }
        release.open();
        assert_eq!(*leader.await.unwrap().unwrap(), 7);
        assert_eq!(*elsewhere.await.unwrap().unwrap(), 7);
    });
}

/// On a multi-thread runtime with one worker, a blocking caller in one task waits for an
/// async leader in another: the wait hands the worker off (`block_in_place`), so the leader
/// runs and both finish. The hand-off is the `tokio` feature's (without it such a wait is
/// refused as `WouldDeadlock`).
#[cfg(feature = "tokio")]
#[test]
fn a_blocking_wait_on_a_multi_thread_worker_hands_the_worker_off() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    with_a_held_async_leader(&runtime, async |store, k, leader, release| {
        let blocking = tokio::spawn({
            let (store, k) = (store.clone(), k.clone());
            async move { store.get_or_create_sync(&k, |_| Ok::<_, Infallible>(8_u32)) }
        });
        let opener = tokio::spawn({
            let (store, k) = (store.clone(), k.clone());
            async move {
                while store.flight_waiters(&k) != Some(1) {
                    tokio::task::yield_now().await;
                }
                release.open();
            }
        });
        assert_eq!(*leader.await.unwrap().unwrap(), 7);
        assert_eq!(*blocking.await.unwrap().unwrap(), 7);
        opener.await.unwrap();
    });
}

/// Many readers and one writer on a versioned "database" of a few keys. The writer bumps a
/// key's version, invalidates it (each kind of invalidation in turn), and only then
/// announces the version as *finished*. Every read notes the finished version of its key
/// before it starts, and must get at least that version — whether it hit, loaded, or joined
/// a load in progress. Repeated with sync and async readers.
#[test]
fn stress_no_read_goes_back_past_a_finished_invalidation() {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    const KEYS: usize = 3;
    const WRITES: usize = 10_000;
    const READERS: usize = 6;

    /// The "database", the keys, and what the readers count.
    struct World {
        store: Store,
        keys: Vec<Key>,
        versions: [AtomicU64; KEYS],
        /// Per key: the newest version whose invalidation has returned.
        finished: [AtomicU64; KEYS],
        writing: AtomicBool,
        stale: AtomicUsize,
        reads: AtomicUsize,
    }

    impl World {
        /// The next key a reader picks (a cheap scramble of its counter), and the floor
        /// its read must reach.
        fn next(&self, n: &mut usize) -> (usize, u64) {
            *n = n.wrapping_mul(31).wrapping_add(7);
            let i = *n % KEYS;
            (i, self.finished[i].load(Ordering::SeqCst))
        }

        /// The factory: ties the entry to the key's sub-key, reads the version, and yields
        /// so that invalidations land while loads are in flight.
        fn load(&self, i: usize, entry: &mut EntryOptions) -> u64 {
            entry.region_key::<Catalog>(&format!("c-{i}"));
            let version = self.versions[i].load(Ordering::SeqCst);
            std::thread::yield_now();
            version
        }

        fn record(&self, got: u64, floor: u64) {
            if got < floor {
                self.stale.fetch_add(1, Ordering::SeqCst);
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    let runtime = runtime();
    let world = Arc::new(World {
        store: store(),
        keys: (0..KEYS).map(|i| key(&format!("k{i}"))).collect(),
        versions: std::array::from_fn(|_| AtomicU64::new(0)),
        finished: std::array::from_fn(|_| AtomicU64::new(0)),
        writing: AtomicBool::new(true),
        stale: AtomicUsize::new(0),
        reads: AtomicUsize::new(0),
    });

    let sync_readers: Vec<_> = (0..READERS / 2)
        .map(|r| {
            let w = Arc::clone(&world);
            std::thread::spawn(move || {
                let mut n = r;
                while w.writing.load(Ordering::SeqCst) {
                    let (i, floor) = w.next(&mut n);
                    let got = w
                        .store
                        .get_or_create_sync(&w.keys[i], |entry| {
                            Ok::<_, Infallible>(w.load(i, entry))
                        })
                        .unwrap();
                    w.record(*got, floor);
                }
            })
        })
        .collect();
    let async_readers: Vec<_> = (0..READERS / 2)
        .map(|r| {
            let w = Arc::clone(&world);
            runtime.spawn(async move {
                let mut n = r + 100;
                while w.writing.load(Ordering::SeqCst) {
                    let (i, floor) = w.next(&mut n);
                    let got = w
                        .store
                        .get_or_create(&w.keys[i], async |entry| {
                            let version = w.load(i, entry);
                            tokio::task::yield_now().await;
                            Ok::<_, Infallible>(version)
                        })
                        .await
                        .unwrap();
                    w.record(*got, floor);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    let (store, keys) = (&world.store, &world.keys);
    for w in 0..WRITES {
        let i = w % KEYS;
        let version = world.versions[i].fetch_add(1, Ordering::SeqCst) + 1;
        match (w / KEYS) % 5 {
            0 => {
                store.remove(&keys[i]);
            }
            1 => {
                store.expire_region_key::<Catalog>(&format!("c-{i}"));
            }
            2 => store.expire_region::<Catalog>(),
            3 => store.clear(),
            _ => {
                store.set(keys[i].clone(), version);
            }
        }
        world.finished[i].store(version, Ordering::SeqCst);
        if w % 64 == 0 {
            std::thread::yield_now();
        }
    }
    world.writing.store(false, Ordering::SeqCst);
    for reader in sync_readers {
        reader.join().unwrap();
    }
    for reader in async_readers {
        runtime.block_on(reader).unwrap();
    }
    let reads = world.reads.load(Ordering::Relaxed);
    assert!(reads > 0);
    assert_eq!(
        world.stale.load(Ordering::SeqCst),
        0,
        "reads that returned a version older than one whose invalidation had finished before they started (of {reads} reads)"
    );
}
