//! The removal listener through the facade: a peer's invalidation of a key is reported as
//! `PeerInvalidated`, this instance's own as `Invalidated`, and a listener that calls back
//! into the cache from the task applying peers' messages does not stall it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nearcache::{Cache, CacheEvent, CacheOptions, InMemoryBackplane, Key, RemovalCause};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<(String, RemovalCause)>>>;

async fn applied(events: &mut broadcast::Receiver<CacheEvent>) {
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await.unwrap(), CacheEvent::Applied { .. }) {}
    })
    .await
    .expect("a peer's message applied in time");
}

/// A and B on one bus; B reports its removals to `seen`, and its listener also reads the
/// key it is told about and removes it again (calls back into the cache).
async fn pair(seen: &Seen) -> (Cache, Cache, Arc<Mutex<Option<Cache>>>) {
    let bus = InMemoryBackplane::new();
    let mut options = CacheOptions::default();
    options.backplane.heartbeat_interval = Duration::from_secs(3600);
    let a = Cache::builder()
        .options(options.clone())
        .backplane(bus.connection())
        .build()
        .unwrap();
    let handle: Arc<Mutex<Option<Cache>>> = Arc::default();
    let b = {
        let (seen, handle) = (Arc::clone(seen), Arc::clone(&handle));
        Cache::builder()
            .options(options)
            .backplane(bus.connection())
            .removal_listener(move |key, cause| {
                seen.lock().unwrap().push((key.to_string(), cause));
                let cache = handle.lock().unwrap().clone();
                if let Some(cache) = cache {
                    let _ = cache.get::<u64>(key);
                    let _ = cache.len();
                }
            })
            .build()
            .unwrap()
    };
    // The test takes it back at the end, breaking the cycle.
    *handle.lock().unwrap() = Some(b.clone());
    tokio::time::timeout(WAIT, a.ready()).await.unwrap();
    tokio::time::timeout(WAIT, b.ready()).await.unwrap();
    (a, b, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_and_local_invalidations_are_told_apart() {
    let seen: Seen = Arc::default();
    let (a, b, handle) = pair(&seen).await;
    let (k1, k2) = (Key::from_text("k1"), Key::from_text("k2"));
    b.set(&k1, 1_u64);
    b.set(&k2, 2_u64);
    let mut events = b.events();
    a.remove(&k1).await;
    applied(&mut events).await;
    b.remove(&k2).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (String::from("k1"), RemovalCause::PeerInvalidated),
            (String::from("k2"), RemovalCause::Invalidated),
        ]
    );
    // The listener still works after the receiver ran it: the cache is not stalled.
    b.set(&k1, 3_u64);
    assert_eq!(b.get::<u64>(&k1).unwrap().as_deref(), Some(&3));
    handle.lock().unwrap().take();
    b.shutdown().await;
    a.shutdown().await;
}
