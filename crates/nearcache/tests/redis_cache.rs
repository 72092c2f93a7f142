//! Whole caches through a real `redis-server` (one per test, on a free loopback port): what
//! guarantees 6–9 (docs/guarantees.md) promise at the level users see.
//!
//! * every kind of invalidation reaches every peer, on the configured channel only;
//! * a Redis outage: instances keep serving and invalidating without blocking past
//!   `publish_timeout`, and after the restart no instance holds a stale entry — queued
//!   invalidations are flushed *and* every instance cleared itself, which the counters show;
//! * an outbox that overflows during an outage clears its instance, and its peers notice the
//!   gap it leaves in its sequence numbers and clear themselves — no clear is broadcast;
//! * a killed subscriber connection clears the instance, which keeps receiving;
//! * garbage and messages of another wire version are counted and ignored;
//! * a wrong password is a typed error at `connect()` that never shows the password;
//! * `max_staleness`: reads bypass the cache while Redis is down, and come back after;
//! * an ACL user limited to the channel (classic and sharded pub/sub) is enough;
//! * a batch too large for the backplane becomes a clear instead of stalling the outbox;
//! * dropping a cache closes its Redis connections at once;
//! * and, without Redis, that docs/configuration.md states the defaults the code has.
//!
//! Nothing sleeps to let something happen: every step awaits the [`CacheEvent`] that says it
//! happened, with a deadline. Timeouts and backoffs are short so the file runs in seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nearcache::{
    BackplaneOptions, BuildError, Cache, CacheEvent, CacheOptions, ClearCause, InstanceId, Key,
    Propagated, ReconnectBackoff, RedisBackplane, RedisBackplaneError, RedisConfig, region,
};
use nearcache_backplane::wire::{self, MessageBuilder, WireLimits};
use nearcache_testkit::{RedisServer, TcpProxy};
use redis_support::{
    Db, Events, PUBLISH_TIMEOUT, assert_nothing_stale, blocking, cached, load, load_everywhere,
    product, quick_config, stats, subscribed,
};

mod redis_support;

/// Upper bound for anything awaited here: the same as for one expected event.
const WAIT: Duration = redis_support::EVENT_WAIT;
/// Slack on top of `PUBLISH_TIMEOUT` for "returned in time" checks on a busy machine.
const SLACK: Duration = Duration::from_millis(700);

region! {
    /// Products of all catalogs.
    Catalog = "catalog";
}

/// [`quick_config`] with reconnects backing off up to 100 ms.
/// These tests pin the log-less path (every loss clears); tests/redis_replay.rs covers the
/// replay log.
fn redis_config(url: String, app: &str) -> RedisConfig {
    quick_config(url, app, Duration::from_millis(100))
}

/// The backplane options of application `app`: Redis on the default URL (tests that connect
/// through the options set theirs with [`on`]).
fn backplane_options(app: &str) -> BackplaneOptions {
    BackplaneOptions {
        heartbeat_interval: Duration::from_millis(500),
        publish_timeout: PUBLISH_TIMEOUT,
        reconnect_initial_delay: Duration::from_millis(10),
        reconnect_max_delay: Duration::from_millis(100),
        redis: Some(RedisConfig {
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_millis(100),
            replay_log_len: 0,
            ..RedisConfig::for_app(app)
        }),
        ..BackplaneOptions::default()
    }
}

/// `options`' Redis section with `url` set and `change` applied.
fn on(
    url: String,
    options: BackplaneOptions,
    change: impl FnOnce(&mut RedisConfig),
) -> BackplaneOptions {
    let mut redis = options.redis.clone().expect("options with a Redis section");
    redis.url = url.into();
    change(&mut redis);
    BackplaneOptions {
        redis: Some(redis),
        ..options
    }
}

fn options(app: &str) -> CacheOptions {
    CacheOptions {
        backplane: backplane_options(app),
        ..CacheOptions::default()
    }
}

/// A cache on `url` built the long way: `RedisBackplane::connect_with` handed to the builder.
async fn instance_with(url: String, options: CacheOptions) -> Cache {
    let redis = options
        .backplane
        .redis
        .clone()
        .expect("options with a Redis section");
    let backplane = RedisBackplane::connect_with(RedisConfig {
        channel: Some(redis.channel_name()),
        ..redis_config(url, &redis.app)
    })
    .await
    .expect("connect to redis");
    subscribed(options, backplane, WAIT).await
}

async fn instance(server: &RedisServer, app: &str) -> Cache {
    instance_with(server.url(), options(app)).await
}

/// `N` caches of `app` on `server`, each subscribed.
async fn instances<const N: usize>(server: &RedisServer, app: &str) -> [Cache; N] {
    let mut caches = Vec::with_capacity(N);
    for _ in 0..N {
        caches.push(instance(server, app).await);
    }
    let Ok(caches) = caches.try_into() else {
        unreachable!("exactly N caches were made")
    };
    caches
}

/// A cache built the short way: the builder connects with the options' Redis section; once
/// it has subscribed.
async fn connected(options: CacheOptions) -> Cache {
    let cache = Cache::builder().options(options).connect().await.unwrap();
    ready(&cache).await;
    cache
}

async fn ready(cache: &Cache) {
    tokio::time::timeout(WAIT, cache.ready())
        .await
        .expect("the cache subscribes within the deadline");
}

impl Events {
    async fn loss_cleared(&mut self, cause: ClearCause) {
        self.until("LossCleared", |event| match event {
            CacheEvent::LossCleared { cause: c, cleared } if *c == cause => {
                assert!(cleared, "the default loss policy clears");
                Some(())
            }
            _ => None,
        })
        .await;
    }

    async fn expect(&mut self, expected: CacheEvent) {
        self.until(&format!("{expected:?}"), |event| {
            (*event == expected).then_some(())
        })
        .await;
    }
}

/// Panics on the runtimes' worker threads, where the caches' background tasks run (tokio
/// catches a task's panic and only prints it). A failing test panics on its own thread,
/// which is not counted, so one failure does not cascade into the others.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_task_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// `cache` invalidates `key` while Redis is unreachable: the call gives up waiting after
/// `publish_timeout`, reports the invalidation queued, and never blocks longer.
async fn remove_while_down(cache: &Cache, key: Key) {
    let started = Instant::now();
    assert_eq!(cache.remove(key).await, Propagated::Queued);
    let took = started.elapsed();
    assert!(
        took >= PUBLISH_TIMEOUT && took < PUBLISH_TIMEOUT + SLACK,
        "remove returned after {took:?}"
    );
}

// ---- propagation ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_invalidation_reaches_every_peer() {
    let server = RedisServer::start().unwrap();
    let [a, b, c] = instances(&server, "kinds").await;
    let (ia, ib, ic) = (
        a.instance_id().unwrap(),
        b.instance_id().unwrap(),
        c.instance_id().unwrap(),
    );
    let caches = [&a, &b, &c];
    // Products 0-1 are in catalog "c1", 2-3 in catalog "c2", 4 in no region.
    let fill = async |cache: &Cache| {
        for id in 0..5u32 {
            let _: Arc<u32> = cache
                .get_or_create(product(id), async |entry| {
                    if id < 4 {
                        let catalog = if id < 2 { "c1" } else { "c2" };
                        entry.region_key::<Catalog>(catalog);
                    }
                    Ok::<_, Infallible>(100 + id)
                })
                .await
                .unwrap();
        }
    };
    for cache in caches {
        fill(cache).await;
    }
    let held =
        |cache: &Cache| -> Vec<u32> { (0..5).filter(|&id| cached(cache, id).is_some()).collect() };
    let (mut eb, mut ec, mut ea) = (
        Events::of("b", &b),
        Events::of("c", &c),
        Events::of("a", &a),
    );

    // remove on A
    assert_eq!(a.remove(product(0)).await, Propagated::Published);
    assert_eq!(eb.applied_from(ia).await, 1);
    assert_eq!(ec.applied_from(ia).await, 1);
    for cache in caches {
        assert_eq!(held(cache), [1, 2, 3, 4]);
    }

    // set on B: B holds the new value, the peers' copies are evicted
    assert_eq!(b.set(product(1), 999u32).await, Propagated::Published);
    assert_eq!(ea.applied_from(ib).await, 1);
    assert_eq!(ec.applied_from(ib).await, 1);
    assert_eq!(cached(&b, 1), Some(999));
    assert_eq!(held(&a), [2, 3, 4]);
    assert_eq!(held(&c), [2, 3, 4]);

    // one sub-key of the region, on C: only catalog c2 goes
    assert_eq!(
        c.expire_region_key::<Catalog, _>("c2").await,
        Propagated::Published
    );
    assert_eq!(ea.applied_from(ic).await, 1);
    assert_eq!(eb.applied_from(ic).await, 1);
    assert_eq!(
        held(&a),
        [4],
        "catalog c2 expired; products 0 and 1 were already gone"
    );
    assert_eq!(held(&c), [4]);
    assert_eq!(
        held(&b),
        [1, 4],
        "set() gave product 1 no region, so B keeps it"
    );
    assert_eq!(cached(&b, 1), Some(999));

    // the whole region, on A: reloaded catalog entries go, the untagged one stays
    for cache in caches {
        fill(cache).await;
    }
    assert_eq!(a.expire_region::<Catalog>().await, Propagated::Published);
    assert_eq!(eb.applied_from(ia).await, 1);
    assert_eq!(ec.applied_from(ia).await, 1);
    assert_eq!(
        (held(&a), held(&b), held(&c)),
        (vec![4], vec![1, 4], vec![4])
    );

    // clear, on B: everything everywhere
    assert_eq!(b.clear().await, Propagated::Published);
    assert_eq!(ea.applied_from(ib).await, 1);
    assert_eq!(ec.applied_from(ib).await, 1);
    for cache in caches {
        assert!(held(cache).is_empty());
    }

    let (sa, sb, sc) = (stats(&a), stats(&b), stats(&c));
    assert_eq!(
        (
            sa.invalidations_sent,
            sb.invalidations_sent,
            sc.invalidations_sent
        ),
        (2, 2, 1)
    );
    assert_eq!(
        (
            sa.invalidations_applied,
            sb.invalidations_applied,
            sc.invalidations_applied
        ),
        (3, 3, 4),
        "each applies what the two others sent, never its own"
    );
    for s in [&sa, &sb, &sc] {
        assert!(s.connected);
        assert_eq!(s.loss_clears.total(), 0, "{s:?}");
        assert_eq!(
            (
                s.messages_rejected,
                s.duplicates_ignored,
                s.publish_failures
            ),
            (0, 0, 0)
        );
        assert_eq!(s.outbox_len, 0);
        assert!(s.propagation_lag.samples >= 3, "{s:?}");
    }
}

/// `CacheBuilder::connect()` with `backplane.redis.url` joins the instances that use the same
/// channel — built either way — and hears nothing from another channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_from_options_joins_the_configured_channel_only() {
    let server = RedisServer::start().unwrap();
    let configured = |channel: Option<&str>, app: &str| CacheOptions {
        backplane: on(server.url(), backplane_options(app), |redis| {
            redis.channel = channel.map(str::to_owned);
        }),
        ..CacheOptions::default()
    };
    let a = connected(configured(Some("team-x:prices"), "ignored")).await;
    let b = instance_with(server.url(), configured(Some("team-x:prices"), "ignored")).await;
    let other = connected(configured(None, "other-app")).await;

    let db = Db::new(1);
    load_everywhere(&[&a, &b, &other], &db, 0..1).await;
    let (mut eb, mut ea, mut eo) = (
        Events::of("b", &b),
        Events::of("a", &a),
        Events::of("other", &other),
    );
    assert_eq!(a.remove(product(0)).await, Propagated::Published);
    assert_eq!(eb.applied_from(a.instance_id().unwrap()).await, 1);
    assert_eq!(cached(&b, 0), None);
    assert_eq!(b.remove(product(0)).await, Propagated::Published);
    assert_eq!(ea.applied_from(b.instance_id().unwrap()).await, 1);

    // Redis delivers what it processes in order: had either message reached the other
    // channel's subscriber, it would have arrived before this marker.
    let receivers = blocking(|| server.publish_raw("nearcache:other-app:invalidations", b"marker"));
    assert_eq!(receivers.unwrap(), 1);
    eo.expect(CacheEvent::Rejected).await;
    assert_eq!(stats(&other).messages_received, 0);
    assert_eq!(cached(&other, 0), Some(1), "untouched");
}

// ---- Redis outages -------------------------------------------------------------------------

/// Three instances; Redis is killed while they serve and invalidate, then restarted. Instance
/// A reaches Redis through a proxy that is kept cut until B and C are back, so every path is
/// taken every time: all three clear themselves on reconnecting (they may have missed
/// messages), and A's queued invalidations are then flushed to B and C, which apply them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_instances_keep_serving_then_recover_with_nothing_stale() {
    count_task_panics();
    const N: u32 = 6;
    let mut server = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(server.port()).await.unwrap();
    let a = instance_with(
        format!("redis://127.0.0.1:{}", proxy.port()),
        options("outage"),
    )
    .await;
    let [b, c] = instances(&server, "outage").await;
    let ia = a.instance_id().unwrap();
    let db = Db::new(N as usize + 1);
    for cache in [&a, &b, &c] {
        for id in 0..N {
            assert_eq!(load(cache, &db, id).await, 1);
        }
    }
    let mut ea = Events::of("a", &a);
    let mut eb = Events::of("b", &b);
    let mut ec = Events::of("c", &c);

    blocking(|| server.kill()).unwrap();
    proxy.cut(); // A stays cut off after the restart until B and C are back
    for events in [&mut ea, &mut eb, &mut ec] {
        events.expect(CacheEvent::Disconnected).await;
    }

    // Degraded mode on A: reads hit the local cache, misses load, invalidations queue.
    let hits = a.stats().store.hits;
    assert_eq!(cached(&a, 5), Some(1));
    assert_eq!(
        a.stats().store.hits,
        hits + 1,
        "served from the local cache"
    );
    assert_eq!(load(&a, &db, N).await, 1, "a miss loads from the database");
    assert_eq!(cached(&a, N), Some(1), "and is stored");
    db.bump(0);
    remove_while_down(&a, product(0)).await;
    let v1 = db.bump(1);
    let started = Instant::now();
    assert_eq!(a.set(product(1), v1).await, Propagated::Queued);
    assert!(started.elapsed() < PUBLISH_TIMEOUT + SLACK);
    db.bump(2);
    let started = Instant::now();
    a.remove(product(2));
    assert!(
        started.elapsed() < PUBLISH_TIMEOUT,
        "a remove that is not awaited never waits on Redis"
    );
    assert_eq!(
        (cached(&a, 0), cached(&a, 1), cached(&a, 2)),
        (None, Some(v1), None)
    );
    // Without max_staleness the peers keep serving what they have: that is the window the
    // outbox and the reconnect clear close.
    assert_eq!(cached(&b, 0), Some(1));
    let sa = stats(&a);
    assert!(sa.publish_failures >= 1, "{sa:?}");
    assert_eq!(
        sa.outbox_len, 3,
        "the first removal is in flight, two wait behind it (outbox_len counts both)"
    );
    assert_eq!(sa.invalidations_sent, 0);
    assert!(!sa.connected);

    blocking(|| server.restart()).unwrap();
    for (events, cache) in [(&mut eb, &b), (&mut ec, &c)] {
        events.loss_cleared(ClearCause::Reconnect).await;
        events.expect(CacheEvent::Connected).await;
        assert!((0..=N).all(|id| cached(cache, id).is_none()), "cleared");
        // Reloads see the database as it is now.
        for id in 0..3 {
            assert_eq!(load(cache, &db, id).await, db.get(id));
        }
    }

    proxy.restore();
    ea.loss_cleared(ClearCause::Reconnect).await;
    for events in [&mut eb, &mut ec] {
        assert_eq!(
            events.applied_from(ia).await,
            1,
            "the removal that was in flight"
        );
        assert_eq!(
            events.applied_from(ia).await,
            2,
            "what queued behind it, in one message"
        );
    }
    for (name, cache) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_nothing_stale(name, cache, &db, N + 1);
        for id in 0..3 {
            assert_eq!(cached(cache, id), None, "{name}: product {id}");
        }
    }

    // A later invalidation is published only after everything queued before it, so A's
    // counters are complete once it is.
    assert_eq!(a.remove(product(N)).await, Propagated::Published);
    for events in [&mut eb, &mut ec] {
        assert_eq!(events.applied_from(ia).await, 1);
    }
    let (sa, sb, sc) = (stats(&a), stats(&b), stats(&c));
    assert_eq!(sa.invalidations_sent, 4, "{sa:?}");
    assert_eq!(sa.outbox_len, 0);
    assert!(sa.publish_failures >= 1);
    for s in [&sa, &sb, &sc] {
        assert!(s.connected);
        assert_eq!(s.loss_clears.reconnect, 1, "{s:?}");
        assert_eq!(s.loss_clears.total(), 1, "{s:?}");
        assert_eq!(s.messages_rejected, 0);
    }
    assert_eq!((sb.invalidations_applied, sc.invalidations_applied), (4, 4));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
}

/// The plain outage, without a proxy: whichever comes first after the restart — a peer's
/// resubscription or A's flush — nothing stale survives, and A's outbox drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_leaves_no_stale_entry_whatever_the_order() {
    count_task_panics();
    let mut server = RedisServer::start().unwrap();
    let [a, b] = instances(&server, "plain-outage").await;
    let db = Db::new(4);
    load_everywhere(&[&a, &b], &db, 0..4).await;
    let (mut ea, mut eb) = (Events::of("a", &a), Events::of("b", &b));
    blocking(|| server.kill()).unwrap();
    eb.expect(CacheEvent::Disconnected).await;
    for id in 0..2 {
        db.bump(id);
        remove_while_down(&a, product(id)).await;
    }
    assert!(
        stats(&a).outbox_len >= 1,
        "queued (the first may be in flight)"
    );

    blocking(|| server.restart()).unwrap();
    ea.loss_cleared(ClearCause::Reconnect).await;
    eb.loss_cleared(ClearCause::Reconnect).await;
    // A's later invalidation returns Published only once everything queued before it went out.
    let deadline = Instant::now() + WAIT;
    while a.remove(product(3)).await != Propagated::Published {
        assert!(Instant::now() < deadline, "A's outbox never drained");
    }
    let sa = stats(&a);
    assert_eq!(sa.outbox_len, 0);
    assert!(sa.invalidations_sent >= 3, "{sa:?}");
    assert!(sa.publish_failures >= 1, "{sa:?}");
    for (name, cache) in [("a", &a), ("b", &b)] {
        assert_nothing_stale(name, cache, &db, 4);
        assert_eq!(stats(cache).loss_clears.reconnect, 1);
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
}

/// A small outbox overflows while Redis is down: A's backlog is dropped (A counts the
/// overflow and clears itself), and B — which had reloaded after its own reconnect clear —
/// sees the sequence number A spent on the lost backlog as a gap once A is back, and clears
/// itself. No clear is broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_overflows_during_an_outage_makes_the_peers_clear_themselves() {
    let mut server = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(server.port()).await.unwrap();
    let small = CacheOptions {
        backplane: BackplaneOptions {
            outbox_capacity: 4,
            ..backplane_options("overflow")
        },
        ..CacheOptions::default()
    };
    let a = instance_with(format!("redis://127.0.0.1:{}", proxy.port()), small).await;
    let b = instance(&server, "overflow").await;
    let db = Db::new(20);
    load_everywhere(&[&a, &b], &db, 0..20).await;
    let (mut ea, mut eb) = (Events::of("a", &a), Events::of("b", &b));

    blocking(|| server.kill()).unwrap();
    proxy.cut();
    ea.expect(CacheEvent::Disconnected).await;
    // The first removal goes in flight: the sender retries it until A is back, so it takes
    // nothing else meanwhile and the rest piles up in the outbox.
    db.bump(0);
    remove_while_down(&a, product(0)).await;
    assert_eq!(stats(&a).outbox_len, 1, "the first removal is in flight");
    for id in 1..5 {
        db.bump(id);
        a.remove(product(id));
    }
    assert_eq!(
        stats(&a).outbox_len,
        5,
        "full: four queued behind the one in flight"
    );
    assert_eq!(stats(&a).outbox_overflows, 0);
    db.bump(5);
    a.remove(product(5));
    ea.loss_cleared(ClearCause::OutboxOverflow).await;
    assert!(
        (6..20).all(|id| cached(&a, id).is_none()),
        "A cleared itself"
    );
    for id in 6..100 {
        a.remove(product(id)); // absorbed by the lost backlog
    }
    let sa = stats(&a);
    assert_eq!(sa.outbox_overflows, 1, "{sa:?}");
    assert_eq!(sa.loss_clears.outbox_overflow, 1);
    assert_eq!(
        sa.outbox_len, 2,
        "the lost backlog behind the removal in flight, however long the backlog"
    );

    blocking(|| server.restart()).unwrap();
    eb.loss_cleared(ClearCause::Reconnect).await;
    for id in 0..20 {
        load(&b, &db, id).await; // fresh again, and about to be cleared by A's gap
    }
    assert!((0..20).all(|id| cached(&b, id).is_some()));
    proxy.restore();
    let ia = a.instance_id().unwrap();
    assert_eq!(
        eb.applied_from(ia).await,
        1,
        "the removal that was in flight"
    );
    eb.loss_cleared(ClearCause::PeerGap).await;
    assert!((0..20).all(|id| cached(&b, id).is_none()));
    // A later invalidation is published only after everything queued before it.
    assert_eq!(a.remove(product(0)).await, Propagated::Published);
    assert_eq!(eb.applied_from(ia).await, 1);
    // A's subscription comes back on its own schedule, not with its publishes: its
    // reconnect clear is awaited, not assumed to have happened by now.
    ea.loss_cleared(ClearCause::Reconnect).await;

    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!(sa.outbox_len, 0);
    assert_eq!(
        sa.invalidations_sent, 2,
        "removal, removal: no clear was broadcast: {sa:?}"
    );
    assert_eq!(sa.loss_clears.outbox_overflow, 1);
    assert_eq!(sa.loss_clears.reconnect, 1);
    assert_eq!(sb.outbox_overflows, 0);
    assert_eq!(
        (sb.loss_clears.reconnect, sb.loss_clears.peer_gap),
        (1, 1),
        "B cleared itself on its reconnect and on A's gap: {sb:?}"
    );
    assert_eq!(sb.loss_clears.total(), 2);
    assert_eq!(sb.invalidations_received, 2, "{sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_clears_the_instance_which_keeps_receiving() {
    let server = RedisServer::start().unwrap();
    let [a, b] = instances(&server, "client-kill").await;
    let db = Db::new(2);
    let (mut ea, mut eb) = (Events::of("a", &a), Events::of("b", &b));
    for round in 1..=2u64 {
        load_everywhere(&[&a, &b], &db, 0..2).await;
        let killed = blocking(|| server.client_kill_pubsub()).unwrap();
        assert_eq!(killed, 2, "one subscriber connection per instance");
        for events in [&mut ea, &mut eb] {
            events.loss_cleared(ClearCause::Reconnect).await;
            events.expect(CacheEvent::Connected).await;
        }
        for cache in [&a, &b] {
            assert_eq!((cached(cache, 0), cached(cache, 1)), (None, None));
            assert_eq!(stats(cache).loss_clears.reconnect, round);
            load(cache, &db, 0).await;
        }
        assert_eq!(a.remove(product(0)).await, Propagated::Published);
        assert_eq!(eb.applied_from(a.instance_id().unwrap()).await, 1);
        assert_eq!(cached(&b, 0), None, "round {round}: B keeps receiving");
    }
}

// ---- what is on the channel ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_other_wire_versions_are_counted_and_ignored() {
    let server = RedisServer::start().unwrap();
    let [a, b] = instances(&server, "garbage").await;
    let db = Db::new(1);
    load_everywhere(&[&a, &b], &db, 0..1).await;
    // A real removal of product 0 from a stranger, then the same bytes claiming version 2.
    let mut builder = MessageBuilder::new(WireLimits::DEFAULT);
    builder.push_remove(product(0).as_str().to_owned()).unwrap();
    let valid = wire::encode(&builder.build(InstanceId::random(), 1, 0, 0)).unwrap();
    let mut newer = valid.to_vec();
    newer[wire::codec::MAGIC.len()] = wire::codec::VERSION + 1;
    let mut truncated = valid.to_vec();
    truncated.truncate(valid.len() - 3);
    let garbage: [&[u8]; 6] = [
        b"\x00\xff\xfe not nearcache",
        b"",
        b"{\"type\":\"invalidate\",\"key\":\"*\"}",
        &newer,
        &truncated,
        &[b'N'; 2048],
    ];
    let channel = "nearcache:garbage:invalidations";
    let (mut ea, mut eb) = (Events::of("a", &a), Events::of("b", &b));
    for payload in garbage {
        assert_eq!(
            blocking(|| server.publish_raw(channel, payload)).unwrap(),
            2
        );
    }
    for events in [&mut ea, &mut eb] {
        for _ in garbage {
            events.expect(CacheEvent::Rejected).await;
        }
    }
    for cache in [&a, &b] {
        let s = stats(cache);
        assert_eq!(s.messages_rejected, garbage.len() as u64);
        assert_eq!((s.messages_received, s.invalidations_applied), (0, 0));
        assert_eq!(s.loss_clears.total(), 0);
        assert_eq!(cached(cache, 0), Some(1), "nothing was evicted");
    }
    // The valid message itself is applied: the version byte alone made the difference.
    assert_eq!(blocking(|| server.publish_raw(channel, &valid)).unwrap(), 2);
    eb.until("the stranger's removal", |e| {
        matches!(e, CacheEvent::Applied { .. }).then_some(())
    })
    .await;
    assert_eq!(cached(&b, 0), None);
    // And the instances still talk to each other.
    load(&b, &db, 0).await;
    assert_eq!(a.remove(product(0)).await, Propagated::Published);
    assert_eq!(eb.applied_from(a.instance_id().unwrap()).await, 1);
    assert_eq!(cached(&b, 0), None);
}

/// A backplane whose `max_payload` is below the wire format's largest message refuses a big
/// batch for good. The sender must not retry it forever (the outbox would stall behind it):
/// the peers get a clear in its place, and what follows flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_the_backplane_becomes_a_clear_not_a_stall() {
    let server = RedisServer::start().unwrap();
    let small = RedisBackplane::connect_with(RedisConfig {
        max_payload: 4096,
        ..redis_config(server.url(), "too-large")
    })
    .await
    .unwrap();
    let a = subscribed(options("too-large"), small, WAIT).await;
    let b = instance(&server, "too-large").await;
    let db = Db::new(1000);
    for id in 0..1000 {
        load(&b, &db, id).await;
    }
    let mut eb = Events::of("b", &b);
    for id in 0..1000 {
        a.remove(product(id)); // group commit: big batches
    }
    let deadline = Instant::now() + WAIT;
    while a.remove(product(0)).await != Propagated::Published {
        assert!(
            Instant::now() < deadline,
            "the sender is stuck: {:?}",
            stats(&a)
        );
    }
    let ia = a.instance_id().unwrap();
    eb.until("every entry gone", |event| match event {
        CacheEvent::Applied { origin, .. }
            if *origin == ia && (0..1000).all(|id| cached(&b, id).is_none()) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let sa = stats(&a);
    assert_eq!(sa.outbox_len, 0);
    assert_eq!(
        sa.publish_failures, 0,
        "a refusal for size is not an outage: {sa:?}"
    );
}

// ---- credentials ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_typed_error_at_connect_that_never_shows_it() {
    let server = RedisServer::builder()
        .password("right-pw-321")
        .start()
        .unwrap();
    let port = server.port();
    let with_url = |url: String| CacheOptions {
        backplane: on(url, backplane_options("auth"), |_| {}),
        ..CacheOptions::default()
    };
    let wrong = with_url(format!("redis://:wrong-pw-654@127.0.0.1:{port}"));
    let builder_debug = format!("{:?}", Cache::builder().options(wrong.clone()));
    let err = Cache::builder()
        .options(wrong.clone())
        .connect()
        .await
        .unwrap_err();
    match &err {
        BuildError::Redis(RedisBackplaneError::Auth { addr, .. }) => {
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
        }
        other => panic!("expected BuildError::Redis(Auth), got {other:?}"),
    }
    let missing = Cache::builder()
        .options(with_url(server.url_without_auth()))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(missing, BuildError::Redis(RedisBackplaneError::Auth { .. })),
        "{missing:?}"
    );
    let mut shown = vec![
        err.to_string(),
        format!("{err:?}"),
        format!("{wrong:?}"),
        builder_debug,
        missing.to_string(),
    ];
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        shown.push(inner.to_string());
        source = inner.source();
    }
    for text in &shown {
        assert!(!text.contains("wrong-pw-654"), "{text}");
        assert!(!text.contains("right-pw-321"), "{text}");
    }
    assert!(
        shown[0].contains("check the user and password"),
        "{}",
        shown[0]
    );

    let cache = connected(with_url(server.url())).await;
    assert!(!format!("{cache:?}").contains("right-pw-321"));
}

/// The least an instance needs: `PUBLISH`, `SUBSCRIBE` and `PING` on its own channel, or
/// their sharded twins. The `ACL SETUSER` lines are read from docs/operations.md and run as
/// written, one after the other (each resets what the previous one allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_its_channel_is_enough() {
    const CHANNEL: &str = "nearcache:catalog-api:invalidations";
    let lines: Vec<&str> = include_str!("../../../docs/operations.md")
        .lines()
        .filter(|line| line.starts_with("ACL SETUSER catalog-cache "))
        .collect();
    assert_eq!(lines.len(), 2, "a classic and a sharded line: {lines:?}");
    let server = RedisServer::start().unwrap();
    let port = server.port();
    let mut admin = blocking(|| server.connection()).unwrap();
    let url = format!("redis://catalog-cache:long-random-password@127.0.0.1:{port}");
    for line in lines {
        let sharded = line.contains("+ssubscribe");
        let mut setuser = redis::cmd("ACL");
        for word in line.split_whitespace().skip(1) {
            setuser.arg(word);
        }
        blocking(|| setuser.query::<()>(&mut admin)).unwrap();

        // The user really is limited: no keys, no other command, no other channel.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut con = blocking(|| client.get_connection_with_timeout(WAIT)).unwrap();
        let (ours, other) = if sharded {
            ("SPUBLISH", "PUBLISH")
        } else {
            ("PUBLISH", "SPUBLISH")
        };
        let denied = [
            redis::cmd("GET").arg("k").clone(),
            redis::cmd(ours)
                .arg("nearcache:other:invalidations")
                .arg("x")
                .clone(),
            redis::cmd(other).arg(CHANNEL).arg("x").clone(),
        ];
        for cmd in &denied {
            let err = blocking(|| cmd.query::<redis::Value>(&mut con)).unwrap_err();
            assert_eq!(err.code(), Some("NOPERM"), "{line}: {err}");
        }

        let configured = CacheOptions {
            backplane: on(url.clone(), backplane_options("catalog-api"), |redis| {
                redis.sharded = sharded;
            }),
            ..CacheOptions::default()
        };
        let a = connected(configured.clone()).await;
        let b = connected(configured).await;
        let db = Db::new(1);
        load(&b, &db, 0).await;
        let mut eb = Events::of("b", &b);
        assert_eq!(a.remove(product(0)).await, Propagated::Published, "{line}");
        assert_eq!(eb.applied_from(a.instance_id().unwrap()).await, 1);
        assert_eq!(cached(&b, 0), None);
        // Reconnecting needs nothing more.
        assert_eq!(blocking(|| server.client_kill_pubsub()).unwrap(), 2);
        eb.loss_cleared(ClearCause::Reconnect).await;
        eb.expect(CacheEvent::Connected).await;
        load(&b, &db, 0).await;
        assert_eq!(a.remove(product(0)).await, Propagated::Published);
        assert_eq!(eb.applied_from(a.instance_id().unwrap()).await, 1);
        for cache in [&a, &b] {
            let s = stats(cache);
            assert_eq!(
                (s.publish_failures, s.messages_rejected),
                (0, 0),
                "{line}: {s:?}"
            );
        }
        drop((a, b, con));
        blocking(|| server.wait_for_clients(1, WAIT)).unwrap(); // only the admin connection is left
    }
}

// ---- max_staleness -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_bypasses_reads_while_redis_is_down_and_serves_again_after() {
    let mut server = RedisServer::start().unwrap();
    let bounded = CacheOptions {
        backplane: BackplaneOptions {
            max_staleness: Some(Duration::from_millis(200)),
            ..backplane_options("staleness")
        },
        ..CacheOptions::default()
    };
    let a = instance_with(server.url(), bounded).await;
    let db = Db::new(2);
    load(&a, &db, 0).await;
    assert_eq!(cached(&a, 0), Some(1));
    let mut ea = Events::of("a", &a);

    blocking(|| server.kill()).unwrap();
    ea.expect(CacheEvent::Disconnected).await;
    ea.expect(CacheEvent::BypassStarted).await;
    assert!(stats(&a).bypassing_reads);
    assert_eq!(
        cached(&a, 0),
        None,
        "the entry is not served while Redis is down"
    );
    let loads = a.stats().store.loads;
    db.bump(0);
    assert_eq!(load(&a, &db, 0).await, 2, "reads go to the database");
    assert_eq!(load(&a, &db, 1).await, 1);
    assert_eq!(a.stats().store.loads, loads + 2);
    assert_eq!(
        cached(&a, 1),
        None,
        "nothing loaded meanwhile is served either"
    );

    blocking(|| server.restart()).unwrap();
    ea.loss_cleared(ClearCause::Reconnect).await;
    ea.expect(CacheEvent::Connected).await;
    assert!(!stats(&a).bypassing_reads);
    assert_eq!(load(&a, &db, 0).await, 2);
    assert_eq!(cached(&a, 0), Some(2), "served from the cache again");
}

// ---- lifetime ------------------------------------------------------------------------------

/// With a one-minute ping interval the subscriber task would notice a dropped subscription
/// only at its next ping; it must instead close its connection as the cache goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cache_closes_its_redis_connections_at_once() {
    let server = RedisServer::start().unwrap();
    let backplane = RedisBackplane::connect_with(RedisConfig {
        ping_interval: Duration::from_secs(60),
        ..redis_config(server.url(), "drop")
    })
    .await
    .unwrap();
    let cache = subscribed(options("drop"), backplane, WAIT).await;
    blocking(|| server.wait_for_clients(2, WAIT)).unwrap(); // publisher + subscriber
    drop(cache);
    blocking(|| server.wait_for_clients(0, Duration::from_secs(5))).unwrap();
}

/// Invalidations that waited through an outage reach the peers promptly once Redis is back,
/// not after the writer's grown reconnect backoff: a publish that invalidations wait on is
/// retried at least every `publish_timeout`. The writer's backoff (publisher and subscriber)
/// is let grow towards 30 s during the outage; after the restart its invalidation is
/// published within a few publish timeouts. The bound asserted, 15 of them (4.5 s), is under
/// the 6.4 s or more the grown backoff would wait and about 8× the 0.6 s measured on a loaded
/// 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_waiting_invalidations_go_out_within_publish_timeouts_not_the_backoff() {
    let mut server = RedisServer::start().unwrap();
    let app = "prompt-publisher";
    let (initial, max) = (Duration::from_millis(50), Duration::from_secs(30));
    let mut slow = options(app);
    slow.backplane.reconnect_initial_delay = initial;
    slow.backplane.reconnect_max_delay = max;
    let backplane = RedisBackplane::connect_with(RedisConfig {
        reconnect: ReconnectBackoff {
            initial,
            max,
            jitter: 0.5,
        },
        ..redis_config(server.url(), app)
    })
    .await
    .unwrap();
    let a = subscribed(slow, backplane, WAIT).await;
    let b = instance(&server, app).await;
    let db = Db::new(2);
    for id in 0..2 {
        load(&b, &db, id).await;
    }
    let mut eb = Events::of("b", &b);

    blocking(|| server.kill()).unwrap();
    eb.expect(CacheEvent::Disconnected).await;
    db.bump(0);
    remove_while_down(&a, product(0)).await;
    // Eight failed attempts: without the cap the next one would come 50 ms × 2^8 ≈ 13 s
    // later, and A's own subscription (same backoff) would not wake it sooner.
    let deadline = Instant::now() + WAIT;
    while stats(&a).publish_failures < 8 {
        assert!(Instant::now() < deadline, "{:?}", stats(&a));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    blocking(|| server.restart()).unwrap();
    let back = Instant::now();
    let bound = PUBLISH_TIMEOUT * 15;
    while stats(&a).outbox_len > 0 {
        assert!(
            back.elapsed() < bound,
            "A's invalidation still waits {:?} after Redis came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B hears it (or cleared on its reconnect): a later message from A, applied at B,
    // comes after it.
    eb.loss_cleared(ClearCause::Reconnect).await;
    db.bump(1);
    a.remove(product(1)).await;
    let origin = a.instance_id().unwrap();
    while cached(&b, 1).is_some() {
        eb.applied_from(origin).await;
    }
    assert_nothing_stale("b", &b, &db, 2);
}
