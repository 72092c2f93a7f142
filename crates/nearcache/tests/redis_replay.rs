//! Guarantee 7 through a real `redis-server` with the replay log (a Redis Stream beside the
//! channel, appended and published by one script):
//!
//! * a subscriber connection killed while a peer writes: the instance reads back exactly what
//!   it missed — the evicted keys are the missed ones, everything else stays cached, no clear;
//! * the log trimmed past the gap: it clears, and says why;
//! * Redis restarted empty (the log recreated): it clears, and says why.
//!
//! To make "B misses these messages" certain rather than likely, B connects as an ACL user
//! that the test disables before killing B's subscriber connection: B cannot subscribe again
//! until the test enables it, while its already authenticated publishing connection (which
//! also reads the log) stays up. Every step awaits the event that says it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use nearcache::{
    BackplaneOptions, Cache, CacheEvent, CacheOptions, ClearCause, Key, PropagationStats,
    RedisConfig, cache_key,
};
use nearcache_testkit::RedisServer;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

struct Product;

fn product(id: u32) -> Key {
    cache_key!(Product, "get", &id)
}

fn options(url: String) -> CacheOptions {
    CacheOptions {
        backplane: BackplaneOptions {
            heartbeat_interval: Duration::from_millis(500),
            publish_timeout: Duration::from_millis(500),
            reconnect_initial_delay: Duration::from_millis(10),
            reconnect_max_delay: Duration::from_millis(100),
            redis: Some(RedisConfig {
                url: url.into(),
                connect_timeout: Duration::from_secs(2),
                ping_interval: Duration::from_millis(100),
                ..RedisConfig::for_app("replay")
            }),
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    }
}

/// A cache of the test's application on `url`, once it has subscribed.
async fn connect(url: String) -> Cache {
    connect_with(options(url)).await
}

/// A cache with `options`, connected through their Redis section, once it has subscribed.
async fn connect_with(options: CacheOptions) -> Cache {
    let cache = Cache::builder()
        .options(options)
        .connect()
        .await
        .expect("connect to redis");
    tokio::time::timeout(WAIT, cache.ready())
        .await
        .expect("subscribed");
    cache
}

fn stats(cache: &Cache) -> PropagationStats {
    cache.stats().propagation.unwrap()
}

async fn load(cache: &Cache, id: u32) {
    cache
        .get_or_create(&product(id), async |_| Ok::<_, Infallible>(id))
        .await
        .unwrap();
}

fn cached(cache: &Cache, id: u32) -> bool {
    cache.get::<u32>(&product(id)).unwrap().is_some()
}

/// The next event `pick` accepts, within [`WAIT`].
async fn until<T>(
    events: &mut broadcast::Receiver<CacheEvent>,
    what: &str,
    mut pick: impl FnMut(&CacheEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(found) = pick(&events.recv().await.unwrap()) {
                return found;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

fn acl(server: &RedisServer, args: &[&str]) {
    let mut con = server.connection().unwrap();
    let mut cmd = redis::cmd("ACL");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.query::<()>(&mut con).unwrap();
}

/// A server and two instances on it: A as the default user, B as user `b` (all
/// permissions), so that [`cut_b`] can cut B's subscription alone; then B's events.
async fn a_and_cuttable_b() -> (RedisServer, Cache, Cache, broadcast::Receiver<CacheEvent>) {
    let server = RedisServer::start().unwrap();
    acl(
        &server,
        &["SETUSER", "b", "on", ">b-secret", "~*", "&*", "+@all"],
    );
    let url_b = format!("redis://b:b-secret@127.0.0.1:{}", server.port());
    let (a, b, events_b) = a_and_b(&server, url_b).await;
    (server, a, b, events_b)
}

/// A on `server` as its default user and B on `url_b`; then B's events.
async fn a_and_b(
    server: &RedisServer,
    url_b: String,
) -> (Cache, Cache, broadcast::Receiver<CacheEvent>) {
    let a = connect(server.url()).await;
    let b = connect(url_b).await;
    let events_b = b.events();
    (a, b, events_b)
}

/// Cuts B's subscription and keeps it cut: B's user is disabled, then its subscribed
/// connection killed. Returns once B knows.
async fn cut_b(server: &RedisServer, events_b: &mut broadcast::Receiver<CacheEvent>) {
    tokio::task::block_in_place(|| {
        acl(server, &["SETUSER", "b", "off"]);
        let mut con = server.connection().unwrap();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .arg("USER")
            .arg("b")
            .query(&mut con)
            .unwrap();
        assert_eq!(killed, 1, "B's one subscriber connection");
    });
    until(events_b, "Disconnected", |e| {
        (*e == CacheEvent::Disconnected).then_some(())
    })
    .await;
}

fn restore_b(server: &RedisServer) {
    tokio::task::block_in_place(|| acl(server, &["SETUSER", "b", "on"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_is_repaired_by_replay_evicting_exactly_the_missed_keys() {
    let (server, a, b, mut events_b) = a_and_cuttable_b().await;
    for id in 0..20 {
        load(&b, id).await;
    }

    cut_b(&server, &mut events_b).await;
    for id in [3, 7, 11] {
        a.remove(product(id)).await; // acknowledged by Redis: in the log, missed by B
    }
    restore_b(&server);
    let (messages, keys) = until(&mut events_b, "LossRepaired", |e| match e {
        CacheEvent::LossRepaired {
            cause: ClearCause::Reconnect,
            messages,
            keys,
        } => Some((*messages, *keys)),
        _ => None,
    })
    .await;
    assert_eq!((messages, keys), (3, 3));
    for id in 0..20 {
        assert_eq!(
            cached(&b, id),
            ![3, 7, 11].contains(&id),
            "product {id}: evicted exactly when missed"
        );
    }
    let s = stats(&b);
    assert_eq!(s.loss_clears.total(), 0, "no clear: {s:?}");
    assert_eq!(s.loss_repairs.repairs, 1);
    assert_eq!(s.loss_repairs.keys_replayed, 3);

    // B hears A live again.
    a.remove(product(0)).await;
    until(&mut events_b, "Applied", |e| {
        matches!(e, CacheEvent::Applied { .. }).then_some(())
    })
    .await;
    assert!(!cached(&b, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trimmed_past_the_gap_clears() {
    let (server, a, b, mut events_b) = a_and_cuttable_b().await;
    load(&b, 1).await;

    cut_b(&server, &mut events_b).await;
    a.remove(product(2)).await;
    tokio::task::block_in_place(|| {
        let mut con = server.connection().unwrap();
        redis::cmd("XTRIM")
            .arg("{nearcache:replay:invalidations}:log")
            .arg("MAXLEN")
            .arg(0)
            .query::<u64>(&mut con)
            .unwrap();
    });
    restore_b(&server);
    until(&mut events_b, "LossCleared", |e| match e {
        CacheEvent::LossCleared {
            cause: ClearCause::Reconnect,
            cleared: true,
        } => Some(()),
        _ => None,
    })
    .await;
    assert!(!cached(&b, 1), "cleared");
    let s = stats(&b);
    assert_eq!(s.loss_repairs.uncovered_trimmed, 1);
    assert_eq!(s.loss_repairs.repairs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_clears() {
    let mut server = RedisServer::start().unwrap();
    let (a, b, mut events_b) = a_and_b(&server, server.url()).await;
    a.remove(product(9)).await; // the log exists, B knows its position
    until(&mut events_b, "Applied", |e| {
        matches!(e, CacheEvent::Applied { .. }).then_some(())
    })
    .await;
    load(&b, 1).await;

    tokio::task::block_in_place(|| server.restart().unwrap());
    a.remove(product(2)).await; // may be queued until A's publisher is back: a new log
    until(&mut events_b, "LossCleared", |e| {
        matches!(e, CacheEvent::LossCleared { cleared: true, .. }).then_some(())
    })
    .await;
    assert!(!cached(&b, 1), "cleared");
    let s = stats(&b);
    assert!(s.loss_repairs.uncovered_recreated >= 1, "{s:?}");
    assert_eq!(s.loss_repairs.repairs, 0);
}

/// The least-privilege ACL lines of docs/operations.md for the replay log (classic and
/// sharded) are enough: invalidations are published through the script and a reconnect is
/// repaired from the log (read through the script), with no clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_lines_for_the_replay_log_are_enough() {
    let lines: Vec<&str> = include_str!("../../../docs/operations.md")
        .lines()
        .filter(|line| line.starts_with("ACL SETUSER catalog-replay "))
        .collect();
    assert_eq!(lines.len(), 2, "a classic and a sharded line: {lines:?}");
    for line in lines {
        let server = RedisServer::start().unwrap();
        let mut setuser = redis::cmd("ACL");
        for word in line.split_whitespace().skip(1) {
            setuser.arg(word);
        }
        tokio::task::block_in_place(|| {
            setuser
                .query::<()>(&mut server.connection().unwrap())
                .unwrap();
        });
        let url = format!(
            "redis://catalog-replay:long-random-password@127.0.0.1:{}",
            server.port()
        );
        let sharded = line.contains("+ssubscribe");
        let configured = |url: String| {
            let mut o = options(url);
            let redis = o.backplane.redis.as_mut().expect("a Redis section");
            redis.app = "catalog-api".to_owned();
            redis.sharded = sharded;
            o
        };
        // As the ACL user.
        let a = connect_with(configured(url.clone())).await;
        let b = connect_with(configured(url)).await;
        let mut events_b = b.events();
        load(&b, 1).await;
        load(&b, 2).await;
        a.remove(product(1)).await;
        until(&mut events_b, "Applied", |e| {
            matches!(e, CacheEvent::Applied { .. }).then_some(())
        })
        .await;
        assert!(!cached(&b, 1), "{line}: published through the script");
        tokio::task::block_in_place(|| {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query::<u64>(&mut server.connection().unwrap())
                .unwrap();
        });
        until(&mut events_b, "LossRepaired", |e| {
            matches!(
                e,
                CacheEvent::LossRepaired {
                    cause: ClearCause::Reconnect,
                    ..
                }
            )
            .then_some(())
        })
        .await;
        assert!(cached(&b, 2), "{line}: repaired, not cleared");
        let s = stats(&b);
        assert_eq!(s.loss_clears.total(), 0, "{line}: {s:?}");
        assert_eq!(s.loss_repairs.read_failed, 0, "{line}: {s:?}");
    }
}

/// How many times the server ran `EVAL` and `EVALSHA` (from `INFO commandstats`).
fn script_calls(server: &RedisServer) -> (u64, u64) {
    let mut con = server.connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let calls = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    (calls("eval"), calls("evalsha"))
}

/// A removes `id`; B applies it.
async fn remove_applied(a: &Cache, events_b: &mut broadcast::Receiver<CacheEvent>, id: u32) {
    let origin = a.instance_id().unwrap();
    a.remove(product(id)).await;
    until(events_b, "A's invalidation applied on B", |e| match e {
        CacheEvent::Applied { origin: o, .. } if *o == origin => Some(()),
        _ => None,
    })
    .await;
}

/// The log's script runs by its SHA1 (`EVALSHA`: the payload travels, not the script). A
/// server whose script cache was emptied — `SCRIPT FLUSH`, then a real restart — answers
/// `NOSCRIPT`; the call is made once in full (`EVAL`) and publishing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_script_runs_by_hash_and_survives_an_emptied_script_cache() {
    let mut server = RedisServer::start().unwrap();
    // B lives for its events.
    let (a, _b, mut events_b) = a_and_b(&server, server.url()).await;
    remove_applied(&a, &mut events_b, 1).await;

    let (eval, evalsha) = script_calls(&server);
    for id in 2..=4 {
        remove_applied(&a, &mut events_b, id).await;
    }
    let (eval_after, evalsha_after) = script_calls(&server);
    assert_eq!(eval_after, eval, "the script's text is not sent once known");
    assert!(
        evalsha_after >= evalsha + 3,
        "{evalsha} then {evalsha_after}"
    );

    let mut con = server.connection().unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut con)
        .unwrap();
    remove_applied(&a, &mut events_b, 5).await;
    let (eval_flushed, _) = script_calls(&server);
    assert!(eval_flushed > eval_after, "sent in full after the flush");
    for id in 6..=8 {
        remove_applied(&a, &mut events_b, id).await;
    }
    assert_eq!(script_calls(&server).0, eval_flushed, "then by hash again");

    tokio::task::block_in_place(|| server.restart().unwrap());
    // Pub/sub keeps nothing for a subscriber that is not there: B must have subscribed again
    // before A publishes, or B never applies the message (it clears for the recreated log).
    until(&mut events_b, "B subscribed again", |e| {
        (*e == CacheEvent::Connected).then_some(())
    })
    .await;
    remove_applied(&a, &mut events_b, 9).await;
    let (eval_restarted, evalsha_restarted) = script_calls(&server);
    assert!(eval_restarted >= 1, "sent in full to the new server");
    for id in 10..=12 {
        remove_applied(&a, &mut events_b, id).await;
    }
    let (eval_now, evalsha_now) = script_calls(&server);
    assert_eq!(eval_now, eval_restarted, "then by hash again");
    assert!(evalsha_now >= evalsha_restarted + 3);
}
