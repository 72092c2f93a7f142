//! What a hostile publisher on the channel can and cannot do without message signing: one
//! forged message costs clears but never silences a real peer, and invented origins cannot
//! grow the peer table without bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod propagation_support;

use nearcache::{ClearCause, InMemoryBackplane, InstanceId};
use propagation_support::{Instance, encoded, fence, key, quiet, remove_op};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_high_sequence_number_costs_a_clear_but_silences_no_one() {
    let bus = InMemoryBackplane::new();
    let a = Instance::start(&bus, quiet()).await;
    let mut b = Instance::start(&bus, quiet()).await;
    let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
    a.cache.remove(&k1).await;
    assert_eq!(b.applied().await, (a.id(), 1, 1));

    // One message under A's name at the end of the number space.
    bus.inject(encoded(a.id(), u64::MAX, vec![remove_op(&[&k3])]));
    assert!(b.loss_cleared(ClearCause::PeerGap).await);
    assert_eq!(b.applied().await, (a.id(), u64::MAX, 1));

    // A's real messages still reach B and are applied, not dropped as duplicates.
    b.load(&k2, 1).await;
    a.cache.remove(&k2).await;
    assert_eq!(b.applied().await, (a.id(), 2, 1));
    assert_eq!(b.get(&k2), None, "A's invalidation was applied");
    b.load(&k2, 2).await;
    a.cache.remove(&k2).await;
    assert_eq!(b.applied().await, (a.id(), 3, 1));
    assert_eq!(b.get(&k2), None);
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
