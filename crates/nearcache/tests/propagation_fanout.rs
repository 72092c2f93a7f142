//! Guarantee 6 on the in-process bus: every invalidation reaches every peer; nothing else is
//! published; a region expiry is one message; a peer never re-publishes what it received and
//! ignores its own messages; group commit batches without timers; and a peer's remove keeps
//! a racing load out of the store (guarantee 3 across instances).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use std::convert::Infallible;
use std::time::Duration;

use nearcache::{Cache, InMemoryBackplane, Propagated, region};
use nearcache_backplane::wire::Op;
use propagation_support::{
    HELLO, Instance, Tap, assert_published_after_the_trio, encoded, fence, key, poll_until, quiet,
    quiet_trio, remove_op, trio, within,
};

region! {
    Catalog = "catalog";
    Pricing = "pricing";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_invalidation_reaches_both_peers_and_only_its_entries() {
    let (bus, [mut a, mut b, mut c]) = quiet_trio().await;
    let (plain, set, catalog, c1, c2, pricing) = (
        key("plain"),
        key("set"),
        key("catalog"),
        key("c1"),
        key("c2"),
        key("pricing"),
    );
    for peer in [&b, &c] {
        peer.load(&plain, 1).await;
        peer.load(&set, 2).await;
        let cache = &peer.cache;
        let load = async |k, region: fn(&mut nearcache::EntryOptions)| {
            cache
                .get_or_create(k, async |entry| {
                    region(entry);
                    Ok::<_, Infallible>(3_u32)
                })
                .await
                .unwrap()
        };
        load(&catalog, |e| {
            e.region::<Catalog>();
        })
        .await;
        load(&c1, |e| {
            e.region_key::<Catalog>("c1");
        })
        .await;
        load(&c2, |e| {
            e.region_key::<Catalog>("c2");
        })
        .await;
        load(&pricing, |e| {
            e.region::<Pricing>();
        })
        .await;
    }
    let all = [&plain, &set, &catalog, &c1, &c2, &pricing];
    let held = |peer: &Instance| all.map(|k| peer.get(k).is_some());

    // Each step: invalidate on A, await Applied on B and C, check what is left there.
    assert_eq!(a.cache.remove(&plain).await, Propagated::Published);
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 1, 1));
        assert_eq!(held(peer), [false, true, true, true, true, true]);
    }

    assert_eq!(a.cache.set(&set, 42_u32).await, Propagated::Published);
    assert_eq!(a.get(&set), Some(42), "set stores here");
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 2, 1));
        assert_eq!(
            held(peer),
            [false, false, true, true, true, true],
            "a set evicts the peers' copies; the value does not travel"
        );
    }

    assert_eq!(
        a.cache.expire_region_key::<Catalog, _>("c1").await,
        Propagated::Published
    );
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 3, 1));
        assert_eq!(held(peer), [false, false, true, false, true, true]);
    }

    assert_eq!(
        a.cache.expire_region::<Catalog>().await,
        Propagated::Published
    );
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 4, 1));
        assert_eq!(held(peer), [false, false, false, false, false, true]);
    }

    assert_eq!(a.cache.clear().await, Propagated::Published);
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 5, 1));
        assert_eq!(held(peer), [false; 6]);
    }

    // Each has processed everything before a fence once it rejects it (A: its own echoes).
    bus.inject(fence());
    for instance in [&mut a, &mut b, &mut c] {
        instance.rejected().await;
    }
    let sa = a.stats();
    assert_eq!(
        (sa.messages_sent, sa.invalidations_sent, sa.heartbeats_sent),
        (5, 5, 0)
    );
    assert_eq!(sa.own_messages_ignored, HELLO + sa.answers_sent + 5);
    assert_eq!(
        (sa.messages_received, sa.invalidations_applied),
        (0, 0),
        "A applies nothing of its own"
    );
    assert_eq!(
        sa.propagation_lag.samples, 0,
        "the lag histogram records peers' messages only"
    );
    for peer in [&b, &c] {
        let s = peer.stats();
        assert_eq!(s.messages_received, 5);
        assert_eq!(s.invalidations_received, 5);
        assert_eq!(s.invalidations_applied, 5);
        assert_eq!(s.propagation_lag.samples, 5);
        assert!(s.propagation_lag.max < Duration::from_secs(10));
        assert_eq!((s.messages_sent, s.invalidations_sent), (0, 0));
        assert_eq!(s.loss_clears.total(), 0);
        assert_eq!((s.duplicates_ignored, s.messages_rejected), (0, 1));
        assert!(s.connected && !s.bypassing_reads);
    }
    assert_published_after_the_trio(&bus, 5, "five invalidations, five publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_peers_remove_is_returned_but_not_stored() {
    let (_bus, [a, mut b, _c]) = quiet_trio().await;
    let k = key("raced");
    // B's factory has read what the database said before A's change.
    let loading = b.held_load(&k, 7).await;

    assert_eq!(a.cache.remove(&k).await, Propagated::Published);
    assert_eq!(b.applied().await, (a.id(), 1, 1));

    let value = loading.finish().await;
    assert_eq!(*value, 7, "the caller still gets the loaded value");
    assert_eq!(b.get(&k), None, "but it is not stored: it may be stale");
    assert_eq!(b.cache.stats().store.inserts_rejected_stale, 1);
    // The next load runs the factory again and is stored.
    b.load(&k, 8).await;
    assert_eq!(b.get(&k), Some(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_our_own_origin_are_ignored() {
    let (bus, [mut a, mut b, _c]) = quiet_trio().await;
    let k = key("mine");
    a.load(&k, 1).await;
    b.load(&k, 1).await;

    // A message carrying A's id, as the channel echoes A's own publishes.
    bus.inject(encoded(a.id(), 1, vec![remove_op(&[&k])]));
    bus.inject(fence());
    a.rejected().await;
    assert_eq!(a.get(&k), Some(1), "A did not apply its own message");
    let sa = a.stats();
    assert_eq!(sa.own_messages_ignored, HELLO + sa.answers_sent + 1);
    assert_eq!(a.stats().invalidations_applied, 0);

    // To B it is a peer's message like any other.
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert_eq!(b.get(&k), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_invalidations_are_never_republished() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let [a, mut b, mut c] = trio(&bus, quiet()).await;
    let k = key("k");
    b.load(&k, 1).await;
    c.load(&k, 1).await;

    a.cache.remove(&k).await;
    b.applied().await;
    c.applied().await;

    // If B or C had re-published what they applied, their first message would be that.
    // Each now sends one of its own; it must be its seq 1, right after A's on the bus.
    assert_eq!(b.cache.remove(key("from-b")).await, Propagated::Published);
    assert_eq!(c.cache.remove(key("from-c")).await, Propagated::Published);
    let on_the_bus: Vec<_> = [
        tap.next_message().await,
        tap.next_message().await,
        tap.next_message().await,
    ]
    .into_iter()
    .map(|m| (m.origin, m.seq, m.ops))
    .collect();
    assert_eq!(
        on_the_bus,
        vec![
            (a.id(), 1, vec![remove_op(&[&k])]),
            (b.id(), 1, vec![remove_op(&[&key("from-b")])]),
            (c.id(), 1, vec![remove_op(&[&key("from-c")])]),
        ]
    );
    tap.assert_no_message();
    assert_published_after_the_trio(&bus, 3, "one message from each");
    assert_eq!(b.stats().messages_sent, 1);
    assert_eq!(c.stats().messages_sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_expiry_is_one_message_however_many_entries_it_evicts() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let [a, mut b, _c] = trio(&bus, quiet()).await;
    let keys: Vec<_> = (0..500).map(|i| key(&format!("entry-{i}"))).collect();
    for k in &keys {
        b.cache
            .get_or_create(k, async |entry| {
                entry.region::<Catalog>();
                Ok::<_, Infallible>(1_u32)
            })
            .await
            .unwrap();
        a.load(k, 1).await;
    }

    assert_eq!(
        a.cache.expire_region::<Catalog>().await,
        Propagated::Published
    );
    let message = tap.next_message().await;
    assert_eq!(
        message.ops,
        vec![Op::ExpireRegion {
            region: "catalog".into()
        }]
    );
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert!(keys.iter().all(|k| b.get(k).is_none()));
    // A's local expiry of 500 entries published nothing else: its next message is seq 2.
    a.cache.remove(key("next")).await;
    assert_eq!(tap.next_message().await.seq, 2);
    tap.assert_no_message();
    assert_published_after_the_trio(&bus, 2, "the expiry and the next remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_local_expiry_and_capacity_evictions_publish_nothing() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let (clock, time) = quanta::Clock::mock();
    let mut options = quiet();
    options.store.max_capacity = 16;
    let a = Cache::builder()
        .options(options)
        .backplane(bus.connection())
        .clock(clock)
        .build()
        .unwrap();
    within("A's subscription", a.ready()).await;

    // Loads that overflow the capacity (evictions), hits, and an entry that expires.
    for i in 0..200 {
        let k = key(&format!("load-{i}"));
        a.get_or_create_sync(&k, |_| Ok::<_, Infallible>(i))
            .unwrap();
        a.get_or_create_sync(&k, |_| Ok::<_, Infallible>(i))
            .unwrap();
    }
    let expiring = key("expiring");
    a.get_or_create_sync(&expiring, |entry| {
        entry.time_to_live(Duration::from_secs(1));
        Ok::<_, Infallible>(0_u32)
    })
    .unwrap();
    time.increment(Duration::from_secs(2));
    assert_eq!(a.get::<u32>(&expiring).unwrap(), None);
    let store = a.stats().store;
    assert!(store.evictions > 0, "{store:?}");
    assert!(store.expirations > 0, "{store:?}");
    assert!(store.loads >= 200, "{store:?}");

    // Had any of that been published, it would come before this remove.
    assert_eq!(a.remove(key("fence")).await, Propagated::Published);
    let first = tap.next_message().await;
    assert_eq!(
        (first.seq, first.ops),
        (1, vec![remove_op(&[&key("fence")])])
    );
    tap.assert_no_message();
    assert_eq!(bus.published(), HELLO + 1, "its hello, then the fence");
    assert_eq!(a.stats().propagation.unwrap().messages_sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_queues_during_a_publish_goes_out_together_in_the_next() {
    let bus = InMemoryBackplane::new();
    let mut tap = Tap::new(&bus).await;
    let [a, mut b, mut c] = trio(&bus, quiet()).await;
    let gate = bus.hold_publishes();

    a.cache.remove(key("first"));
    within("the first publish to be in flight", gate.wait_held(1)).await;
    let burst: Vec<_> = (0..100).map(|i| key(&format!("burst-{i}"))).collect();
    for k in &burst {
        a.cache.remove(k);
    }
    assert_eq!(a.stats().outbox_len, 101, "1 in flight + 100 queued");
    assert_eq!(gate.held(), 1, "one publish in flight at a time");
    gate.release();

    for peer in [&mut b, &mut c] {
        assert_eq!(peer.applied().await, (a.id(), 1, 1));
        assert_eq!(peer.applied().await, (a.id(), 2, 100));
    }
    let first = tap.next_message().await;
    let second = tap.next_message().await;
    assert_eq!(first.ops, vec![remove_op(&[&key("first")])]);
    assert_eq!(
        second.ops,
        vec![remove_op(&burst.iter().collect::<Vec<_>>())]
    );
    tap.assert_no_message();
    assert_published_after_the_trio(&bus, 2, "exactly two messages");
    // A's sender counts a message once its publish returns, which may be after B applied it.
    poll_until("A's sender to finish the batch", || {
        a.stats().outbox_len == 0
    })
    .await;
    let sa = a.stats();
    assert_eq!((sa.messages_sent, sa.invalidations_sent), (2, 101));
    for peer in [&b, &c] {
        assert_eq!(peer.stats().invalidations_applied, 101);
    }
}

/// With tokio's clock paused, time moves only when every task waits on a timer. A sender
/// that held a lone invalidation back for a batching timer would make it move.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_invalidation_is_not_delayed_by_any_timer() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start(&bus, quiet()).await;
    let k = key("k");
    b.load(&k, 1).await;

    let start = tokio::time::Instant::now();
    assert_eq!(a.cache.remove(&k).await, Propagated::Published);
    assert_eq!(b.applied().await, (a.id(), 1, 1));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.get(&k), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unawaited_invalidations_from_any_thread_are_published() {
    let (_bus, [a, mut b, _c]) = quiet_trio().await;
    let (k, other) = (key("k"), key("other"));
    b.load_all(&[&k, &other]).await;
    // From a thread outside the runtime, each result dropped: they never wait for the network.
    let cache = a.cache.clone();
    let k2 = k.clone();
    std::thread::spawn(move || {
        cache.set(&k2, 5_u32);
        cache.remove(&k2);
        cache.expire_region::<Catalog>();
        cache.expire_region_key::<Catalog, _>("c1");
    })
    .join()
    .unwrap();
    // However the sender batched them, four invalidations arrive.
    let mut applied = 0;
    while applied < 4 {
        let (origin, _, n) = b.applied().await;
        assert_eq!(origin, a.id());
        applied += n;
    }
    assert_eq!(applied, 4);
    assert_eq!(b.get(&k), None);
    assert_eq!(b.get(&other), Some(1));
    a.cache.clear();
    let (_, _, n) = b.applied().await;
    assert_eq!(n, 1);
    assert_eq!(b.get(&other), None);
    assert_eq!(b.stats().invalidations_applied, 5);
}
