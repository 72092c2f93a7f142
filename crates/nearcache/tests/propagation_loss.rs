//! Guarantees 7 and 9 on the in-process bus: whenever an instance may have missed an
//! invalidation — a gap in a peer's sequence, a lost last message (caught by the peer's
//! heartbeat), a lagging subscription, a reconnect, its own outbox overflowing — it clears
//! itself (never the peers) and counts why; past `max_staleness` offline, reads bypass the
//! store. Garbage and duplicates on the channel are counted and dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nearcache::{CacheEvent, ClearCause, InMemoryBackplane, InstanceId, LossPolicy, Propagated};
use nearcache_backplane::wire::{self, Op};
use propagation_support::{
    Instance, Tap, assert_published_after_the_trio, encoded, fence, heartbeats_every, key,
    poll_until, quiet, quiet_trio, remove_op, trio, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_peers_sequence_clears_the_receiver_only() {
    let (bus, [a, mut b, mut c]) = quiet_trio().await;
    let (k1, k2, k3, kept) = (key("k1"), key("k2"), key("k3"), key("kept"));
    a.load(&kept, 1).await;
    a.cache.remove(&k1).await;
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 1, 1));
        peer.load(&kept, 1).await;
    }

    bus.drop_next(1);
    assert_eq!(
        a.cache.remove(&k2).await,
        Propagated::Published,
        "the bus accepted it, as Redis would, and lost it"
    );
    a.cache.remove(&k3).await;
    for peer in [&mut b, &mut c] {
        assert!(peer.loss_cleared(ClearCause::PeerGap).await);
        assert_eq!(
            peer.applied().await,
            (a.id(), 3, 1),
            "then seq 3 is applied"
        );
        assert_eq!(peer.get(&kept), None, "everything was cleared");
        let s = peer.stats();
        assert_eq!(s.loss_clears.peer_gap, 1);
        assert_eq!(s.loss_clears.total(), 1);
    }
    assert_eq!(a.get(&kept), Some(1), "the sender is not cleared");
    assert_eq!(a.stats().loss_clears.total(), 0);
    assert_published_after_the_trio(&bus, 3, "three removes: no clear was broadcast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_reveals_a_lost_last_message() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let a = Instance::start(&bus, heartbeats_every(Duration::from_millis(20))).await;
    let mut b = Instance::start(&bus, quiet()).await;
    let mut c = Instance::start(&bus, quiet()).await;
    let (k1, k2, kept) = (key("k1"), key("k2"), key("kept"));
    a.cache.remove(&k1).await;
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 1, 1));
        peer.load(&kept, 1).await;
    }

    // Lose A's next message for B and C, and nothing after it. A heartbeat may be the
    // publish in flight when the gate closes: the tap tells which one went through.
    let gate = bus.hold_publishes();
    a.cache.remove(&k2);
    loop {
        within("a publish from A in flight", gate.wait_held(1)).await;
        // A publishes one at a time and B and C are quiet: all else was delivered already.
        tap.drain();
        b.conn.drop_incoming(1);
        c.conn.drop_incoming(1);
        gate.release_one();
        let released = tap.next_any().await;
        if !released.is_heartbeat() {
            assert_eq!((released.seq, released.ops), (2, vec![remove_op(&[&k2])]));
            break;
        }
        // A lost heartbeat is harmless (the next one says the same); go again.
    }
    drop(gate);

    // Nothing else is sent; only A's next heartbeat, saying "my last was 2", tells them.
    for peer in [&mut b, &mut c] {
        assert!(peer.loss_cleared(ClearCause::PeerGap).await);
        assert_eq!(peer.get(&kept), None);
        let s = peer.stats();
        assert_eq!(s.loss_clears.peer_gap, 1);
        assert!(s.heartbeats_received >= 1);
        assert_eq!(s.messages_received, 1, "seq 2 never arrived");
    }
    assert!(a.stats().heartbeats_sent >= 1);
    assert_eq!(a.stats().messages_sent, 2);
}

/// Injected payloads are delivered synchronously; on a single-threaded runtime no receiver
/// runs until the test awaits, so the tiny queues overflow deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_lagging_subscription_clears_itself() {
    let bus = InMemoryBackplane::with_queue_capacity(2);
    let mut a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start(&bus, quiet()).await;
    let k = key("k");
    a.load(&k, 1).await;
    b.load(&k, 1).await;
    for _ in 0..5 {
        bus.inject(fence());
    }
    for peer in [&mut a, &mut b] {
        // The two that fit are still read (and rejected); the Lagged comes before the next
        // one read (a receiver already waiting gets the first queued payload first).
        let (mut lagged, mut rejected) = (0, 0);
        peer.next_event("a Lagged clear and two rejections", |e| {
            match e {
                CacheEvent::LossCleared {
                    cause: ClearCause::Lagged,
                    cleared: true,
                } => lagged += 1,
                CacheEvent::Rejected => rejected += 1,
                _ => {}
            }
            (lagged, rejected) == (1, 2)
        })
        .await;
        assert_eq!(peer.get(&k), None);
        let s = peer.stats();
        assert_eq!(s.loss_clears.lagged, 1);
        assert_eq!(s.loss_clears.total(), 1);
        assert_eq!(s.messages_rejected, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_clears_then_the_store_serves_again() {
    let (_bus, [a, mut b, _c]) = quiet_trio().await;
    let (k, other) = (key("k"), key("other"));
    b.misses_while_disconnected(&a, &[&k], &[&other]).await;
    assert!(!b.stats().connected);
    assert_eq!(b.get(&k), Some(1), "stale for now (no max_staleness set)");

    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    b.event(CacheEvent::Connected).await;
    assert_eq!(b.get(&k), None);
    assert_eq!(b.get(&other), None, "a reconnect clears everything");
    let s = b.stats();
    assert!(s.connected);
    assert_eq!((s.loss_clears.reconnect, s.loss_clears.total()), (1, 1));

    b.load(&k, 2).await;
    assert_eq!(b.get(&k), Some(2), "served from the store again");
    // And B hears A again.
    b.hears(&a, &k, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_overflow_clears_itself_once_and_peers_see_a_gap() {
    let bus = InMemoryBackplane::new();
    let mut options = quiet();
    options.backplane.outbox_capacity = 4;
    options.backplane.publish_timeout = Duration::from_millis(50);
    let [mut a, mut b, mut c] = trio(&bus, options).await;
    let held = key("held");
    for peer in [&a, &b, &c] {
        peer.load(&held, 1).await;
    }

    a.conn.disconnect();
    a.event(CacheEvent::Disconnected).await;
    assert_eq!(
        a.cache.remove(key("k0")).await,
        Propagated::Queued,
        "not published within publish_timeout; it stays queued"
    );
    a.event(CacheEvent::PublishFailed).await;
    // The sender retries k0's message (in flight) and takes nothing else until it goes.
    for i in 1..=4 {
        a.cache.remove(key(&format!("k{i}")));
    }
    let s = a.stats();
    assert_eq!((s.outbox_len, s.outbox_overflows), (5, 0));
    assert_eq!(a.get(&held), Some(1));

    a.cache.remove(key("k5")); // the fifth queued: overflow
    assert!(a.loss_cleared(ClearCause::OutboxOverflow).await);
    assert_eq!(a.get(&held), None, "A cleared itself");
    for i in 6..=20 {
        a.cache.remove(key(&format!("k{i}"))); // absorbed by the lost backlog
    }
    let s = a.stats();
    assert_eq!(s.outbox_overflows, 1, "counted once");
    assert_eq!(s.loss_clears.outbox_overflow, 1);
    assert_eq!(s.outbox_len, 2, "k0 in flight + the lost backlog");
    assert!(s.publish_failures >= 1);

    a.conn.reconnect();
    assert!(a.loss_cleared(ClearCause::Reconnect).await);
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 1, 1), "k0");
        assert!(
            peer.loss_cleared(ClearCause::PeerGap).await,
            "the number A spent on its lost backlog shows as a gap"
        );
        assert_eq!(peer.get(&held), None);
    }
    assert_eq!(a.cache.remove(key("after")).await, Propagated::Published);
    for peer in [&mut b, &mut c] {
        assert_eq!(
            peer.applied().await,
            (a.id(), 3, 1),
            "numbered after the skipped one"
        );
        let s = peer.stats();
        assert_eq!(s.loss_clears.total(), 1, "one gap, noticed once");
        assert_eq!(
            s.invalidations_received, 2,
            "k0 and after: no clear was broadcast"
        );
    }
    let s = a.stats();
    assert_eq!(s.outbox_len, 0);
    assert_eq!(s.messages_sent, 2);
    assert_eq!(s.invalidations_sent, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_staleness_reads_bypass_the_store_until_reconnect() {
    let bus = InMemoryBackplane::new();
    let mut options = quiet();
    options.backplane.max_staleness = Some(Duration::from_millis(50));
    let _a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start(&bus, options).await;
    let (k, loaded) = (key("k"), key("loaded"));
    b.load(&k, 1).await;

    b.conn.disconnect();
    b.event(CacheEvent::Disconnected).await;
    b.event(CacheEvent::BypassStarted).await;
    let s = b.stats();
    assert!(s.bypassing_reads && !s.connected);
    assert_eq!(b.get(&k), None, "reads miss while bypassing");

    // Loads still share one flight: a second caller joins the first's load.
    let calls = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let caller = |calls: Arc<AtomicUsize>, mut release: tokio::sync::watch::Receiver<bool>| {
        let cache = b.cache.clone();
        let loaded = loaded.clone();
        tokio::spawn(async move {
            cache
                .get_or_create(&loaded, async |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.wait_for(|go| *go).await.unwrap();
                    Ok::<_, Infallible>(9_u32)
                })
                .await
                .unwrap()
        })
    };
    let first = caller(calls.clone(), release_rx.clone());
    poll_until("the first caller to lead the load", || {
        b.cache.flight_waiters(&loaded).is_some()
    })
    .await;
    let second = caller(calls.clone(), release_rx);
    poll_until("the second caller to join the flight", || {
        b.cache.flight_waiters(&loaded) == Some(1)
    })
    .await;
    release_tx.send(true).unwrap();
    let (first, second) = (
        within("the first caller", first).await.unwrap(),
        within("the second caller", second).await.unwrap(),
    );
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load for both");
    assert_eq!(b.get(&loaded), None, "not stored while bypassing");

    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    b.event(CacheEvent::Connected).await; // cleared first, then serving again
    assert!(!b.stats().bypassing_reads);
    b.load(&loaded, 10).await;
    assert_eq!(b.get(&loaded), Some(10), "served from the store again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_bus_is_counted_and_ignored() {
    let (bus, [a, mut b, mut c]) = quiet_trio().await;
    let k = key("k");
    b.load(&k, 1).await;
    c.load(&k, 1).await;
    let valid = encoded(InstanceId::from_u128(7), 1, vec![Op::Clear]);
    let mut future_version = valid.to_vec();
    future_version[3] = wire::codec::VERSION + 1;
    let payloads = [
        Bytes::from_static(b"garbage"),
        Bytes::new(),
        Bytes::from_static(b"\x2a\x03\x00\x00 a foreign publisher"),
        Bytes::from(future_version),
        valid.slice(..valid.len() - 1), // truncated
    ];
    for payload in &payloads {
        bus.inject(payload.clone());
    }
    for peer in [&mut b, &mut c] {
        for _ in &payloads {
            peer.rejected().await;
        }
        let s = peer.stats();
        assert_eq!(s.messages_rejected, 5);
        assert_eq!(s.loss_clears.total(), 0);
        assert_eq!(s.invalidations_applied, 0);
        assert_eq!(peer.get(&k), Some(1), "nothing was applied");
    }
    // The channel still works.
    b.hears(&a, &k, 1).await;
}

/// Unsigned, a number already seen is applied again: it may be the real message that a
/// forged one took the number of, and evicting twice is harmless. (Signed, it is dropped:
/// `tests/propagation_hostile.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_is_counted_and_applied_again() {
    let (bus, [_a, mut b, _c]) = quiet_trio().await;
    let k = key("k");
    let peer = InstanceId::from_u128(7);
    let message = encoded(peer, 1, vec![remove_op(&[&k])]);
    b.load(&k, 1).await;
    bus.inject(message.clone());
    assert_eq!(b.applied().await, (peer, 1, 1));
    b.load(&k, 2).await;

    // The same bytes again, as a retried publish that had gone through the first time.
    bus.inject(message);
    assert_eq!(b.applied().await, (peer, 1, 1));
    assert_eq!(
        b.get(&k),
        None,
        "evicting again costs a miss, nothing worse"
    );
    let s = b.stats();
    assert_eq!(s.duplicates_ignored, 1);
    assert_eq!((s.messages_received, s.invalidations_received), (1, 1));
    assert_eq!(s.invalidations_applied, 2);
    assert_eq!(
        s.propagation_lag.samples, 1,
        "a duplicate says nothing about lag"
    );
    assert_eq!(s.loss_clears.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_policy_none_counts_the_loss_but_keeps_the_entries() {
    let bus = InMemoryBackplane::new();
    let mut lenient = quiet();
    lenient.backplane.on_loss = LossPolicy::None;
    let a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start_after(&bus, lenient, &[&a]).await;
    let kept = key("kept");
    a.cache.remove(key("k1")).await;
    b.applied().await;
    b.load(&kept, 1).await;
    bus.drop_next(1);
    a.cache.remove(key("k2")).await;
    a.cache.remove(key("k3")).await;
    assert!(
        !b.loss_cleared(ClearCause::PeerGap).await,
        "reported as not cleared"
    );
    assert_eq!(b.get(&kept), Some(1));
    assert_eq!(b.stats().loss_clears.peer_gap, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_peer_whose_first_message_was_lost_is_caught() {
    let bus = InMemoryBackplane::new();
    let mut b = Instance::start(&bus, quiet()).await;
    let kept = key("kept");
    b.load(&kept, 1).await;
    // A peer that starts after B subscribed: B must see it from its seq 1.
    let a = Instance::start_after(&bus, quiet(), &[&b]).await;
    bus.drop_next(1);
    a.cache.remove(key("lost")).await;
    a.cache.remove(key("seen")).await;
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (a.id(), 2, 1));
    assert_eq!(b.get(&kept), None);
}

/// First contact does not read the peers' clocks: a newcomer whose clock is far behind
/// (it claims to have started in 1970) is known from its hello, so its lost first message
/// is a gap; a peer whose clock is far ahead (it claims to start in the future) is an
/// older peer like any other, a baseline in the window, not a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_does_not_depend_on_the_peers_clocks() {
    let bus = InMemoryBackplane::new();
    let mut b = Instance::start(&bus, quiet()).await;
    let (k, kept) = (key("k"), key("kept"));
    b.load(&kept, 1).await;

    let ahead = InstanceId::from_u128(0xA4EAD);
    let mut from_the_future = wire::decode(&encoded(ahead, 7, vec![remove_op(&[&k])])).unwrap();
    from_the_future.origin_started_unix_ms = u64::MAX / 2;
    bus.inject(wire::encode(&from_the_future).unwrap());
    assert_eq!(b.applied().await, (ahead, 7, 1));
    assert_eq!(
        b.get(&kept),
        Some(1),
        "a baseline in the window, not a loss"
    );

    let behind = InstanceId::from_u128(0xBE41D);
    bus.inject(wire::encode(&wire::Message::hello(behind, 0, 0, 0)).unwrap());
    // Its seq 1 is lost; seq 2 arrives.
    bus.inject(encoded(behind, 2, vec![remove_op(&[&k])]));
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (behind, 2, 1));
    assert_eq!(b.get(&kept), None);
    assert_eq!(b.stats().loss_clears.total(), 1);
}

/// A peer older than our subscription is trusted at its first word only during the first
/// heartbeat interval after we subscribed; after that, first hearing of it at seq 5 means
/// we missed 1 to 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_peer_first_heard_after_the_introduction_window_must_be_complete() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let mut b = Instance::start(&bus, heartbeats_every(Duration::from_millis(20))).await;
    // B's second periodic heartbeat on the bus (its hello does not count): more than one
    // interval since B subscribed.
    let mut beats = 0;
    while beats < 2 {
        let message = tap.next_any().await;
        assert!(message.is_heartbeat() && message.origin == b.id());
        if !message.is_hello() {
            beats += 1;
        }
    }
    // C has just subscribed (its window is an hour long).
    let mut c = Instance::start(&bus, quiet()).await;
    let (k, kept) = (key("k"), key("kept"));
    b.load(&kept, 1).await;
    c.load(&kept, 1).await;

    let elder = InstanceId::from_u128(0xE1DE);
    // Started long ago (origin_started_unix_ms = 0), at its fifth message.
    bus.inject(encoded(elder, 5, vec![remove_op(&[&k])]));
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (elder, 5, 1));
    assert_eq!(b.get(&kept), None);

    assert_eq!(c.applied().await, (elder, 5, 1));
    assert_eq!(
        c.get(&kept),
        Some(1),
        "in its window: a baseline, not a loss"
    );
    assert_eq!(c.stats().loss_clears.total(), 0);
}

/// First contact without guessing: a newcomer learns where an older peer stands from the
/// peer's answer to its hello, so a message from that peer lost afterwards is a gap, even
/// inside the newcomer's introduction window (where a first message alone would be taken
/// on trust and the loss before it would go unnoticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_learns_a_peers_position_from_its_answer_and_sees_the_next_loss() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    for i in 0..3 {
        a.cache.remove(key(&format!("before-{i}"))).await;
    }
    // With quiet options the newcomer's introduction window lasts an hour: only the answer
    // can tell it where A stands.
    let mut n = Instance::start(&bus, quiet()).await;
    poll_until("the newcomer to hear A's answer", || n.stats().peers == 1).await;
    assert_eq!(a.stats().answers_sent, 1);
    assert_eq!(n.stats().messages_received, 0, "only the answer came");
    let kept = key("kept");
    n.load(&kept, 1).await;

    n.conn.drop_incoming(1);
    assert_eq!(a.cache.remove(key("lost")).await, Propagated::Published);
    a.cache.remove(key("next")).await;
    assert!(n.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(n.applied().await, (a.id(), 5, 1));
    assert_eq!(n.get(&kept), None, "cleared: seq 4 never arrived");
    assert_eq!(n.stats().loss_clears.peer_gap, 1);
}
