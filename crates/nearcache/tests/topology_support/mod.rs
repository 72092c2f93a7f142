//! What the Redis Cluster and Sentinel tests share beyond `redis_support`: caches on a
//! topology URL with short timeouts, a failover's before and after, and events awaited for
//! as long as a failover takes (nothing sleeps to let something happen).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use nearcache::{
    BackplaneOptions, Cache, CacheEvent, CacheOptions, ClearCause, RedisBackplane, RedisConfig,
};

pub(crate) use crate::redis_support::{
    Db, Events, PUBLISH_TIMEOUT, assert_nothing_stale, blocking, cached, load, product,
    quick_config, stats, subscribed,
};

/// Sends `cmd` to each of `nodes` directly (not through the topology), off the runtime's
/// workers; what each node answered, in order.
pub(crate) fn on_each_node<'a>(
    nodes: impl IntoIterator<Item = &'a nearcache_testkit::RedisServer>,
    cmd: &redis::Cmd,
) -> Vec<redis::RedisResult<()>> {
    nodes
        .into_iter()
        .map(|node| {
            let mut con = blocking(|| node.connection()).unwrap();
            blocking(|| cmd.query::<()>(&mut con))
        })
        .collect()
}

/// Upper bound for one expected event. A hard-killed primary is replaced after the cluster's
/// node timeout (1 s) plus an election, or Sentinel's `down-after-milliseconds` (1 s) plus an
/// election; generous for a loaded 2-core CI machine.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// [`quick_config`] with reconnects backing off up to 200 ms.
/// Most of these tests pin the log-less path (a failover or migration is a counted clear,
/// the ACL lines need no keys); `instance_with_log` turns the log on for the failover
/// variants, and tests/redis_replay.rs covers it.
pub(crate) fn redis_config(url: String, app: &str) -> RedisConfig {
    quick_config(url, app, Duration::from_millis(200))
}

fn options() -> CacheOptions {
    CacheOptions {
        backplane: BackplaneOptions {
            heartbeat_interval: Duration::from_millis(500),
            publish_timeout: PUBLISH_TIMEOUT,
            reconnect_initial_delay: Duration::from_millis(10),
            reconnect_max_delay: Duration::from_millis(200),
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    }
}

/// A cache of application `app` on `url` (a `redis+cluster://` or `redis+sentinel://` one),
/// subscribed, without a replay log.
pub(crate) async fn instance(url: String, app: &str) -> Cache {
    instance_with_log_len(url, app, 0).await
}

/// The same with the replay log on (its default length).
pub(crate) async fn instance_with_log(url: String, app: &str) -> Cache {
    let len = RedisConfig::for_app(app).replay_log_len;
    assert!(len > 0, "the log is on by default");
    instance_with_log_len(url, app, len).await
}

/// Whether an instance keeps the replay log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    Off,
    On,
}

/// [`instance`] or [`instance_with_log`].
pub(crate) async fn instance_logging(url: String, app: &str, log: Log) -> Cache {
    match log {
        Log::Off => instance(url, app).await,
        Log::On => instance_with_log(url, app).await,
    }
}

/// A loopback port that nothing listens on (bound, then let go).
pub(crate) fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `connect` to `url`, none of whose nodes answer (all on `dead_port`), fails with
/// `NoNodeReachable`, which names the port and shows the URL's password (`hunter2`) nowhere.
pub(crate) async fn assert_no_node_reachable(url: String, dead_port: u16) {
    let err = RedisBackplane::connect_with(redis_config(url, "unreachable"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, nearcache::RedisBackplaneError::NoNodeReachable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{dead_port}")),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

async fn instance_with_log_len(url: String, app: &str, replay_log_len: usize) -> Cache {
    let backplane = RedisBackplane::connect_with(RedisConfig {
        replay_log_len,
        ..redis_config(url, app)
    })
    .await
    .expect("connect to redis");
    subscribed(options(), backplane, WAIT).await
}

/// A cache's events, each awaited for up to [`WAIT`] (a failover takes seconds).
pub(crate) fn events(name: &'static str, cache: &Cache) -> Events {
    Events::of(name, cache).with_wait(WAIT)
}

impl Events {
    /// The cache cleared itself because its subscription was re-made, and is connected again.
    pub(crate) async fn reconnected_and_cleared(&mut self) {
        self.until("LossCleared(Reconnect)", |event| match event {
            CacheEvent::LossCleared {
                cause: ClearCause::Reconnect,
                cleared,
            } => {
                assert!(cleared, "the default loss policy clears");
                Some(())
            }
            _ => None,
        })
        .await;
        self.until("Connected", |event| {
            (*event == CacheEvent::Connected).then_some(())
        })
        .await;
    }
}

/// How a cache came back from a lost subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Repaired from the replay log: (messages, keys) replayed.
    Repaired(u64, u64),
    /// Cleared: the log could not tell (or there is none).
    Cleared,
}

impl Events {
    /// The cache noticed that its subscription was re-made and recovered — repaired from
    /// the log or cleared — and is connected again.
    pub(crate) async fn reconnected_and_recovered(&mut self) -> Recovery {
        let recovery = self
            .until(
                "LossRepaired or LossCleared (Reconnect)",
                |event| match event {
                    CacheEvent::LossRepaired {
                        cause: ClearCause::Reconnect,
                        messages,
                        keys,
                    } => Some(Recovery::Repaired(*messages, *keys)),
                    CacheEvent::LossCleared {
                        cause: ClearCause::Reconnect,
                        cleared,
                    } => {
                        assert!(cleared, "the default loss policy clears");
                        Some(Recovery::Cleared)
                    }
                    _ => None,
                },
            )
            .await;
        self.until("Connected", |event| {
            (*event == CacheEvent::Connected).then_some(())
        })
        .await;
        recovery
    }
}

/// Counts a recovery honestly: a repair shows in the repair counters; a clear with the log
/// on shows why the log could not tell (trimmed, recreated — a failover to a replica that
/// had not received the log — or unreadable), or happened before the cache knew a position
/// in the log at all (it then counts no reason).
pub(crate) fn assert_recovery_counted(name: &str, cache: &Cache, recovery: Recovery) {
    let s = stats(cache);
    let r = &s.loss_repairs;
    match recovery {
        Recovery::Repaired(messages, keys) => {
            assert!(r.repairs >= 1, "{name}: {s:?}");
            assert!(r.messages_replayed >= messages && r.keys_replayed >= keys);
        }
        Recovery::Cleared => assert!(s.loss_clears.reconnect >= 1, "{name}: {s:?}"),
    }
}

/// A writer's round trip: `writer` bumps product `id` in the database and removes it; once
/// `reader` applied that message it must not hold the old version. Retries the removal
/// while the writer's publisher finds the new node (a publish during a failover fails and
/// is kept in the writer's outbox, which flushes it).
pub(crate) async fn invalidation_flows(
    writer: &Cache,
    reader: &Cache,
    events: &mut Events,
    db: &Db,
    id: u32,
) {
    load(reader, db, id).await;
    load(writer, db, id).await;
    db.bump(id);
    let _ = writer.remove(product(id)).await;
    let origin = writer.instance_id().expect("a cache with a backplane");
    // Earlier messages of the writer may still be queued among the events: wait for the
    // one that evicts the product.
    while cached(reader, id).is_some() {
        events.applied_from(origin).await;
    }
    assert_eq!(load(reader, db, id).await, db.get(id));
}

/// Two instances where a failover test starts them: an invalidation went from A to B, and
/// both hold product 1 — the product A then writes while there is no primary.
pub(crate) struct Failover {
    pub(crate) a: Cache,
    pub(crate) b: Cache,
    pub(crate) db: Arc<Db>,
    pub(crate) ea: Events,
    pub(crate) eb: Events,
}

impl Failover {
    pub(crate) async fn warm(a: Cache, b: Cache) -> Self {
        let db = Db::new(2);
        let (ea, mut eb) = (events("a", &a), events("b", &b));
        invalidation_flows(&a, &b, &mut eb, &db, 0).await;
        for cache in [&a, &b] {
            load(cache, &db, 1).await;
        }
        Self { a, b, db, ea, eb }
    }

    /// A writes product 1 while there is no primary: the publish fails and the invalidation
    /// waits in A's outbox.
    pub(crate) async fn write_without_a_primary(&self) {
        self.db.bump(1);
        let _ = self.a.remove(product(1)).await;
    }

    /// How the instances come back after a killed primary was replaced: with the replay log
    /// they may repair ([`recovered_then_coherent`](Self::recovered_then_coherent)), without
    /// it they clear, once each ([`cleared_then_coherent`](Self::cleared_then_coherent)).
    pub(crate) async fn back_and_coherent(&mut self, log: Log) {
        match log {
            Log::Off => {
                let clears = self.cleared_then_coherent().await;
                assert_eq!(clears, [1, 1], "one clear each for one lost subscription");
            }
            Log::On => self.recovered_then_coherent().await,
        }
    }

    /// Without the replay log: each instance noticed the loss and cleared itself, nothing
    /// stale survived, and invalidations flow both ways again (a write made without a
    /// primary first). Returns how many reconnect clears A and B counted.
    pub(crate) async fn cleared_then_coherent(&mut self) -> [u64; 2] {
        for events in [&mut self.ea, &mut self.eb] {
            events.reconnected_and_cleared().await;
        }
        let clears = [&self.a, &self.b].map(|cache| stats(cache).loss_clears.reconnect);
        for (name, cache) in [("a", &self.a), ("b", &self.b)] {
            assert_nothing_stale(name, cache, &self.db, 2);
        }
        self.flow_both_ways().await;
        clears
    }

    /// With the replay log: each instance repaired from it or — when the log it found could
    /// not tell — cleared, counted either way; then invalidations flow both ways (the write
    /// made without a primary first), the outboxes are empty and nothing stale survived.
    async fn recovered_then_coherent(&mut self) {
        for (name, cache, events) in [("a", &self.a, &mut self.ea), ("b", &self.b, &mut self.eb)] {
            let recovery = events.reconnected_and_recovered().await;
            assert_recovery_counted(name, cache, recovery);
        }
        self.flow_both_ways().await;
        for (name, cache) in [("a", &self.a), ("b", &self.b)] {
            assert_eq!(stats(cache).outbox_len, 0, "{name}");
            assert_nothing_stale(name, cache, &self.db, 2);
        }
    }

    /// An invalidation from A reaches B (product 0), then one from B reaches A (product 1).
    pub(crate) async fn flow_both_ways(&mut self) {
        invalidation_flows(&self.a, &self.b, &mut self.eb, &self.db, 0).await;
        invalidation_flows(&self.b, &self.a, &mut self.ea, &self.db, 1).await;
    }
}
