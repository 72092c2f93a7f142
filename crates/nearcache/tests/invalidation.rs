//! One call per invalidation: `set`, `set_with`, `remove`, `expire_region`,
//! `expire_region_key` and `clear` act here and queue the message for the peers before they
//! return; the `Invalidation` they return is awaited to wait for the publish (and learn how
//! far it got) or dropped not to wait. Checked on the in-process bus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use nearcache::{
    Cache, CacheOptions, InMemoryBackplane, Invalidation, Key, Propagated, WaitPublished, region,
};
use propagation_support::{HELLO, Instance, duo, key, quiet, within};

region! {
    Catalog = "catalog";
}

/// An invalidation of `key("k")` (loaded in region `Catalog`, sub-key "c1"), and what the
/// invalidating instance holds under it right after the call.
type Kind = (
    &'static str,
    for<'a> fn(&'a Cache, &Key) -> Invalidation<'a>,
    Option<u32>,
);

const KINDS: [Kind; 6] = [
    ("set", |cache, k| cache.set(k, 2_u32), Some(2)),
    (
        "set_with",
        |cache, k| {
            cache.set_with(k, 2_u32, |e| {
                e.region::<Catalog>();
            })
        },
        Some(2),
    ),
    ("remove", |cache, k| cache.remove(k), None),
    (
        "expire_region",
        |cache, _| cache.expire_region::<Catalog>(),
        None,
    ),
    (
        "expire_region_key",
        |cache, _| cache.expire_region_key::<Catalog, _>("c1"),
        None,
    ),
    ("clear", |cache, _| cache.clear(), None),
];

/// Loads `value` under `k`, tied to region `Catalog` by sub-key "c1".
async fn load_tied(instance: &Instance, k: &Key, value: u32) {
    instance
        .cache
        .get_or_create(k, async |entry| {
            entry.region_key::<Catalog>("c1");
            Ok::<_, std::convert::Infallible>(value)
        })
        .await
        .unwrap();
    assert_eq!(instance.get(k), Some(value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_acts_here_and_reaches_the_peer_though_its_result_is_never_polled() {
    for (name, invalidate, left_here) in KINDS {
        let bus = InMemoryBackplane::new();
        let [a, mut b] = duo(&bus).await;
        let k = key("k");
        load_tied(&a, &k, 1).await;
        load_tied(&b, &k, 1).await;

        let before = bus.published(); // hellos, and A's answer to B's
        invalidate(&a.cache, &k); // its result dropped, never polled
        // No await since the call: it has acted here already, and queued the message.
        assert_eq!(
            a.get(&k),
            left_here,
            "{name}: applied here when the call returned"
        );

        assert_eq!(
            b.applied().await,
            (a.id(), 1, 1),
            "{name}: reached the peer"
        );
        assert_eq!(b.get(&k), None, "{name}: the peer's copy is gone");
        assert_eq!(bus.published(), before + 1, "{name}: one message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_every_kind_returns_published_once_the_backplane_took_it() {
    for (name, invalidate, _) in KINDS {
        let bus = InMemoryBackplane::new();
        let a = Instance::start(&bus, quiet()).await;
        let k = key("k");
        load_tied(&a, &k, 1).await;

        let outcome = within(name, invalidate(&a.cache, &k).into_future()).await;
        assert_eq!(outcome, Propagated::Published, "{name}");
        assert_eq!(
            bus.published(),
            HELLO + 1,
            "{name}: on the bus when the await returned"
        );
    }
}

/// With tokio's clock paused and the publish held at the bus, only `publish_timeout` can end
/// the wait.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn awaiting_returns_queued_after_publish_timeout_and_the_message_goes_out_later() {
    let bus = InMemoryBackplane::new();
    let mut options = quiet();
    options.backplane.publish_timeout = Duration::from_millis(200);
    let a = Instance::start(&bus, options).await;
    let mut b = Instance::start_after(&bus, quiet(), &[&a]).await;
    let k = key("k");
    b.load(&k, 1).await;
    let gate = bus.hold_publishes();

    let start = tokio::time::Instant::now();
    assert_eq!(a.cache.remove(&k).await, Propagated::Queued);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "waited publish_timeout"
    );
    assert_eq!(b.get(&k), Some(1), "not delivered while held");

    gate.release();
    let (origin, _, removed) = b.applied().await;
    assert_eq!((origin, removed), (a.id(), 1));
    assert_eq!(b.get(&k), None);
}

#[tokio::test]
async fn awaiting_without_a_backplane_returns_local() {
    let cache = Cache::new(CacheOptions::default()).unwrap();
    let k = key("k");
    cache.set(&k, 1_u32).await;
    assert_eq!(cache.get::<u32>(&k).unwrap().as_deref(), Some(&1));
    assert_eq!(cache.remove(&k).await, Propagated::Local);
    assert_eq!(cache.get::<u32>(&k).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_after_shutdown_returns_local() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    let k = key("k");
    assert_eq!(a.cache.shutdown().await, 0);
    a.cache.set(&k, 1_u32);
    assert_eq!(a.cache.remove(&k).await, Propagated::Local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_wait_midway_does_not_lose_the_invalidation() {
    let bus = InMemoryBackplane::new();
    let [a, mut b] = duo(&bus).await;
    let k = key("k");
    b.load(&k, 1).await;
    let gate = bus.hold_publishes();

    let mut wait = Box::pin(a.cache.remove(&k).into_future());
    within("the publish to be held", gate.wait_held(1)).await;
    // Polled once (the publish cannot have gone through), then dropped mid-wait.
    assert!(poll_once(wait.as_mut()).await.is_none());
    drop(wait);

    gate.release();
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert_eq!(b.get(&k), None);
}

/// Polls `future` exactly once.
async fn poll_once(mut future: Pin<&mut WaitPublished<'_>>) -> Option<Propagated> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_send_and_can_be_awaited_in_a_spawned_task() {
    fn assert_send<T: Send>(_: &T) {}
    let bus = InMemoryBackplane::new();
    let [a, mut b] = duo(&bus).await;
    let k = key("k");
    b.load(&k, 1).await;

    // The types, checked on a cache of their own (an unsent clear here would absorb the
    // remove below into one invalidation).
    let local = Cache::new(CacheOptions::default()).unwrap();
    let invalidation = local.clear();
    assert_send(&invalidation);
    assert_send(&invalidation.into_future());

    let cache = a.cache.clone();
    let spawned = tokio::spawn(async move { cache.remove(&k).await });
    assert_eq!(
        within("the spawned task", spawned).await.unwrap(),
        Propagated::Published
    );
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert_eq!(b.get(&key("k")), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn the_deprecated_sync_twins_still_act_here_and_reach_the_peer() {
    let bus = InMemoryBackplane::new();
    let [a, mut b] = duo(&bus).await;
    /// A deprecated twin, and what the invalidating instance holds right after it.
    type Twin = (&'static str, fn(&Cache, &Key), Option<u32>);
    let twins: [Twin; 5] = [
        ("set_sync", |cache, k| cache.set_sync(k, 2_u32), Some(2)),
        ("remove_sync", |cache, k| cache.remove_sync(k), None),
        (
            "expire_region_sync",
            |cache, _| cache.expire_region_sync::<Catalog>(),
            None,
        ),
        (
            "expire_region_key_sync",
            |cache, _| cache.expire_region_key_sync::<Catalog, _>("c1"),
            None,
        ),
        ("clear_sync", |cache, _| cache.clear_sync(), None),
    ];
    for (n, (name, twin, left_here)) in twins.into_iter().enumerate() {
        let k = key(name);
        load_tied(&a, &k, 1).await;
        load_tied(&b, &k, 1).await;
        twin(&a.cache, &k);
        assert_eq!(
            a.get(&k),
            left_here,
            "{name}: applied here when the call returned"
        );
        let (origin, seq, _) = b.applied().await;
        assert_eq!(
            (origin, seq),
            (a.id(), n as u64 + 1),
            "{name}: reached the peer"
        );
        assert_eq!(b.get(&k), None, "{name}: the peer's copy is gone");
    }
}
