//! The Redis backplane on a real Redis Cluster (3 primaries + 3 replicas on loopback ports,
//! one cluster per test): instances that know different nodes find the shard owning their
//! channel's slot and invalidate each other; a slot migration, a manual failover and a hard
//! kill of the owning primary each end the subscription, which the instances notice (a loss:
//! they clear themselves, counted), follow to the new owner, and invalidate each other again
//! with nothing stale.
//!
//! Nothing sleeps to let something happen: every step awaits the event that says it
//! happened, or polls the cluster's own view, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;
mod topology_support;

use std::time::Duration;

use bytes::Bytes;
use nearcache::{Cache, RedisBackplane, RedisBackplaneError, RedisConfig};
use nearcache_backplane::{Backplane, BackplaneEvent, Subscription};
use nearcache_testkit::RedisCluster;
use redis_support::load_everywhere;
use topology_support::{
    Db, Failover, Log, WAIT, assert_no_node_reachable, assert_nothing_stale, blocking, dead_port,
    events, instance, instance_logging, invalidation_flows, on_each_node, redis_config, stats,
};

fn channel(app: &str) -> String {
    RedisConfig::for_app(app).channel_name()
}

/// Two instances of `app`, each knowing a single node, neither of them the channel's owner
/// (so each must find the owner itself), plus the owner's index.
async fn two_instances(cluster: &RedisCluster, app: &str) -> (Cache, Cache, usize) {
    two_instances_with(cluster, app, Log::Off).await
}

/// [`two_instances`] with or without the replay log.
async fn two_instances_with(cluster: &RedisCluster, app: &str, log: Log) -> (Cache, Cache, usize) {
    let owner = blocking(|| cluster.owner_of_channel(&channel(app))).unwrap();
    let mut others = (0..6).filter(|&i| i != owner);
    let (seed_a, seed_b) = (others.next().unwrap(), others.next().unwrap());
    let (url_a, url_b) = (cluster.url_of(&[seed_a]), cluster.url_of(&[seed_b]));
    let a = instance_logging(url_a, app, log).await;
    let b = instance_logging(url_b, app, log).await;
    (a, b, owner)
}

/// Waits, at most [`WAIT`], until `node` holds both instances' subscriptions to `app`'s
/// channel (a raw `SPUBLISH` there reaches two subscribers). Checked after invalidations
/// flowed both ways, yet once in seven runs of this file the single count taken then was
/// below 2: a subscription can still be moving after a failover, so the count is polled.
async fn both_subscribed_on(cluster: &RedisCluster, node: usize, app: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reached = blocking(|| cluster.spublish_raw(node, &channel(app), b"x")).unwrap();
        if reached == 2 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {reached} of 2 after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary other than `owner`.
fn other_primary(cluster: &RedisCluster, owner: usize) -> usize {
    (0..6)
        .find(|&i| i != owner && cluster.is_primary(i).unwrap())
        .unwrap()
}

async fn next_event(sub: &mut Subscription) -> BackplaneEvent {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("an event within the deadline")
        .expect("the subscription is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_seeded_with_different_nodes_invalidate_each_other_through_the_owning_shard() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let (a, b, owner) = two_instances(&cluster, "seeds").await;
    let db = Db::new(2);
    let (mut ea, mut eb) = (events("a", &a), events("b", &b));
    invalidation_flows(&a, &b, &mut eb, &db, 0).await;
    invalidation_flows(&b, &a, &mut ea, &db, 1).await;
    // The channel is sharded: its owner has both subscribers, no other node has any.
    let reached = blocking(|| cluster.spublish_raw(owner, &channel("seeds"), b"not nearcache"));
    assert_eq!(reached.unwrap(), 2);
    for (name, cache) in [("a", &a), ("b", &b)] {
        assert_eq!(stats(cache).loss_clears.total(), 0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_while_invalidations_flow_is_a_counted_loss_then_the_slot_is_followed() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let (a, b, owner) = two_instances(&cluster, "migrate").await;
    let slot = blocking(|| cluster.slot_of(&channel("migrate"))).unwrap();
    let target = blocking(|| other_primary(&cluster, owner));
    let db = Db::new(4);
    let (mut ea, mut eb) = (events("a", &a), events("b", &b));
    invalidation_flows(&a, &b, &mut eb, &db, 0).await;

    // Mid-migration the source keeps serving the channel: nothing is lost yet.
    blocking(|| cluster.begin_slot_migration(slot, owner, target)).unwrap();
    invalidation_flows(&a, &b, &mut eb, &db, 1).await;
    invalidation_flows(&b, &a, &mut ea, &db, 1).await;
    load_everywhere(&[&a, &b], &db, 2..4).await;

    // The move ends: the source ends every subscription of the slot (`sunsubscribe`).
    blocking(|| cluster.finish_slot_migration(slot, target)).unwrap();
    for events in [&mut ea, &mut eb] {
        events.reconnected_and_cleared().await;
    }
    for (name, cache) in [("a", &a), ("b", &b)] {
        assert_eq!(stats(cache).loss_clears.reconnect, 1, "{name}");
        assert_nothing_stale(name, cache, &db, 4);
    }
    invalidation_flows(&a, &b, &mut eb, &db, 2).await;
    invalidation_flows(&b, &a, &mut ea, &db, 3).await;
    both_subscribed_on(
        &cluster,
        target,
        "migrate",
        "both subscriptions followed the slot to its new owner",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_is_a_counted_loss_then_the_new_primary_is_followed() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let (a, b, owner) = two_instances(&cluster, "failover").await;
    let slot = blocking(|| cluster.slot_of(&channel("failover"))).unwrap();
    let replica = blocking(|| cluster.replicas_of(owner)).unwrap()[0];
    let mut failover = Failover::warm(a, b).await;

    blocking(|| cluster.failover(replica, slot)).unwrap();
    let clears = failover.cleared_then_coherent().await;
    assert!(clears.iter().all(|&n| n >= 1), "{clears:?}");
    both_subscribed_on(
        &cluster,
        replica,
        "failover",
        "both subscriptions moved to the promoted replica",
    )
    .await;
}

/// The channel's primary is killed, A writes while the shard has none, and the cluster
/// promotes its replica: the instances follow it and end coherent ([`Failover`]).
async fn kill_the_owner(app: &str, log: Log) {
    let mut cluster = blocking(RedisCluster::start).unwrap();
    let (a, b, owner) = two_instances_with(&cluster, app, log).await;
    let slot = blocking(|| cluster.slot_of(&channel(app))).unwrap();
    let replica = blocking(|| cluster.replicas_of(owner)).unwrap()[0];
    let mut failover = Failover::warm(a, b).await;

    blocking(|| cluster.node_mut(owner).kill()).unwrap();
    failover.write_without_a_primary().await;
    blocking(|| cluster.wait_for_owner(slot, replica)).unwrap();
    failover.back_and_coherent(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_a_counted_loss_and_nothing_stale_survives_the_automatic_failover() {
    kill_the_owner("kill", Log::Off).await;
}

/// The same kill with the replay log on (the log's keys share the channel's slot, so they
/// fail over with it): each instance repairs from the promoted replica's copy of the log or,
/// when that copy cannot tell, clears — counted either way — and nothing stale survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_replay_log_a_killed_primary_is_repaired_or_cleared_and_nothing_stale_survives() {
    kill_the_owner("kill-log", Log::On).await;
}

/// The ACL line of docs/operations.md, set on every node (ACLs are per node), is all an
/// instance needs: finding the owner, publishing, subscribing, and again after the slot moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_its_channel_and_cluster_slots_is_enough() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let channel = channel("acl");
    let rules = format!("on >pw-acl resetchannels &{channel} -@all +spublish +ssubscribe +ping");
    for index in 0..6 {
        let node = cluster.node(index);
        blocking(|| {
            let mut con = node.connection().unwrap();
            for (user, extra) in [("catalog-cache", "+cluster|slots"), ("no-slots", "")] {
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(user)
                    .arg(rules.split_whitespace().collect::<Vec<_>>())
                    .arg(extra.split_whitespace().collect::<Vec<_>>())
                    .query::<()>(&mut con)
                    .unwrap();
            }
        });
    }
    // Without CLUSTER SLOTS the owner cannot be found: the error says credentials/ACL.
    let no_slots = cluster
        .url()
        .replace("redis+cluster://", "redis+cluster://no-slots:pw-acl@");
    let err = RedisBackplane::connect_with(redis_config(no_slots, "acl"))
        .await
        .unwrap_err();
    assert!(matches!(err, RedisBackplaneError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("CLUSTER|SLOTS"), "{err}");
    assert!(!err.to_string().contains("pw-acl"), "{err}");
    let owner = blocking(|| cluster.owner_of_channel(&channel)).unwrap();
    let slot = blocking(|| cluster.slot_of(&channel)).unwrap();
    let target = blocking(|| other_primary(&cluster, owner));
    let url = |seed: usize| {
        cluster
            .url_of(&[seed])
            .replace("redis+cluster://", "redis+cluster://catalog-cache:pw-acl@")
    };
    let mut seeds = (0..6).filter(|&i| i != owner);
    let a = instance(url(seeds.next().unwrap()), "acl").await;
    let b = instance(url(seeds.next().unwrap()), "acl").await;
    let db = Db::new(2);
    let (mut ea, mut eb) = (events("a", &a), events("b", &b));
    invalidation_flows(&a, &b, &mut eb, &db, 0).await;
    blocking(|| cluster.begin_slot_migration(slot, owner, target)).unwrap();
    blocking(|| cluster.finish_slot_migration(slot, target)).unwrap();
    for events in [&mut ea, &mut eb] {
        events.reconnected_and_cleared().await;
    }
    invalidation_flows(&b, &a, &mut ea, &db, 1).await;
    // The user may do nothing else.
    let denied = blocking(|| {
        let client = redis::Client::open(
            cluster
                .node(target)
                .url()
                .replace("redis://", "redis://catalog-cache:pw-acl@"),
        )
        .unwrap();
        let mut con = client.get_connection().unwrap();
        redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con)
    });
    assert!(denied.is_err(), "{denied:?}");
}

/// A one-node URL with `sharded = true` pointed at the owner: when the slot moves away the
/// server ends the subscription with an unsolicited `sunsubscribe` while the connection
/// stays up and answers `PING`; the subscription must report that as a disconnection rather
/// than stay silently deaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_ends_a_sharded_subscription_loudly() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let channel = channel("loud");
    let owner = blocking(|| cluster.owner_of_channel(&channel)).unwrap();
    let slot = blocking(|| cluster.slot_of(&channel)).unwrap();
    let target = blocking(|| other_primary(&cluster, owner));
    let backplane = RedisBackplane::connect_with(RedisConfig {
        sharded: true,
        ..redis_config(cluster.node(owner).url(), "loud")
    })
    .await
    .unwrap();
    let mut sub = backplane.subscribe().await.unwrap();
    backplane
        .publish(Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut sub).await,
        BackplaneEvent::Message(Bytes::from_static(b"before"))
    );
    blocking(|| cluster.begin_slot_migration(slot, owner, target)).unwrap();
    blocking(|| cluster.finish_slot_migration(slot, target)).unwrap();
    assert_eq!(next_event(&mut sub).await, BackplaneEvent::Disconnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_name_the_unreachable_nodes_and_the_unserved_slot() {
    let cluster = blocking(RedisCluster::start).unwrap();
    let channel = channel("errors");
    let slot = blocking(|| cluster.slot_of(&channel)).unwrap();
    let dead_port = dead_port();
    let url = format!("redis+cluster://app:hunter2@127.0.0.1:{dead_port}");
    assert_no_node_reachable(url, dead_port).await;

    // No node serves the slot any more.
    // A node that no longer lists the slot refuses; that is the goal too.
    let _ = on_each_node(
        (0..6).map(|index| cluster.node(index)),
        redis::cmd("CLUSTER").arg("DELSLOTS").arg(slot),
    );
    let deadline = std::time::Instant::now() + WAIT;
    let err = loop {
        let err = RedisBackplane::connect_with(redis_config(cluster.url(), "errors"))
            .await
            .unwrap_err();
        if matches!(err, RedisBackplaneError::SlotNotServed { .. })
            || std::time::Instant::now() > deadline
        {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        matches!(err, RedisBackplaneError::SlotNotServed { slot: s, .. } if s == slot),
        "{err:?}"
    );
    assert!(err.to_string().contains(&channel), "{err}");
}
