//! Through the facade and a backplane: once an invalidation has been applied on an instance —
//! its own call returned, or a peer's message was applied there — no read that starts there
//! afterwards gets a value whose load began before it, for async and blocking callers alike.
//! Sub-keys have one spelling whichever call ties or expires them, here and on peers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use invalidation_support::How;
use nearcache::{Cache, CacheOptions, EntryOptions, Key, LoadError, Propagated, region};
use propagation_support::{next_applied, pair, poll_until, within};
use tokio::sync::{oneshot, watch};

mod invalidation_support;
mod propagation_support;

region!(Catalog = "catalog");

/// B starts loading `k` (it reads version 1, then waits); A invalidates `k`; once B has
/// applied A's message, late callers start on B — async and blocking — and must get
/// version 2. Then B's first load finishes with version 1 for its own caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_callers_after_a_peers_invalidation_get_the_new_version() {
    for how in How::ALL {
        let (a, b) = pair().await;
        let k = Key::from_text("Product:get-1");
        let db = Arc::new(AtomicU64::new(1));
        let (open, gate) = watch::channel(false);
        let (started_tx, started) = oneshot::channel();
        let first = tokio::spawn({
            let (b, k, db, mut gate) = (b.clone(), k.clone(), Arc::clone(&db), gate.clone());
            async move {
                b.get_or_create(&k, async |entry| {
                    entry.region_key::<Catalog>("a-b");
                    let version = db.load(Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok::<_, Infallible>(version)
                })
                .await
            }
        });
        within("the first load", started).await.unwrap();

        let mut events = b.events();
        db.store(2, Ordering::SeqCst);
        assert_eq!(
            how.invalidate::<Catalog>(&a, &k, "a-b").await,
            Propagated::Published
        );
        next_applied(&mut events).await;

        let loads = Arc::new(AtomicUsize::new(0));
        let load = {
            let (db, loads) = (Arc::clone(&db), Arc::clone(&loads));
            move || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(db.load(Ordering::SeqCst))
            }
        };
        let late_async: Vec<_> = (0..3)
            .map(|_| {
                let (b, k, load) = (b.clone(), k.clone(), load.clone());
                tokio::spawn(async move {
                    b.get_or_create(&k, async |entry| {
                        entry.region_key::<Catalog>("a-b");
                        load()
                    })
                    .await
                })
            })
            .collect();
        let late_blocking: Vec<_> = (0..3)
            .map(|_| {
                let (b, k, load) = (b.clone(), k.clone(), load.clone());
                tokio::task::spawn_blocking(move || {
                    b.get_or_create_sync(&k, |entry| {
                        entry.region_key::<Catalog>("a-b");
                        load()
                    })
                })
            })
            .collect();
        // Region expiries let late callers join the held load and load again after it;
        // give them the chance to join before it finishes.
        if matches!(how, How::Region | How::SubKey) {
            poll_until("the late callers to join", || {
                b.flight_waiters(&k).unwrap_or(0) >= 6
            })
            .await;
        }
        open.send_replace(true);
        assert_eq!(*within("the first load", first).await.unwrap().unwrap(), 1);
        for late in late_async {
            let value = within("an async late caller", late).await.unwrap().unwrap();
            assert_eq!(*value, 2, "{how:?}: an async late caller got the old load");
        }
        for late in late_blocking {
            let value = within("a blocking late caller", late)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                *value, 2,
                "{how:?}: a blocking late caller got the old load"
            );
        }
        let expected_loads = usize::from(!matches!(how, How::Set));
        assert!(
            loads.load(Ordering::SeqCst) <= 1.max(expected_loads),
            "{how:?}: single flight among late callers"
        );
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// Both caches load `k` tied to sub-key `sub` of `Catalog` by `tie`; `expirer` expires the
/// sub-key by the typed call; once `peer` has applied it, neither holds `k`.
async fn expired_here_and_on_the_peer(
    expirer: &Cache,
    peer: &Cache,
    k: &Key,
    sub: &str,
    case: &str,
    tie: fn(&mut EntryOptions, &str),
) {
    for cache in [expirer, peer] {
        cache
            .get_or_create(k, async |entry| {
                tie(entry, sub);
                Ok::<_, Infallible>(1_u8)
            })
            .await
            .unwrap();
    }
    let mut events = peer.events();
    expirer.expire_region_key::<Catalog, _>(sub).await;
    next_applied(&mut events).await;
    assert!(
        expirer.get::<u8>(k).unwrap().is_none(),
        "{sub:?} ({case}): not expired here"
    );
    assert!(
        peer.get::<u8>(k).unwrap().is_none(),
        "{sub:?} ({case}): not expired on the peer"
    );
}

/// An entry tied by region name to a sub-key with separators is expired by the typed call,
/// here and on a peer, and the other way round: one spelling of a sub-key.
#[tokio::test]
async fn a_sub_key_with_separators_has_one_spelling_here_and_on_peers() {
    for sub in ["a-b", "(x)", "it's", "a~b", "", "plain"] {
        let (a, b) = pair().await;
        let k = Key::from_text("Product:get-1");
        let by_name = |entry: &mut EntryOptions, sub: &str| {
            entry.region_key_by_name("catalog", sub).unwrap();
        };
        expired_here_and_on_the_peer(&a, &b, &k, sub, "tied by name", by_name).await;
        let typed = |entry: &mut EntryOptions, sub: &str| {
            entry.region_key::<Catalog>(sub);
        };
        expired_here_and_on_the_peer(&b, &a, &k, sub, "typed", typed).await;
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// `get_or_create_sync` on a current-thread runtime, waiting for an async load led on the
/// same thread, returns `WouldDeadlock` instead of hanging.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_call_that_would_deadlock_the_runtime_says_so() {
    let cache = Cache::new(CacheOptions::default()).unwrap();
    let k = Key::from_text("Product:get-1");
    let (open, gate) = watch::channel(false);
    let (started_tx, started) = oneshot::channel();
    let leader = tokio::spawn({
        let (cache, k, mut gate) = (cache.clone(), k.clone(), gate.clone());
        async move {
            cache
                .get_or_create(&k, async |_| {
                    started_tx.send(()).unwrap();
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok::<_, Infallible>(1_u8)
                })
                .await
        }
    });
    started.await.unwrap();
    let result = cache.get_or_create_sync(&k, |_| Ok::<_, Infallible>(2_u8));
    assert!(
        matches!(result, Err(LoadError::WouldDeadlock(_))),
        "{result:?}"
    );
    open.send_replace(true);
    assert_eq!(*leader.await.unwrap().unwrap(), 1);
}

/// A writer on A updates a versioned database and invalidates (each kind in turn); readers
/// on B, async and blocking, note the newest version whose invalidation B had applied
/// before they started, and must never get anything older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_no_read_on_a_peer_goes_back_past_an_applied_invalidation() {
    const KEYS: usize = 3;
    const WRITES: usize = 600;
    let (a, b) = pair().await;
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|i| Key::from_text(format!("Product:get-{i}")))
            .collect(),
    );
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    // Per key: the newest version whose invalidation B has applied.
    let applied_at_b: Arc<Vec<AtomicU64>> =
        Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let (stop, stopped) = watch::channel(false);
    let stale = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));

    let load = |versions: &[AtomicU64], i: usize, entry: &mut nearcache::EntryOptions| {
        entry.region_key::<Catalog>(&format!("c-{i}"));
        versions[i].load(Ordering::SeqCst)
    };
    let mut readers = Vec::new();
    for r in 0..4 {
        let (b, keys, versions, floor, stale, reads, stopped) = (
            b.clone(),
            Arc::clone(&keys),
            Arc::clone(&versions),
            Arc::clone(&applied_at_b),
            Arc::clone(&stale),
            Arc::clone(&reads),
            stopped.clone(),
        );
        let blocking = r % 2 == 0;
        readers.push(tokio::spawn(async move {
            let mut n: usize = r;
            while !*stopped.borrow() {
                n = n.wrapping_mul(31).wrapping_add(7);
                let i = n % KEYS;
                let before = floor[i].load(Ordering::SeqCst);
                let got = if blocking {
                    let (b, keys, versions) = (b.clone(), Arc::clone(&keys), Arc::clone(&versions));
                    tokio::task::spawn_blocking(move || {
                        b.get_or_create_sync(&keys[i], |entry| {
                            Ok::<_, Infallible>(load(&versions, i, entry))
                        })
                    })
                    .await
                    .unwrap()
                    .unwrap()
                } else {
                    b.get_or_create(&keys[i], async |entry| {
                        let version = load(&versions, i, entry);
                        tokio::task::yield_now().await;
                        Ok::<_, Infallible>(version)
                    })
                    .await
                    .unwrap()
                };
                if *got < before {
                    stale.fetch_add(1, Ordering::SeqCst);
                }
                reads.fetch_add(1, Ordering::Relaxed);
                // A hit never awaits: let the receiver and the writer run.
                tokio::task::yield_now().await;
            }
        }));
    }

    let mut events = b.events();
    for w in 0..WRITES {
        let i = w % KEYS;
        let version = versions[i].fetch_add(1, Ordering::SeqCst) + 1;
        let published = match (w / KEYS) % 4 {
            0 => a.remove(&keys[i]).await,
            1 => a.expire_region_key::<Catalog, _>(&format!("c-{i}")).await,
            2 => a.expire_region::<Catalog>().await,
            _ => a.clear().await,
        };
        assert_eq!(published, Propagated::Published);
        next_applied(&mut events).await;
        applied_at_b[i].store(version, Ordering::SeqCst);
    }
    stop.send_replace(true);
    for reader in readers {
        within("a reader", reader).await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "reads on B older than an invalidation B had applied before they started (of {})",
        reads.load(Ordering::Relaxed)
    );
}
