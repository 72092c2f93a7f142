//! Batch get-or-create through the facade: a peer's invalidation of one key during a batch
//! keeps only that key out (and late callers load it again), and batches run from spawned
//! tasks and blocking threads share loads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nearcache::{BatchEntries, Cache, CacheOptions, Key};
use propagation_support::{next_applied, pair, within};
use tokio::sync::{oneshot, watch};

mod propagation_support;

fn rows(batch: &BatchEntries, version: u64) -> Vec<(Key, u64)> {
    batch.keys().map(|key| (key.clone(), version)).collect()
}

/// B loads k1 and k2 in one batch (it reads version 1, then waits); A removes k2; once B
/// has applied A's message, a late caller of k2 on B loads version 2 at once instead of
/// joining the batch. The batch's caller gets version 1 of both (it overlapped the
/// invalidation), and B keeps k1 at version 1 and k2 at version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_invalidation_during_a_batch_keeps_only_that_key_out() {
    let (a, b) = pair().await;
    let (k1, k2) = (
        Key::from_text("Product:get-1"),
        Key::from_text("Product:get-2"),
    );
    let (open, gate) = watch::channel(false);
    let (started_tx, started) = oneshot::channel();
    let batch = tokio::spawn({
        let (b, keys, mut gate) = (b.clone(), [k1.clone(), k2.clone()], gate.clone());
        let mut started_tx = Some(started_tx);
        async move {
            b.get_or_create_many(&keys, async move |batch| {
                if let Some(started) = started_tx.take() {
                    started.send(()).unwrap();
                }
                gate.wait_for(|open| *open).await.unwrap();
                Ok::<_, Infallible>(rows(batch, 1))
            })
            .await
        }
    });
    within("the batch to start", started).await.unwrap();

    let mut events = b.events();
    a.remove(&k2).await;
    next_applied(&mut events).await;
    let late = within(
        "a late caller, which must not wait for the batch",
        b.get_or_create(&k2, async |_| Ok::<_, Infallible>(2_u64)),
    )
    .await
    .unwrap();
    assert_eq!(*late, 2);

    open.send_replace(true);
    let found = within("the batch", batch).await.unwrap().unwrap();
    assert_eq!(found[&k1].as_deref(), Some(&1));
    assert_eq!(
        found[&k2].as_deref(),
        Some(&1),
        "it overlapped the invalidation"
    );
    assert_eq!(b.get::<u64>(&k1).unwrap().as_deref(), Some(&1));
    assert_eq!(b.get::<u64>(&k2).unwrap().as_deref(), Some(&2));
    assert_eq!(b.stats().store.inserts_rejected_stale, 1);
}

/// Batches from spawned tasks and blocking threads over the same keys, released together:
/// every key is loaded once, and every caller gets every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_tasks_and_threads_share_loads() {
    let cache = Cache::new(CacheOptions::default()).unwrap();
    for round in 0..10 {
        let keys: Vec<Key> = (0..6)
            .map(|i| Key::from_text(format!("r{round}-{i}")))
            .collect();
        let loaded = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for caller in 0..8 {
            let (cache, keys, loaded, barrier) = (
                cache.clone(),
                keys.clone(),
                Arc::clone(&loaded),
                Arc::clone(&barrier),
            );
            if caller % 2 == 0 {
                tasks.push(tokio::spawn(async move {
                    tokio::task::block_in_place(|| barrier.wait());
                    cache
                        .get_or_create_many(&keys, async move |batch| {
                            loaded.fetch_add(batch.len(), Ordering::SeqCst);
                            Ok::<_, Infallible>(rows(batch, 1))
                        })
                        .await
                }));
            } else {
                tasks.push(tokio::task::spawn_blocking(move || {
                    barrier.wait();
                    cache.get_or_create_many_sync(&keys, |batch| {
                        loaded.fetch_add(batch.len(), Ordering::SeqCst);
                        Ok::<_, Infallible>(rows(batch, 1))
                    })
                }));
            }
        }
        for task in tasks {
            let found = within("a batch", task).await.unwrap().unwrap();
            assert_eq!(found.len(), keys.len());
            assert!(found.values().all(|v| v.as_deref() == Some(&1)));
        }
        assert_eq!(loaded.load(Ordering::SeqCst), keys.len(), "round {round}");
    }
}
