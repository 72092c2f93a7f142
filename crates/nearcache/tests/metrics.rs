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
use nearcache::{Cache, CacheEvent, CacheOptions, ClearCause, InMemoryBackplane, Key};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

struct Instance {
    cache: Cache,
    conn: InMemoryBackplane,
    events: broadcast::Receiver<CacheEvent>,
}

/// A cache named `name` on its own connection to `bus`, its handles registered with
/// `recorder`; subscribed when this returns.
async fn instance(bus: &InMemoryBackplane, recorder: &DebuggingRecorder, name: &str) -> Instance {
    let conn = bus.connection();
    let options = CacheOptions {
        name: Some(name.to_owned()),
        ..CacheOptions::default()
    };
    let cache = metrics::with_local_recorder(recorder, || {
        Cache::builder()
            .options(options)
            .backplane(conn.clone())
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

/// Exports `caches`, then takes one snapshot (it drains histograms: take one per phase).
fn snapshot(snapshotter: &Snapshotter, caches: &[&Instance]) -> Series {
    for cache in caches {
        cache.cache.export_metrics();
    }
    snapshotter.snapshot().into_vec()
}

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
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bus = InMemoryBackplane::new();
    let a = instance(&bus, &recorder, "orders").await;
    let mut b = instance(&bus, &recorder, "orders").await;
    let key = Key::from_text("Order:get-1");

    // A miss that loads, then a hit: on B's series only.
    load(&b.cache, &key).await;
    load(&b.cache, &key).await;
    let s = &snapshot(&snapshotter, &[&a, &b]);
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
    let s = &snapshot(&snapshotter, &[&a, &b]);
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
    bus.inject(Bytes::from_static(b"not a nearcache message"));
    b.until(|e| matches!(e, CacheEvent::Rejected)).await;
    let s = &snapshot(&snapshotter, &[&a, &b]);
    assert_eq!(
        counter(
            s,
            "nearcache_messages_rejected_total",
            &b,
            &[("reason", "invalid")]
        ),
        1
    );
    assert_eq!(
        counter(
            s,
            "nearcache_messages_rejected_total",
            &b,
            &[("reason", "unauthenticated")]
        ),
        0
    );

    // A reconnect: a loss clear, by cause.
    b.conn.disconnect();
    b.until(|e| matches!(e, CacheEvent::Disconnected)).await;
    let s = &snapshot(&snapshotter, &[&a, &b]);
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
    let s = &snapshot(&snapshotter, &[&a, &b]);
    assert_eq!(
        counter(
            s,
            "nearcache_loss_clears_total",
            &b,
            &[("cause", "reconnect")]
        ),
        1
    );
    assert_eq!(
        counter(
            s,
            "nearcache_loss_clears_total",
            &a,
            &[("cause", "reconnect")]
        ),
        0
    );
}

#[tokio::test]
async fn two_caches_in_one_process_are_told_apart_by_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bus = InMemoryBackplane::new();
    let users = instance(&bus, &recorder, "users").await;
    let orders = instance(&bus, &recorder, "orders").await;
    load(&users.cache, &Key::from_text("k")).await;
    load(&users.cache, &Key::from_text("k")).await;
    assert_eq!(users.cache.name(), "users");
    let s = &snapshot(&snapshotter, &[&users, &orders]);
    assert_eq!(counter(s, "nearcache_hits_total", &users, &[]), 1);
    assert_eq!(counter(s, "nearcache_hits_total", &orders, &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_hard_timeout_and_eager_refresh_counters_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bus = InMemoryBackplane::new();
    let conn = bus.connection();
    let (clock, mock) = quanta::Clock::mock();
    let options = CacheOptions {
        name: Some("resilient".to_owned()),
        fail_safe_max_duration: Some(Duration::from_secs(600)),
        hard_timeout: Some(Duration::from_millis(20)),
        eager_refresh_threshold: Some(0.5),
        ..CacheOptions::default()
    };
    let cache = metrics::with_local_recorder(&recorder, || {
        Cache::builder()
            .options(options)
            .backplane(conn.clone())
            .clock(clock)
            .build()
            .unwrap()
    });
    let events = cache.events();
    tokio::time::timeout(WAIT, cache.ready()).await.unwrap();
    let me = Instance {
        cache,
        conn,
        events,
    };
    let (eager, failing) = (Key::from_text("eager"), Key::from_text("failing"));
    for k in [&eager, &failing] {
        me.cache
            .get_or_create_detached(k, async |entry| {
                entry.absolute_expiration(Duration::from_secs(10));
                Ok::<_, Infallible>(1_u32)
            })
            .await
            .unwrap();
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
    let s = &snapshot(&snapshotter, &[&me]);
    assert_eq!(counter(s, "nearcache_eager_refreshes_total", &me, &[]), 1);
    assert_eq!(counter(s, "nearcache_hard_timeouts_total", &me, &[]), 1);
    assert_eq!(
        counter(s, "nearcache_fail_safe_activations_total", &me, &[]),
        1
    );
}
