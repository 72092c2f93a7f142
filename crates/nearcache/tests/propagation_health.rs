//! Guarantee 7 when the subscription itself fails: a subscription that the backplane ends is
//! made again, and one that stays "connected" while hearing nothing is found by the
//! instance's own heartbeats not coming back. Either way the instance clears itself once it
//! listens again, counted with its own cause, and hears its peers again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::time::Duration;

use nearcache::{CacheEvent, ClearCause, InMemoryBackplane};
use propagation_support::{Instance, heartbeats_every, key, quiet, quiet_trio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_ends_is_made_again_and_the_instance_clears() {
    let (_bus, [a, mut b, _c]) = quiet_trio().await;
    let (k, kept) = (key("k"), key("kept"));
    b.load_all(&[&k, &kept]).await;

    b.conn.end_subscriptions();
    b.event(CacheEvent::Disconnected).await;
    assert!(b.loss_cleared(ClearCause::SubscriptionEnded).await);
    b.event(CacheEvent::Connected).await;
    assert_eq!(b.get(&kept), None, "cleared: it may have missed something");
    let s = b.stats();
    assert!(s.connected);
    assert_eq!(
        (s.loss_clears.subscription_ended, s.loss_clears.total()),
        (1, 1)
    );

    // And B hears A again on its new subscription.
    b.hears(&a, &k, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_ends_while_the_backplane_is_down_is_retried_until_it_is_back() {
    let (_bus, [a, mut b, _c]) = quiet_trio().await;
    b.conn.disconnect();
    b.event(CacheEvent::Disconnected).await;
    b.conn.end_subscriptions();
    // Resubscribing fails while B's connection is down; it keeps trying with backoff.
    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::SubscriptionEnded).await);
    b.event(CacheEvent::Connected).await;
    let k = key("k");
    b.hears(&a, &k, 1).await;
}

/// The bus stops feeding B's subscription and says nothing: the link reads as up, no event
/// arrives. Only B's own heartbeats not coming back reveal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deaf_subscription_is_found_by_its_own_heartbeats_not_coming_back() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    let mut b_options = heartbeats_every(Duration::from_millis(50));
    b_options.backplane.heartbeat_echo_intervals = 3;
    let mut b = Instance::start(&bus, b_options).await;
    let (k, kept) = (key("k"), key("kept"));
    b.load_all(&[&k, &kept]).await;

    b.conn.unsubscribe_silently();
    a.cache.remove(&k).await; // B misses this, and nothing tells it
    assert!(b.loss_cleared(ClearCause::EchoLost).await);
    b.event(CacheEvent::Connected).await;
    assert_eq!(
        b.get(&k),
        None,
        "the missed invalidation is covered by the clear"
    );
    assert_eq!(b.get(&kept), None);
    let s = b.stats();
    assert_eq!((s.loss_clears.echo_lost, s.loss_clears.total()), (1, 1));
    assert!(s.connected);

    // B hears A again.
    b.hears(&a, &k, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_echo_check_off_a_deaf_subscription_goes_unnoticed() {
    let bus = InMemoryBackplane::new();
    let mut options = heartbeats_every(Duration::from_millis(20));
    options.backplane.heartbeat_echo_intervals = 0;
    let mut b = Instance::start(&bus, options).await;
    b.conn.unsubscribe_silently();
    // Its heartbeats keep going out and never come back; far more than the shortest echo
    // timeout (1 s) passes.
    let mut tap = propagation_support::Tap::new(&bus).await;
    for _ in 0..100 {
        let beat = tap.next_any().await;
        assert!(beat.is_heartbeat() && beat.origin == b.id());
    }
    assert_eq!(b.stats().loss_clears.total(), 0);
    while let Ok(event) = b.events.try_recv() {
        assert_eq!(
            event,
            CacheEvent::Connected,
            "nothing but the first subscription"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_says_goodbye_and_peers_forget_it_without_a_clear() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start(&bus, quiet()).await;
    let (k, kept) = (key("k"), key("kept"));
    b.load(&kept, 1).await;
    a.cache.remove(&k).await;
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert_eq!(b.stats().peers, 1);

    let a_id = a.id();
    assert_eq!(a.cache.shutdown().await, 0, "nothing left unsent");
    b.event(CacheEvent::PeerLeft { origin: a_id }).await;
    let s = b.stats();
    assert_eq!(s.peers, 0, "forgotten at once");
    assert_eq!(s.loss_clears.total(), 0);
    assert_eq!(b.get(&kept), Some(1));
}

/// A goodbye carries the last number: one ahead of what arrived means the last message was
/// lost, and the peer is still forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_ahead_of_what_arrived_is_a_gap() {
    use nearcache::InstanceId;
    use nearcache_backplane::wire::{self, Message};
    let bus = InMemoryBackplane::new();
    let mut b = Instance::start(&bus, quiet()).await;
    let peer = InstanceId::from_u128(0xB1E);
    let k = key("k");
    bus.inject(propagation_support::encoded(
        peer,
        1,
        vec![propagation_support::remove_op(&[&k])],
    ));
    assert_eq!(b.applied().await, (peer, 1, 1));
    b.load(&k, 1).await;
    bus.inject(wire::encode(&Message::goodbye(peer, 2, 0, 0)).unwrap());
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    b.event(CacheEvent::PeerLeft { origin: peer }).await;
    assert_eq!(b.get(&k), None);
    assert_eq!(b.stats().peers, 0);
}
