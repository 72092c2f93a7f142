//! What a hostile publisher on the channel can and cannot do without message signing: one
//! forged message costs clears but never silences a real peer, and invented origins cannot
//! grow the peer table without bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use nearcache::{ClearCause, InMemoryBackplane, InstanceId};
use nearcache_backplane::wire::Op;
use propagation_support::{Instance, Tap, duo, encoded, fence, key, poll_until, quiet, remove_op};

/// A [`duo`] on a new bus in which B has heard A's first message: B knows A's position (1),
/// which a forger under A's name plays against. Returns the bus (to inject on) and the duo.
async fn b_has_heard_a() -> (InMemoryBackplane, [Instance; 2]) {
    let bus = InMemoryBackplane::new();
    let [a, mut b] = duo(&bus).await;
    b.hears(&a, &key("first"), 1).await;
    (bus, [a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_high_sequence_number_costs_a_clear_but_silences_no_one() {
    let (bus, [a, mut b]) = b_has_heard_a().await;
    let (k2, k3) = (key("k2"), key("k3"));

    // One message under A's name at the end of the number space.
    bus.inject(encoded(a.id(), u64::MAX, vec![remove_op(&[&k3])]));
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (a.id(), u64::MAX, 1));

    // A's real messages still reach B and are applied, not dropped as duplicates.
    b.hears(&a, &k2, 2).await;
    b.hears(&a, &k2, 3).await;
    let s = b.stats();
    assert_eq!(s.duplicates_ignored, 0);
    assert_eq!(
        s.loss_clears.peer_gap, 1,
        "the forged jump; A's own numbers fit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_origins_cannot_grow_the_peer_table_without_bound() {
    const INVENTED: u128 = 20_000;
    let bus = InMemoryBackplane::with_queue_capacity(30_000);
    let mut b = Instance::start(&bus, quiet()).await;
    for origin in 1..=INVENTED {
        // A heartbeat of an origin that has sent nothing: in order, and remembered.
        bus.inject(encoded(InstanceId::from_u128(origin), 0, vec![]));
    }
    bus.inject(fence());
    b.rejected().await;
    let s = b.stats();
    assert_eq!(s.heartbeats_received, INVENTED as u64);
    assert!(s.peers <= 10_000, "{} peers remembered", s.peers);
    assert_eq!(s.peers_evicted, INVENTED as u64 - s.peers as u64);
    assert_eq!(
        s.loss_clears.total(),
        0,
        "heartbeats of nothing are no loss"
    );
}

fn signed(key: &str, previous: Option<&str>) -> nearcache::CacheOptions {
    let mut options = quiet();
    options.backplane.signing_key = Some(nearcache::Secret::new(key));
    options.backplane.previous_signing_key = previous.map(nearcache::Secret::new);
    options
}

const KEY: &str = "a shared secret of the fleet";
const NEW_KEY: &str = "the fleet's next shared secret";

/// With a signing key, a publisher without it cannot even cost a clear: its messages, forged
/// origin and all, are refused and counted, and real messages go on being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_unsigned_and_badly_signed_messages_are_refused() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, signed(KEY, None)).await;
    let mut b = Instance::start_after(&bus, signed(KEY, None), &[&a]).await;
    let (k, kept) = (key("k"), key("kept"));
    b.load(&kept, 1).await;

    bus.inject(encoded(a.id(), u64::MAX, vec![remove_op(&[&kept])]));
    b.rejected().await;
    let forged =
        nearcache_backplane::wire::SigningKeys::new(b"not the fleet's key".to_vec(), None).unwrap();
    let message = nearcache_backplane::wire::Message {
        origin: a.id(),
        seq: u64::MAX,
        sent_at_unix_micros: 0,
        origin_started_unix_ms: 0,
        ops: vec![remove_op(&[&kept])],
    };
    bus.inject(
        nearcache_backplane::wire::encode_signed(
            &message,
            &nearcache_backplane::wire::WireLimits::DEFAULT,
            &forged,
        )
        .unwrap(),
    );
    b.rejected().await;
    assert_eq!(b.get(&kept), Some(1), "nothing was evicted or cleared");
    let s = b.stats();
    assert_eq!(s.messages_unauthenticated, 2);
    assert_eq!(s.loss_clears.total(), 0);

    // Signed messages are applied.
    b.hears(&a, &k, 1).await;
    assert_eq!(b.stats().messages_unauthenticated, 2);
}

/// Unsigned, a forged message can take a real peer's *next* number exactly (no jump to
/// notice). The real message then looks like a duplicate; it is applied all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_copy_of_the_next_number_does_not_hide_the_real_message() {
    let (bus, [a, mut b]) = b_has_heard_a().await;
    let (k2, decoy) = (key("k2"), key("decoy"));
    bus.inject(encoded(a.id(), 2, vec![remove_op(&[&decoy])]));
    assert_eq!(b.applied().await, (a.id(), 2, 1));
    // A's real seq 2 is applied.
    b.hears(&a, &k2, 2).await;
    assert_eq!(b.stats().duplicates_ignored, 1);
}

/// Signed, a duplicate can only be a retry or a replay of a real message: dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_a_duplicate_is_dropped() {
    use nearcache_backplane::wire::{Message, SigningKeys, WireLimits, encode_signed};
    let bus = InMemoryBackplane::new();
    let mut b = Instance::start(&bus, signed(KEY, None)).await;
    let peer = InstanceId::from_u128(0xD0B);
    let k = key("k");
    let message = Message {
        origin: peer,
        seq: 1,
        sent_at_unix_micros: 0,
        origin_started_unix_ms: 0,
        ops: vec![remove_op(&[&k])],
    };
    let keys = SigningKeys::new(KEY.as_bytes().to_vec(), None).unwrap();
    let bytes = encode_signed(&message, &WireLimits::DEFAULT, &keys).unwrap();
    bus.inject(bytes.clone());
    assert_eq!(b.applied().await, (peer, 1, 1));
    b.load(&k, 2).await;
    bus.inject(bytes);
    bus.inject(fence());
    b.rejected().await;
    assert_eq!(b.get(&k), Some(2), "the replay evicted nothing");
    let s = b.stats();
    assert_eq!((s.duplicates_ignored, s.invalidations_applied), (1, 1));
}

/// Rotation: each instance accepts both keys while they sign with either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_both_keys_are_accepted() {
    let bus = InMemoryBackplane::new();
    let mut old = Instance::start(&bus, signed(KEY, Some(NEW_KEY))).await;
    let mut new = Instance::start(&bus, signed(NEW_KEY, Some(KEY))).await;
    let mut unrotated = Instance::start(&bus, signed(KEY, None)).await;
    // The second instance answers its hello (it heard no other) with the new key, which it
    // cannot read.
    poll_until("the answer to the last hello", || {
        new.stats().answers_sent == 1
    })
    .await;
    let k = key("k");
    new.cache.remove(&k).await;
    assert_eq!(old.applied().await, (new.id(), 1, 1));
    old.cache.remove(&k).await;
    assert_eq!(new.applied().await, (old.id(), 1, 1));
    assert_eq!(unrotated.applied().await, (old.id(), 1, 1));
    assert_eq!(
        unrotated.stats().messages_unauthenticated,
        2,
        "the new key's answer to its hello and message, to an instance that only knows the old one"
    );
    assert_eq!(old.stats().messages_unauthenticated, 0);
    assert_eq!(new.stats().messages_unauthenticated, 0);
}

#[tokio::test]
async fn a_short_signing_key_is_refused_at_build() {
    let bus = InMemoryBackplane::new();
    let error = nearcache::Cache::builder()
        .options(signed("short", None))
        .backplane(bus)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("signing_key"), "{error}");
}

/// Anyone can send hellos, and a fleet restarting at once sends many: a peer answers a storm
/// of them with a few answers (a burst, then one per answer interval — one second with these
/// options), and the last hello is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_hellos_is_answered_by_a_few_answers() {
    const STORM: u128 = 5_000;
    const BURST: u64 = 4;
    let bus = InMemoryBackplane::with_queue_capacity(10_000);
    let a = Instance::start(&bus, quiet()).await;
    let mut tap = Tap::new(&bus).await;
    let started = std::time::Instant::now();
    for origin in 1..=STORM {
        bus.inject(encoded(InstanceId::from_u128(origin), 0, vec![Op::Hello]));
    }
    // The tap hears the hellos in order, A's answers mixed in.
    let mut hellos = 0;
    while hellos < STORM {
        if tap.next_any().await.origin != a.id() {
            hellos += 1;
        }
    }
    // With hour-long heartbeats, anything A publishes now is an answer: the last hellos
    // are answered too, merged into one.
    let answer = tap.next_any().await;
    assert_eq!(answer.origin, a.id());
    assert!(answer.is_heartbeat() && !answer.is_hello());
    let elapsed = started.elapsed();
    let answers = a.stats().answers_sent;
    let bound = BURST + elapsed.as_secs() + 1;
    assert!(
        (1..=bound).contains(&answers),
        "{answers} answers to {STORM} hellos in {elapsed:?} (at most {bound})"
    );
}
