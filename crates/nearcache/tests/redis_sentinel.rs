//! The Redis backplane behind real Sentinels (a primary, a replica and three Sentinels on
//! loopback ports, one set per test): instances find the primary through the Sentinels and
//! invalidate each other; a manual failover (`SENTINEL FAILOVER`) and a hard kill of the
//! primary each end the instances' connections, which they notice (a loss: they clear
//! themselves, counted), follow to the new primary, and invalidate each other again with
//! nothing stale. A wrong primary name and unreachable Sentinels are typed errors.
//!
//! Nothing sleeps to let something happen: every step awaits the event that says it
//! happened, or polls the Sentinels' own view, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;
mod topology_support;

use nearcache::{RedisBackplane, RedisBackplaneError};
use nearcache_testkit::RedisSentinels;
use nearcache_testkit::redis_sentinel::MASTER_NAME;
use topology_support::{
    Db, Failover, Log, assert_no_node_reachable, blocking, dead_port, events, instance,
    instance_logging, invalidation_flows, on_each_node, redis_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_a_counted_loss_then_the_new_primary_is_followed() {
    let sentinels = blocking(RedisSentinels::start).unwrap();
    let a = instance(sentinels.url(), "sentinel-failover").await;
    let b = instance(sentinels.url(), "sentinel-failover").await;
    let mut failover = Failover::warm(a, b).await;
    failover.flow_both_ways().await;
    assert!(
        blocking(|| sentinels.node(0).connected_clients()).unwrap() >= 4,
        "both instances publish and subscribe on the primary"
    );

    let new_primary = blocking(|| sentinels.failover()).unwrap();
    assert_eq!(new_primary, 1);
    let clears = failover.cleared_then_coherent().await;
    assert!(clears.iter().all(|&n| n >= 1), "{clears:?}");
    let subscribers: u64 = blocking(|| {
        let mut con = sentinels.node(new_primary).connection().unwrap();
        redis::cmd("PUBLISH")
            .arg("nearcache:sentinel-failover:invalidations")
            .arg("not nearcache")
            .query(&mut con)
            .unwrap()
    });
    assert_eq!(subscribers, 2, "both subscriptions are on the new primary");
}

/// The primary is killed, A writes while there is none, and the Sentinels promote the
/// replica: the instances follow it and end coherent ([`Failover`]). Returns the
/// deployment and the new primary's index.
async fn kill_the_primary(app: &str, log: Log) -> (RedisSentinels, usize) {
    let mut sentinels = blocking(RedisSentinels::start).unwrap();
    let a = instance_logging(sentinels.url(), app, log).await;
    let b = instance_logging(sentinels.url(), app, log).await;
    let mut failover = Failover::warm(a, b).await;

    blocking(|| sentinels.node_mut(0).kill()).unwrap();
    failover.write_without_a_primary().await;
    let new_primary = blocking(|| sentinels.wait_for_new_primary(0)).unwrap();
    assert_eq!(new_primary, 1);
    failover.back_and_coherent(log).await;
    (sentinels, new_primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_a_counted_loss_and_nothing_stale_survives_the_sentinel_failover() {
    kill_the_primary("sentinel-kill", Log::Off).await;
}

/// The same kill with the replay log on: the replica was replicating the log, so each
/// instance either repairs from it or — when the log it finds cannot tell (a replica that
/// had not received the last entries, a new epoch) — clears, counted either way; nothing
/// stale survives, and the write made while there was no primary reaches the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_replay_log_a_killed_primary_is_repaired_or_cleared_and_nothing_stale_survives() {
    let (sentinels, new_primary) = kill_the_primary("sentinel-kill-log", Log::On).await;
    let logged: u64 = blocking(|| {
        let mut con = sentinels.node(new_primary).connection().unwrap();
        redis::cmd("XLEN")
            .arg("{nearcache:sentinel-kill-log:invalidations}:log")
            .query(&mut con)
            .unwrap()
    });
    assert!(logged > 0, "the invalidations went through the log");
}

/// The ACL line of docs/operations.md, set on both data nodes (ACLs are not replicated), is
/// all an instance needs, also to follow a failover (`ROLE` on the node Sentinel names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_its_channel_and_role_is_enough() {
    let sentinels = blocking(RedisSentinels::start).unwrap();
    let channel = "nearcache:sentinel-acl:invalidations";
    let rules =
        format!("on >pw-acl resetchannels &{channel} -@all +publish +subscribe +ping +role");
    let set_user = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("catalog-cache")
        .arg(rules.split_whitespace().collect::<Vec<_>>())
        .clone();
    for answer in on_each_node((0..2).map(|index| sentinels.node(index)), &set_user) {
        answer.unwrap();
    }
    let url = sentinels.url().replace(
        "redis+sentinel://",
        "redis+sentinel://catalog-cache:pw-acl@",
    );
    let a = instance(url.clone(), "sentinel-acl").await;
    let b = instance(url, "sentinel-acl").await;
    let db = Db::new(2);
    let (mut ea, mut eb) = (events("a", &a), events("b", &b));
    invalidation_flows(&a, &b, &mut eb, &db, 0).await;
    blocking(|| sentinels.failover()).unwrap();
    for events in [&mut ea, &mut eb] {
        events.reconnected_and_cleared().await;
    }
    invalidation_flows(&b, &a, &mut ea, &db, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_primary_name_and_unreachable_sentinels_are_typed_errors() {
    let sentinels = blocking(RedisSentinels::start).unwrap();
    let url = sentinels
        .url()
        .replace("redis+sentinel://", "redis+sentinel://app:hunter2@")
        .replace(MASTER_NAME, "no-such-primary");
    let err = RedisBackplane::connect_with(redis_config(url, "names"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RedisBackplaneError::UnknownMaster { master, .. } if master == "no-such-primary"),
        "{err:?}"
    );
    assert!(err.to_string().contains("SENTINEL MASTERS"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));

    let dead_port = dead_port();
    let url = format!("redis+sentinel://:hunter2@127.0.0.1:{dead_port}/{MASTER_NAME}");
    assert_no_node_reachable(url, dead_port).await;
}
