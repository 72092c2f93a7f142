//! Guarantee 7 with a replay log, on the in-process bus: a loss the log can see (a
//! reconnect, a payload lost on the channel, a lagged queue) is repaired by applying exactly
//! the messages that were missed — the evicted keys are the missed ones, everything else
//! stays cached, nothing is cleared — and a loss it cannot cover (trimmed, recreated, a read
//! that fails or hangs) clears, counted with its reason. Reads bypass the store while a
//! repair runs; live messages that a repair already applied are dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::time::Duration;

use nearcache::{
    Backplane, CacheEvent, CacheOptions, ClearCause, InMemoryBackplane, InstanceId, Key,
};
use nearcache_backplane::wire::Op;
use propagation_support::{Instance, encoded, key, quiet, trio, within};

/// A bus whose log easily holds everything a test publishes.
/// A [`trio`] with `options` on a new bus whose replay log keeps 1,024 messages, and the bus.
async fn logged_trio(options: CacheOptions) -> (InMemoryBackplane, [Instance; 3]) {
    let bus = InMemoryBackplane::new().with_replay_log(1024);
    let instances = trio(&bus, options).await;
    (bus, instances)
}

/// Awaits a `LossRepaired` with `cause`; returns (messages, keys).
async fn repaired(instance: &mut Instance, cause: ClearCause) -> (u64, u64) {
    match instance
        .next_event(
            &format!("a LossRepaired({cause:?}) event"),
            |e| matches!(e, CacheEvent::LossRepaired { cause: c, .. } if *c == cause),
        )
        .await
    {
        CacheEvent::LossRepaired { messages, keys, .. } => (messages, keys),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_is_repaired_by_evicting_exactly_the_missed_keys() {
    let (_bus, [a, mut b, c]) = logged_trio(quiet()).await;
    let (k1, k2, kept) = (key("k1"), key("k2"), key("kept"));
    b.misses_while_disconnected(&a, &[&k1], &[&k2, &kept]).await;
    c.cache.remove(&k2).await; // B misses both
    assert_eq!(b.get(&k1), Some(1), "stale until the link is back");

    b.conn.reconnect();
    assert_eq!(repaired(&mut b, ClearCause::Reconnect).await, (2, 2));
    b.event(CacheEvent::Connected).await;
    assert_eq!(b.get(&k1), None, "missed, so evicted");
    assert_eq!(b.get(&k2), None, "missed, so evicted");
    assert_eq!(b.get(&kept), Some(1), "not invalidated, so still cached");
    let s = b.stats();
    assert_eq!(s.loss_clears.total(), 0, "no clear");
    assert_eq!(
        (
            s.loss_repairs.repairs,
            s.loss_repairs.messages_replayed,
            s.loss_repairs.keys_replayed
        ),
        (1, 2, 2)
    );
    assert!(s.connected && !s.bypassing_reads);

    // And B hears the others live again.
    b.hears(&a, &kept, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_lost_on_the_channel_is_repaired_at_the_next_delivery() {
    let (bus, [a, mut b, mut c]) = logged_trio(quiet()).await;
    let (k2, k3, kept) = (key("k2"), key("k3"), key("kept"));
    for peer in [&b, &c] {
        peer.load_all(&[&k2, &kept]).await;
    }

    bus.drop_next(1);
    a.cache.remove(&k2).await; // logged, lost on the channel for everyone
    a.cache.remove(&k3).await; // its position skips one: the loss shows at once
    for peer in [&mut b, &mut c] {
        assert_eq!(repaired(peer, ClearCause::PeerGap).await, (2, 2));
        assert_eq!(peer.get(&k2), None);
        assert_eq!(peer.get(&kept), Some(1));
        // The delivery that revealed the gap had been replayed: recognised, not applied
        // twice (no event says so; the counter does).
        propagation_support::poll_until("the revealing delivery to be dropped", || {
            peer.stats().loss_repairs.replay_duplicates == 1
        })
        .await;
        let s = peer.stats();
        assert_eq!(s.loss_clears.total(), 0);
        assert_eq!(s.messages_received, 2, "A's two removes, each once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trimmed_past_the_gap_clears() {
    let (bus, [a, mut b, _c]) = logged_trio(quiet()).await;
    let (k1, k2, kept) = (key("k1"), key("k2"), key("kept"));
    b.misses_while_disconnected(&a, &[&k1, &k2], &[&kept]).await;
    bus.trim_log(1); // the first missed message is gone from the log

    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    assert_eq!(b.get(&kept), None, "cleared");
    let s = b.stats();
    assert_eq!(s.loss_clears.reconnect, 1);
    assert_eq!(s.loss_repairs.uncovered_trimmed, 1);
    assert_eq!(s.loss_repairs.repairs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_log_clears_then_later_losses_are_repaired_again() {
    let (bus, [a, mut b, _c]) = logged_trio(quiet()).await;
    let (k1, k2, kept) = (key("k1"), key("k2"), key("kept"));
    b.misses_while_disconnected(&a, &[&k1], &[&kept]).await;
    bus.recreate_log(); // a restart without persistence: what B missed is gone
    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    assert_eq!(b.stats().loss_repairs.uncovered_recreated, 1);

    // A's next message shows the gap in its numbers too (B knows A's position from its
    // answer): a second clear, since nothing tells B that the first one covered it.
    b.event(CacheEvent::Connected).await;
    a.cache.remove(key("after")).await;
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (a.id(), 2, 1));

    // The receiver learnt the new log's head: the next loss is repaired.
    b.misses_while_disconnected(&a, &[&k2], &[&kept]).await;
    b.conn.reconnect();
    assert_eq!(repaired(&mut b, ClearCause::Reconnect).await, (1, 1));
    assert_eq!(b.get(&k2), None);
    assert_eq!(b.get(&kept), Some(1));
    assert_eq!(b.stats().loss_clears.total(), 2);
}

/// A read that fails (the connection that reads the log died with the subscription) is
/// retried: the repair still happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_read_is_retried() {
    let (bus, [a, mut b, _c]) = logged_trio(quiet()).await;
    let (k1, kept) = (key("k1"), key("kept"));
    b.misses_while_disconnected(&a, &[&k1], &[&kept]).await;
    bus.fail_log_reads(2);
    b.conn.reconnect();
    assert_eq!(repaired(&mut b, ClearCause::Reconnect).await, (1, 1));
    assert_eq!((b.get(&k1), b.get(&kept)), (None, Some(1)));
    assert_eq!(b.stats().loss_repairs.read_failed, 0);
}

/// B (of a [`logged_trio`] whose repairs may take `replay_timeout`) misses A's remove of
/// "k1" while it still caches "kept", then reconnects with its log reads broken by
/// `break_reads`: the repair cannot finish, so B clears. Returns the trio and what
/// `break_reads` returned (held by the test until it is done).
async fn an_unfinished_repair<G>(
    replay_timeout: Duration,
    break_reads: impl FnOnce(&InMemoryBackplane) -> G,
) -> ([Instance; 3], G) {
    let mut options = quiet();
    options.backplane.replay_timeout = replay_timeout;
    let (bus, [a, mut b, c]) = logged_trio(options).await;
    b.misses_while_disconnected(&a, &[&key("k1")], &[&key("kept")])
        .await;
    let broken = break_reads(&bus);
    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    ([a, b, c], broken)
}

/// A log that cannot be read within `replay_timeout` clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_read_clears() {
    let ([_a, b, _c], ()) = an_unfinished_repair(Duration::from_millis(100), |bus| {
        bus.fail_log_reads(u64::MAX);
    })
    .await;
    assert_eq!(b.get(&key("kept")), None);
    assert_eq!(b.stats().loss_repairs.read_failed, 1);
}

/// The rule for reads during a repair: they bypass the store — a cached key that the missed
/// messages invalidate is not served, and what is loaded meanwhile is not stored — until the
/// replay is applied; then entries the log did not touch are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_bypass_the_store_while_a_repair_runs() {
    let (bus, [a, mut b, _c]) = logged_trio(quiet()).await;
    let (stale, kept) = (key("stale"), key("kept"));
    b.misses_while_disconnected(&a, &[&stale], &[&kept]).await;

    let gate = bus.hold_log_reads();
    b.conn.reconnect();
    within("the repair's log read", gate.wait_held(1)).await;
    assert_eq!(b.get(&stale), None, "a missed invalidation is never served");
    assert_eq!(
        b.get(&kept),
        None,
        "nothing is served until the replay is applied"
    );
    assert_eq!(*b.load(&stale, 7).await, 7, "loads still work");
    assert_eq!(b.get(&stale), None, "but are not stored");

    gate.release();
    assert_eq!(repaired(&mut b, ClearCause::Reconnect).await, (1, 1));
    assert_eq!(b.get(&kept), Some(1), "served again once repaired");
    assert_eq!(b.get(&stale), None);
    assert_eq!(b.stats().loss_clears.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_outlasts_replay_timeout_clears() {
    let (k1, kept) = (key("k1"), key("kept"));
    // Log reads held, never released while it matters.
    let ([_a, mut b, _c], gate) =
        an_unfinished_repair(Duration::from_millis(50), InMemoryBackplane::hold_log_reads).await;
    b.event(CacheEvent::Connected).await;
    assert_eq!(b.stats().loss_repairs.read_failed, 1);
    assert_eq!((b.get(&k1), b.get(&kept)), (None, None));
    b.load(&kept, 2).await;
    assert_eq!(b.get(&kept), Some(2), "served from the store again");
    drop(gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_off_ignores_the_log_and_clears() {
    let mut options = quiet();
    options.backplane.replay = false;
    let (_bus, [a, mut b, _c]) = logged_trio(options).await;
    let (k1, kept) = (key("k1"), key("kept"));
    b.misses_while_disconnected(&a, &[&k1], &[&kept]).await;
    b.conn.reconnect();
    assert!(b.loss_cleared(ClearCause::Reconnect).await);
    assert_eq!(b.get(&kept), None);
    assert_eq!(b.stats().loss_repairs, nearcache::LossRepairs::default());
}

/// A lagging queue is a loss the log covers too: the messages the queue dropped are read
/// back and applied, the queued ones already replayed are recognised and dropped.
/// Publishes on the in-process bus deliver synchronously; on a single-threaded runtime no
/// receiver runs until the test awaits, so the tiny queue overflows deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_lagged_queue_is_repaired() {
    let bus = InMemoryBackplane::with_queue_capacity(2).with_replay_log(64);
    let mut b = Instance::start(&bus, quiet()).await;
    let kept = key("kept");
    b.load(&kept, 1).await;
    let keys: Vec<Key> = (0..5).map(|i| key(&format!("k{i}"))).collect();
    for k in &keys {
        b.load(k, 1).await;
    }
    // A peer's five messages, published back to back: B's queue of two overflows.
    let (peer, publisher) = (InstanceId::random(), bus.connection());
    for (seq, k) in (1..).zip(&keys) {
        let ops = vec![Op::Remove {
            keys: vec![k.as_str().into()],
        }];
        publisher.publish(encoded(peer, seq, ops)).await.unwrap();
    }
    // At least the three the queue dropped are replayed (a receiver already waiting may
    // have been handed the first one live).
    let (messages, replayed) = repaired(&mut b, ClearCause::Lagged).await;
    assert!(
        (3..=5).contains(&messages) && replayed == messages,
        "{messages} {replayed}"
    );
    for k in &keys {
        assert_eq!(b.get(k), None);
    }
    assert_eq!(b.get(&kept), Some(1));
    let s = b.stats();
    assert_eq!(s.loss_clears.total(), 0);
    assert_eq!(s.messages_received, 5, "each once");
}

/// Replay racing live messages, many times over: A publishes a stream of removes from
/// another task while B's link goes down and comes back again and again (each time once
/// the previous repair is done). Every one of A's messages is applied on B exactly once and
/// in order — from the log or live, never both — and nothing is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_racing_live_messages_applies_each_message_once() {
    const MESSAGES: u64 = 300;
    const FLAPS: u64 = 10;
    for _round in 0..5 {
        let bus = InMemoryBackplane::new().with_replay_log(4096);
        let a = Instance::start(&bus, quiet()).await;
        let mut b = Instance::start(&bus, quiet()).await;
        let writer = tokio::spawn({
            let cache = a.cache.clone();
            async move {
                for i in 0..MESSAGES {
                    cache.remove(key(&format!("k{i}"))).await;
                }
            }
        });
        let mut health = b.cache.events();
        for _ in 0..FLAPS {
            b.conn.disconnect();
            within("Disconnected", async {
                while health.recv().await.unwrap() != CacheEvent::Disconnected {}
            })
            .await;
            tokio::task::yield_now().await;
            b.conn.reconnect();
            within("LossRepaired", async {
                while !matches!(
                    health.recv().await.unwrap(),
                    CacheEvent::LossRepaired { .. }
                ) {}
            })
            .await;
        }
        writer.await.unwrap();
        let a_id = a.id();
        for next in 1..=MESSAGES {
            let (origin, seq, _) = b.applied().await;
            assert_eq!((origin, seq), (a_id, next), "applied once each, in order");
        }
        let s = b.stats();
        assert_eq!(s.loss_clears.total(), 0, "{s:?}");
        assert_eq!(s.loss_repairs.repairs, FLAPS);
        assert_eq!(s.messages_received, MESSAGES);
        assert_eq!(
            s.duplicates_ignored, 0,
            "nothing reached the sequence check twice"
        );
    }
}

/// A load that started before the loss and ends after the repair applied the missed
/// invalidation of its key does not store what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_repair_is_not_stored() {
    let (_bus, [a, mut b, _c]) = logged_trio(quiet()).await;
    let k = key("k");
    let load = b.held_load(&k, 1).await; // read before the write
    b.conn.disconnect();
    b.event(CacheEvent::Disconnected).await;
    a.cache.remove(&k).await; // the write B misses
    b.conn.reconnect();
    assert_eq!(repaired(&mut b, ClearCause::Reconnect).await, (1, 1));
    assert_eq!(*load.finish().await, 1);
    assert_eq!(
        b.get(&k),
        None,
        "the value read before the write was not stored"
    );
}
