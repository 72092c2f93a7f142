//! `Cache::health()` and `Cache::watch_health()`: the coherence state, the staleness bound
//! and per-peer last words, through a cache's life (start, a peer's message, an outage, a
//! reconnect, shutdown).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use nearcache::{Cache, CacheEvent, CacheOptions, Coherence, Health, InMemoryBackplane, Key};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn options() -> CacheOptions {
    let mut options = CacheOptions::default();
    options.backplane.heartbeat_interval = Duration::from_secs(3600);
    options.backplane.max_staleness = Some(Duration::from_secs(30));
    options
}

/// A cache with [`options`] on `conn`, not yet subscribed.
fn cache_on(conn: InMemoryBackplane) -> Cache {
    Cache::builder()
        .options(options())
        .backplane(conn)
        .build()
        .unwrap()
}

async fn until_state(
    watch: &mut watch::Receiver<Health>,
    wanted: fn(&Coherence) -> bool,
) -> Health {
    tokio::time::timeout(WAIT, watch.wait_for(|h| wanted(&h.state)))
        .await
        .expect("the state in time")
        .unwrap()
        .clone()
}

#[test]
fn a_cache_without_a_backplane_is_coherent() {
    let cache = Cache::new(CacheOptions::default()).unwrap();
    let health = cache.health();
    assert_eq!(health.state, Coherence::Coherent);
    assert_eq!(health.staleness_bound, Some(Duration::ZERO));
    assert!(health.is_ready());
    assert_eq!(cache.watch_health().borrow().state, Coherence::Coherent);
}

#[tokio::test(flavor = "current_thread")]
async fn health_follows_the_link_from_start_to_shutdown() {
    let bus = InMemoryBackplane::new();
    let a = cache_on(bus.connection());
    let b_conn = bus.connection();
    let b = cache_on(b_conn.clone());
    // Not subscribed yet (nothing ran on this thread): reads bypass the store.
    let start = b.health();
    assert_eq!(start.state, Coherence::Bypassing);
    assert_eq!(start.staleness_bound, Some(Duration::ZERO));
    assert!(!start.is_ready());

    let mut watch = b.watch_health();
    a.ready().await;
    b.ready().await;
    until_state(&mut watch, |s| *s == Coherence::Coherent).await;
    let mut events = b.events();
    a.remove(Key::from_text("k")).await;
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await.unwrap(), CacheEvent::Applied { .. }) {}
    })
    .await
    .unwrap();
    let health = b.health();
    assert_eq!(health.state, Coherence::Coherent);
    assert!(health.is_ready());
    // Coherent: a lost message or a dead subscription is noticed within the echo timeout.
    assert_eq!(
        health.staleness_bound,
        Some(Duration::from_secs(3600 * 3)),
        "heartbeat_interval × heartbeat_echo_intervals"
    );
    let peer = health
        .peers
        .iter()
        .find(|p| Some(p.instance) == a.instance_id())
        .expect("A is listed");
    assert_eq!(peer.last_seq, 1, "A's first message");
    assert_eq!(health.oldest_unpublished, None);

    // The link goes down: lost, bounded by max_staleness, not ready.
    b_conn.disconnect();
    let lost = until_state(&mut watch, |s| matches!(s, Coherence::Lost { .. })).await;
    assert_eq!(lost.staleness_bound, Some(Duration::from_secs(30)));
    assert!(!lost.is_ready());
    let Coherence::Lost { since } = b.health().state else {
        panic!("still lost")
    };
    assert!(since.elapsed() < WAIT);

    // Back: coherent again.
    b_conn.reconnect();
    until_state(&mut watch, |s| *s == Coherence::Coherent).await;

    // Shut down: nothing is heard any more, so reads bypass the store.
    b.shutdown().await;
    until_state(&mut watch, |s| *s == Coherence::Bypassing).await;
    assert_eq!(b.health().state, Coherence::Bypassing);
}

#[tokio::test(flavor = "current_thread")]
async fn an_invalidation_stuck_in_the_outbox_makes_the_instance_suspect() {
    let bus = InMemoryBackplane::new();
    let conn = bus.connection();
    let mut opts = options();
    opts.backplane.publish_timeout = Duration::from_millis(50);
    let a = Cache::builder()
        .options(opts)
        .backplane(conn.clone())
        .build()
        .unwrap();
    a.ready().await;
    let mut watch = a.watch_health();
    until_state(&mut watch, |s| *s == Coherence::Coherent).await;
    let gate = conn.hold_publishes();
    a.remove(Key::from_text("k"));
    let suspect = until_state(&mut watch, |s| matches!(s, Coherence::Suspect { .. })).await;
    assert!(suspect.is_ready(), "still serving: suspect is a warning");
    assert!(suspect.oldest_unpublished >= Some(Duration::from_millis(50)));
    assert_eq!(suspect.staleness_bound, Some(Duration::from_secs(30)));
    gate.release();
    until_state(&mut watch, |s| *s == Coherence::Coherent).await;
    assert_eq!(a.health().oldest_unpublished, None);
}
