//! The `metrics` feature: every series moves when it should, labelled with the cache's name
//! and instance. A debugging recorder is installed for the build only (the handles are made
//! then), so these tests neither need nor disturb a global recorder.
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use nearcache::{
    Cache, CacheBuilder, CacheEvent, CacheOptions, ClearCause, InMemoryBackplane, Key, StoreOptions,
};
use tokio::sync::broadcast;

mod propagation_support;

const WAIT: Duration = Duration::from_secs(10);

struct Instance {
    cache: Cache,
    conn: InMemoryBackplane,
    events: broadcast::Receiver<CacheEvent>,
}

/// A bus and a debugging recorder: the instances a test makes on the bus register their
/// handles with the recorder, and [`Recorded::snapshot`] reads it.
struct Recorded {
    bus: InMemoryBackplane,
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
}

impl Recorded {
    fn on(bus: InMemoryBackplane) -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Self {
            bus,
            recorder,
            snapshotter,
        }
    }

    /// A cache named `name` on its own connection to the bus; subscribed when this returns.
    async fn instance(&self, name: &str) -> Instance {
        let options = CacheOptions {
            name: Some(name.to_owned()),
            ..CacheOptions::default()
        };
        self.instance_with(options, |builder| builder).await
    }

    /// [`Recorded::instance`] with `options` and what `configure` adds to the builder (a
    /// mock clock).
    async fn instance_with(
        &self,
        options: CacheOptions,
        configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
    ) -> Instance {
        let conn = self.bus.connection();
        let cache = metrics::with_local_recorder(&self.recorder, || {
            configure(Cache::builder().options(options).backplane(conn.clone()))
                .build()
                .unwrap()
        });
        let events = cache.events();
        tokio::time::timeout(WAIT, cache.ready()).await.unwrap();
        Instance {
            cache,
            conn,
            events,
        }
    }

    /// An instance named `name` on a mock clock, returned to be moved, with `store`'s
    /// timeouts and fail-safe on (expired values kept 600 s).
    async fn fail_safe_on_a_mock_clock(
        &self,
        name: &str,
        store: StoreOptions,
    ) -> (Instance, Arc<quanta::Mock>) {
        let (clock, mock) = quanta::Clock::mock();
        let options = CacheOptions {
            store: StoreOptions {
                fail_safe_max_duration: Some(Duration::from_secs(600)),
                ..store
            },
            name: Some(name.to_owned()),
            ..CacheOptions::default()
        };
        let instance = self
            .instance_with(options, |builder| builder.clock(clock))
            .await;
        (instance, mock)
    }

    /// Exports `caches`, then takes one snapshot (it drains histograms: take one per phase).
    fn snapshot(&self, caches: &[&Instance]) -> Series {
        for cache in caches {
            cache.cache.export_metrics();
        }
        self.snapshotter.snapshot().into_vec()
    }
}

/// Caches 1 under `k` through a detached loader, living 10 s.
async fn load_for_ten_seconds(cache: &Cache, k: &Key) {
    cache
        .get_or_create_detached(k, async |entry| {
            entry.time_to_live(Duration::from_secs(10));
            Ok::<_, Infallible>(1_u32)
        })
        .await
        .unwrap();
}

impl Instance {
    async fn until(&mut self, wanted: impl Fn(&CacheEvent) -> bool) {
        tokio::time::timeout(WAIT, async {
            loop {
                if wanted(&self.events.recv().await.unwrap()) {
                    return;
                }
            }
        })
        .await
        .expect("the event in time");
    }

    fn instance(&self) -> String {
        self.cache.instance_id().unwrap().to_string()
    }
}

type Series = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The value of series `name` with exactly the labels `cache`, `instance` and `extra`.
fn value<'a>(
    series: &'a Series,
    name: &str,
    cache: &Instance,
    extra: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    let mut wanted: Vec<(String, String)> = vec![
        ("cache".into(), cache.cache.name().into()),
        ("instance".into(), cache.instance()),
    ];
    wanted.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    wanted.sort();
    series
        .iter()
        .find(|(key, ..)| {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            key.key().name() == name && labels == wanted
        })
        .map(|(.., value)| value)
}

fn counter(s: &Series, name: &str, cache: &Instance, extra: &[(&str, &str)]) -> u64 {
    match value(s, name, cache, extra) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}{extra:?}: {other:?}"),
    }
}

fn gauge(s: &Series, name: &str, cache: &Instance, extra: &[(&str, &str)]) -> f64 {
    match value(s, name, cache, extra) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name}{extra:?}: {other:?}"),
    }
}

/// `cache`'s loss clears with `cause`.
fn loss_clears(s: &Series, cache: &Instance, cause: &str) -> u64 {
    counter(s, "nearcache_loss_clears_total", cache, &[("cause", cause)])
}

/// `cache`'s losses the replay log could not cover, for `reason`.
fn uncovered(s: &Series, cache: &Instance, reason: &str) -> u64 {
    counter(
        s,
        "nearcache_replay_uncovered_total",
        cache,
        &[("reason", reason)],
    )
}

/// `cache`'s messages rejected for `reason`.
fn rejected(s: &Series, cache: &Instance, reason: &str) -> u64 {
    counter(
        s,
        "nearcache_messages_rejected_total",
        cache,
        &[("reason", reason)],
    )
}

/// Observations recorded since the previous snapshot.
fn samples(s: &Series, name: &str, cache: &Instance) -> usize {
    match value(s, name, cache, &[]) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!("{name}: {other:?}"),
    }
}

async fn load(cache: &Cache, key: &Key) -> Arc<u32> {
    cache
        .get_or_create(key, async |_| Ok::<_, Infallible>(7))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_move_for_hits_misses_invalidations_rejections_and_loss_clears() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let a = recorded.instance("orders").await;
    let mut b = recorded.instance("orders").await;
    let key = Key::from_text("Order:get-1");

    // A miss that loads, then a hit: on B's series only.
    load(&b.cache, &key).await;
    load(&b.cache, &key).await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(counter(s, "nearcache_hits_total", &b, &[]), 1);
    assert_eq!(counter(s, "nearcache_misses_total", &b, &[]), 1);
    assert_eq!(counter(s, "nearcache_loads_total", &b, &[]), 1);
    assert_eq!(samples(s, "nearcache_load_duration_seconds", &b), 1);
    assert_eq!(counter(s, "nearcache_hits_total", &a, &[]), 0);
    assert_eq!(gauge(s, "nearcache_entries", &b, &[]), 1.0);
    assert_eq!(
        gauge(s, "nearcache_coherence", &b, &[("state", "coherent")]),
        1.0
    );
    assert_eq!(gauge(s, "nearcache_connected", &b, &[]), 1.0);

    // A peer's invalidation: sent by A, received and applied by B, its lag measured.
    a.cache.remove(&key).await;
    b.until(|e| matches!(e, CacheEvent::Applied { .. })).await;
    let s = &recorded.snapshot(&[&a, &b]);
    let key_kind = [("kind", "key")];
    assert_eq!(
        counter(s, "nearcache_invalidations_sent_total", &a, &key_kind),
        1
    );
    assert_eq!(
        counter(s, "nearcache_invalidations_received_total", &b, &key_kind),
        1
    );
    assert_eq!(
        counter(
            s,
            "nearcache_invalidations_received_total",
            &b,
            &[("kind", "clear")]
        ),
        0
    );
    assert!(counter(s, "nearcache_published_bytes_total", &a, &[]) > 0);
    assert_eq!(
        counter(s, "nearcache_invalidations_applied_total", &b, &[]),
        1
    );
    assert_eq!(counter(s, "nearcache_messages_received_total", &b, &[]), 1);
    assert!(samples(s, "nearcache_propagation_lag_seconds", &b) >= 1);
    assert_eq!(gauge(s, "nearcache_peers", &b, &[]), 1.0);

    // A message that is not an invalidation: rejected, by reason.
    recorded
        .bus
        .inject(Bytes::from_static(b"not a nearcache message"));
    b.until(|e| matches!(e, CacheEvent::Rejected)).await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(rejected(s, &b, "invalid"), 1);
    assert_eq!(rejected(s, &b, "unauthenticated"), 0);

    // A reconnect: a loss clear, by cause.
    b.conn.disconnect();
    b.until(|e| matches!(e, CacheEvent::Disconnected)).await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(gauge(s, "nearcache_connected", &b, &[]), 0.0);
    assert_eq!(
        gauge(s, "nearcache_coherence", &b, &[("state", "lost")]),
        1.0
    );
    b.conn.reconnect();
    b.until(|e| {
        matches!(
            e,
            CacheEvent::LossCleared {
                cause: ClearCause::Reconnect,
                ..
            }
        )
    })
    .await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(loss_clears(s, &b, "reconnect"), 1);
    assert_eq!(loss_clears(s, &a, "reconnect"), 0);
}

/// With a replay log, a reconnect is repaired: the repair, the messages and keys replayed
/// are exported; a log trimmed past the gap is a clear, with the reason the log could not
/// cover it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_move_for_loss_repairs_and_uncovered_losses() {
    let recorded = Recorded::on(InMemoryBackplane::new().with_replay_log(64));
    let a = recorded.instance("repairs").await;
    let mut b = recorded.instance("repairs").await;
    let (k1, k2, k3) = (
        Key::from_text("k1"),
        Key::from_text("k2"),
        Key::from_text("k3"),
    );
    // B learns where the log stands from a first message.
    a.cache.remove(&k3).await;
    b.until(|e| matches!(e, CacheEvent::Applied { .. })).await;

    b.conn.disconnect();
    b.until(|e| matches!(e, CacheEvent::Disconnected)).await;
    a.cache.remove(&k1).await;
    a.cache.remove(&k2).await;
    b.conn.reconnect();
    b.until(|e| matches!(e, CacheEvent::LossRepaired { .. }))
        .await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(counter(s, "nearcache_loss_repairs_total", &b, &[]), 1);
    assert_eq!(counter(s, "nearcache_replayed_messages_total", &b, &[]), 2);
    assert_eq!(counter(s, "nearcache_replayed_keys_total", &b, &[]), 2);
    assert_eq!(counter(s, "nearcache_loss_repairs_total", &a, &[]), 0);
    for reason in ["trimmed", "recreated", "read_failed"] {
        assert_eq!(uncovered(s, &b, reason), 0);
    }
    assert_eq!(loss_clears(s, &b, "reconnect"), 0);

    // Trimmed past the gap: the log cannot tell, so B clears, and says why.
    b.conn.disconnect();
    b.until(|e| matches!(e, CacheEvent::Disconnected)).await;
    a.cache.remove(&k1).await;
    a.cache.remove(&k2).await;
    recorded.bus.trim_log(1);
    b.conn.reconnect();
    b.until(|e| matches!(e, CacheEvent::LossCleared { .. }))
        .await;
    let s = &recorded.snapshot(&[&a, &b]);
    assert_eq!(uncovered(s, &b, "trimmed"), 1);
    assert_eq!(loss_clears(s, &b, "reconnect"), 1);
    assert_eq!(counter(s, "nearcache_loss_repairs_total", &b, &[]), 1);
}

#[tokio::test]
async fn two_caches_in_one_process_are_told_apart_by_name() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let users = recorded.instance("users").await;
    let orders = recorded.instance("orders").await;
    load(&users.cache, &Key::from_text("k")).await;
    load(&users.cache, &Key::from_text("k")).await;
    assert_eq!(users.cache.name(), "users");
    let s = &recorded.snapshot(&[&users, &orders]);
    assert_eq!(counter(s, "nearcache_hits_total", &users, &[]), 1);
    assert_eq!(counter(s, "nearcache_hits_total", &orders, &[]), 0);
}

/// A batch of three keys, one of them cached: one batch load of two keys, and a load
/// duration sample for the one factory call.
#[tokio::test]
async fn batch_loads_and_their_keys_are_exported() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let a = recorded.instance("batches").await;
    let keys = [
        Key::from_text("a"),
        Key::from_text("b"),
        Key::from_text("c"),
    ];
    load(&a.cache, &keys[0]).await;
    let _ = recorded.snapshot(&[&a]);
    a.cache
        .get_or_create_many(&keys, async |batch| {
            Ok::<_, Infallible>(
                batch
                    .keys()
                    .map(|key| (key.clone(), 7_u32))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
    let s = &recorded.snapshot(&[&a]);
    assert_eq!(counter(s, "nearcache_batch_loads_total", &a, &[]), 1);
    assert_eq!(counter(s, "nearcache_batch_keys_loaded_total", &a, &[]), 2);
    assert_eq!(counter(s, "nearcache_loads_total", &a, &[]), 3);
    assert_eq!(samples(s, "nearcache_load_duration_seconds", &a), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_hard_timeout_and_eager_refresh_counters_are_exported() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let store = StoreOptions {
        hard_timeout: Some(Duration::from_millis(20)),
        eager_refresh_threshold: Some(0.5),
        ..StoreOptions::default()
    };
    let (me, mock) = recorded.fail_safe_on_a_mock_clock("resilient", store).await;
    let (eager, failing) = (Key::from_text("eager"), Key::from_text("failing"));
    for k in [&eager, &failing] {
        load_for_ten_seconds(&me.cache, k).await;
    }
    // Past half the time to live: a detached hit starts a refresh.
    mock.increment(Duration::from_secs(6));
    me.cache
        .get_or_create_detached(&eager, async |_| Ok::<_, Infallible>(2_u32))
        .await
        .unwrap();
    // Past expiry: a load that never finishes times out and fail-safe serves the old value.
    mock.increment(Duration::from_secs(5));
    let served = me
        .cache
        .get_or_create(&failing, async |_| {
            std::future::pending::<Result<u32, Infallible>>().await
        })
        .await
        .unwrap();
    assert_eq!(*served, 1);
    let s = &recorded.snapshot(&[&me]);
    assert_eq!(counter(s, "nearcache_eager_refreshes_total", &me, &[]), 1);
    assert_eq!(counter(s, "nearcache_hard_timeouts_total", &me, &[]), 1);
    assert_eq!(
        counter(s, "nearcache_fail_safe_activations_total", &me, &[]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeouts_are_exported() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let store = StoreOptions {
        soft_timeout: Some(Duration::from_millis(10)),
        ..StoreOptions::default()
    };
    let (me, mock) = recorded.fail_safe_on_a_mock_clock("soft", store).await;
    let k = Key::from_text("slow");
    load_for_ten_seconds(&me.cache, &k).await;
    mock.increment(Duration::from_secs(11));
    // The load is held until the caller has had the expired value at the soft timeout.
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::time::timeout(
        WAIT,
        me.cache.get_or_create_detached(&k, async move |_| {
            let _ = held.await;
            Ok::<_, Infallible>(2_u32)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(*served, 1);
    let s = &recorded.snapshot(&[&me]);
    assert_eq!(counter(s, "nearcache_soft_timeouts_total", &me, &[]), 1);
    release.send(()).unwrap();
}

/// A peer's answers to a newcomer's hello are exported as the stats count them.
#[tokio::test]
async fn answers_to_a_newcomers_hello_are_exported() {
    let recorded = Recorded::on(InMemoryBackplane::new());
    let a = recorded.instance("orders").await;
    let b = recorded.instance("orders").await;
    // No event marks an answer: poll A's counter.
    let answered = || a.cache.stats().propagation.map_or(0, |p| p.answers_sent);
    propagation_support::poll_until("A answered B's hello", || answered() > 0).await;
    let before = answered();
    let s = &recorded.snapshot(&[&a, &b]);
    assert!(counter(s, "nearcache_hello_answers_total", &a, &[]) >= before);
}
