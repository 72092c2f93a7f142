//! A cache's life with a backplane: before its subscription is live it serves nothing from
//! its store; dropping the last handle publishes what is queued and then stops both
//! background tasks; `shutdown` does the same, reports what it could not send, and leaves a
//! pass-through; building fails with typed errors that say what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::convert::Infallible;
use std::time::Duration;

use nearcache::{BuildError, Cache, CacheOptions, InMemoryBackplane, Propagated, StoreOptions};
use propagation_support::{
    Instance, Tap, assert_published_after_the_trio, key, poll_until, quiet, quiet_trio,
    reconnecting_every, remove_op, trio, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_publishes_what_is_queued_then_stops_both_tasks() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let [a, mut b, _c] = trio(&bus, quiet()).await;
    assert_eq!(bus.subscribers(), 4, "the tap and three caches");
    let stopped = tokio::spawn(a.cache.stopped());

    let gate = bus.hold_publishes();
    a.cache.remove(key("k0"));
    within("A's first publish in flight", gate.wait_held(1)).await;
    let later: Vec<_> = (1..=4).map(|i| key(&format!("k{i}"))).collect();
    for k in &later {
        a.cache.remove(k);
    }
    let clone = a.cache.clone();
    drop(a);
    drop(clone); // the last handle
    assert!(
        !stopped.is_finished(),
        "the sender is still publishing what was queued"
    );
    gate.release();

    let a_id = tap.next_message().await.origin;
    assert_eq!(b.applied().await, (a_id, 1, 1));
    assert_eq!(
        b.applied().await,
        (a_id, 2, 4),
        "queued before the drop, published after it"
    );
    assert_eq!(
        tap.next_message().await.ops,
        vec![remove_op(&later.iter().collect::<Vec<_>>())]
    );
    within("A's tasks to stop", stopped).await.unwrap();
    assert_eq!(bus.subscribers(), 3, "A's subscription is gone");
    tap.assert_no_message(); // a goodbye invalidates nothing, like a heartbeat
    assert_published_after_the_trio(&bus, 3, "the two messages, then a goodbye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_then_leaves_a_pass_through() {
    let (bus, [a, mut b, _c]) = quiet_trio().await;
    let k = key("k");
    for i in 0..3 {
        a.cache.remove(key(&format!("queued-{i}")));
    }
    assert_eq!(within("shutdown", a.cache.shutdown()).await, 0);
    let mut applied = 0;
    while applied < 3 {
        applied += b.applied().await.2;
    }
    within("A's tasks to stop", a.cache.stopped()).await;
    assert_eq!(bus.subscribers(), 2);

    // Afterwards: no peers are heard, so nothing is served from the store...
    let s = a.stats();
    assert!(!s.connected && s.bypassing_reads);
    assert_eq!(s.outbox_len, 0);
    a.load(&k, 1).await;
    assert_eq!(a.get(&k), None);
    // ...and invalidations stay local, without piling up in the outbox.
    let published = bus.published();
    for i in 0..10 {
        assert_eq!(
            a.cache.remove(key(&format!("late-{i}"))).await,
            Propagated::Local
        );
    }
    let s = a.stats();
    assert_eq!((s.outbox_len, s.outbox_overflows), (0, 0));
    assert_eq!(bus.published(), published);
    within("ready() after shutdown", a.cache.ready()).await;
    assert_eq!(within("a second shutdown", a.cache.shutdown()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_backplane_down_returns_what_was_not_sent_without_lingering() {
    let bus = InMemoryBackplane::new();
    // A long backoff: shutdown must not wait for it.
    let mut options = reconnecting_every(Duration::from_secs(60));
    options.backplane.publish_timeout = Duration::from_millis(50);
    let mut a = Instance::start(&bus, options).await;
    a.conn.disconnect();
    for i in 0..3 {
        a.cache.remove(key(&format!("k{i}")));
    }
    a.event(nearcache::CacheEvent::PublishFailed).await;
    let started = std::time::Instant::now();
    let unsent = within("shutdown", a.cache.shutdown()).await;
    assert_eq!(
        unsent, 3,
        "the batch being retried counts, not only the queue"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait out the backoff"
    );
    assert_eq!(a.stats().outbox_len, 3);
    within("A's tasks to stop", a.cache.stopped()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_subscription_a_cache_serves_nothing_from_its_store() {
    let bus = InMemoryBackplane::new();
    let options = reconnecting_every(Duration::from_millis(5));
    let conn = bus.connection();
    conn.disconnect(); // subscribing fails until it is back
    let cache = Cache::builder()
        .options(options)
        .backplane(conn.clone())
        .build()
        .unwrap();
    let (k, set) = (key("k"), key("set"));

    let s = cache.stats().propagation.unwrap();
    assert!(!s.connected && s.bypassing_reads);
    let loaded = cache
        .get_or_create(&k, async |_| Ok::<_, Infallible>(1_u32))
        .await
        .unwrap();
    assert_eq!(*loaded, 1);
    assert_eq!(cache.get::<u32>(&k).unwrap(), None, "loaded, not stored");
    cache.set(&set, 2_u32); // stored, and its eviction queued for the peers
    assert_eq!(cache.get::<u32>(&set).unwrap(), None, "reads miss");

    conn.reconnect();
    within("the subscription", cache.ready()).await;
    let s = cache.stats().propagation.unwrap();
    assert!(s.connected && !s.bypassing_reads);
    assert_eq!(
        cache.get::<u32>(&set).unwrap(),
        None,
        "what was set before the subscription could have missed a peer's invalidation"
    );
    cache
        .get_or_create(&k, async |_| Ok::<_, Infallible>(3_u32))
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>(&k).unwrap().as_deref(), Some(&3));
    poll_until("the pre-ready set's message to go out", || {
        cache.stats().propagation.unwrap().outbox_len == 0
    })
    .await;
}

#[test]
fn a_backplane_outside_a_tokio_runtime_is_a_typed_error() {
    let error = Cache::builder()
        .backplane(InMemoryBackplane::new())
        .build()
        .unwrap_err();
    assert!(matches!(error, BuildError::NoRuntime), "{error:?}");
    assert!(error.to_string().contains("tokio runtime"), "{error}");
    // Without a backplane no runtime is needed.
    let local = Cache::new(CacheOptions::default()).unwrap();
    assert_eq!(local.instance_id(), None);
    assert!(local.stats().propagation.is_none());
}

#[test]
fn out_of_range_options_are_typed_errors_that_name_the_option() {
    let error = Cache::new(CacheOptions {
        store: StoreOptions {
            max_capacity: 0,
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    })
    .unwrap_err();
    assert!(matches!(error, BuildError::InvalidOptions(_)), "{error:?}");
    assert!(error.to_string().contains("max_capacity"), "{error}");

    let mut options = CacheOptions::default();
    options.backplane.publish_timeout = Duration::ZERO;
    // Checked before the runtime, with or without a backplane: a bad config fails early.
    let error = Cache::builder()
        .options(options)
        .backplane(InMemoryBackplane::new())
        .build()
        .unwrap_err();
    match &error {
        BuildError::InvalidBackplaneOption { option, .. } => {
            assert_eq!(*option, "publish_timeout");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        error.to_string().contains("backplane.publish_timeout"),
        "{error}"
    );
}

#[tokio::test]
async fn a_cache_without_a_backplane_is_local() {
    let cache = Cache::new(CacheOptions::default()).unwrap();
    let k = key("k");
    cache.set(&k, 1_u32).await;
    assert_eq!(cache.remove(&k).await, Propagated::Local);
    within("ready()", cache.ready()).await;
    within("stopped()", cache.stopped()).await;
    assert_eq!(cache.shutdown().await, 0);
    let mut events = cache.events();
    assert!(events.try_recv().is_err());
}

/// Single-threaded, so yielding runs both shutdown calls up to where they wait.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_shutdowns_both_wait_for_the_flush() {
    let (bus, [a, mut b, _c]) = quiet_trio().await;
    let gate = bus.hold_publishes();
    a.cache.remove(key("k"));
    within("A's publish in flight", gate.wait_held(1)).await;
    let first = tokio::spawn({
        let cache = a.cache.clone();
        async move { cache.shutdown().await }
    });
    let second = tokio::spawn({
        let cache = a.cache.clone();
        async move { cache.shutdown().await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !first.is_finished() && !second.is_finished(),
        "both wait for the publish in flight"
    );
    gate.release();
    assert_eq!(within("the first shutdown", first).await.unwrap(), 0);
    assert_eq!(within("the second shutdown", second).await.unwrap(), 0);
    assert_eq!(b.applied().await.2, 1);
}
