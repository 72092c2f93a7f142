//! Tracing spans: one invalidation followed from its publish span on A to its apply span on
//! B (same origin and sequence number), each inside its cache's span (name, instance); a
//! load's span shows its key only when `log_keys` is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nearcache::{Cache, CacheEvent, CacheOptions, InMemoryBackplane, Key, StoreOptions};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const WAIT: Duration = Duration::from_secs(10);

/// One span as created: its name, its fields (later `record`s included) and the `cache`
/// and `instance` of the span it runs in.
#[derive(Debug, Clone, Default)]
struct Captured {
    name: String,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Store {
    spans: Vec<Captured>,
    live: HashMap<u64, usize>,
    /// Events' fields (`message` included).
    events: Vec<HashMap<String, String>>,
}

/// A layer that keeps every span it sees.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Store>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        let mut captured = Captured {
            name: attrs.metadata().name().to_owned(),
            ..Captured::default()
        };
        // Inherit what the enclosing span says about the cache.
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        if let Some(parent) = parent
            .and_then(|p| store.live.get(&p))
            .map(|&i| &store.spans[i])
        {
            for name in ["cache", "instance"] {
                if let Some(value) = parent.fields.get(name) {
                    captured.fields.insert(name.to_owned(), value.clone());
                }
            }
        }
        attrs.record(&mut Fields(&mut captured.fields));
        store.spans.push(captured);
        let index = store.spans.len() - 1;
        store.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(&i) = store.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut store.spans[i].fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let mut store = self.0.lock().unwrap();
        // What the spans it happened in say about the cache (innermost first).
        for span in ctx.event_scope(event).into_iter().flatten() {
            let Some(&i) = store.live.get(&span.id().into_u64()) else {
                continue;
            };
            for name in ["cache", "instance"] {
                if let Some(value) = store.spans[i].fields.get(name).cloned() {
                    fields.entry(format!("span.{name}")).or_insert(value);
                }
            }
        }
        store.events.push(fields);
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        self.0.lock().unwrap().live.remove(&id.into_u64());
    }
}

impl Capture {
    /// Every event whose message contains `message`.
    fn events(&self, message: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.get("message").is_some_and(|m| m.contains(message)))
            .cloned()
            .collect()
    }

    /// The `key` field of every event whose message contains `message`.
    fn event_keys(&self, message: &str) -> Vec<String> {
        self.events(message)
            .into_iter()
            .filter_map(|mut e| e.remove("key"))
            .collect()
    }

    fn find(&self, name: &str, fields: &[(&str, &str)]) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| {
                s.name == name
                    && fields
                        .iter()
                        .all(|(k, v)| s.fields.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect()
    }
}

fn named(name: &str, log_keys: bool) -> CacheOptions {
    CacheOptions {
        name: Some(name.to_owned()),
        store: StoreOptions {
            log_keys,
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    }
}

/// A cache named "orders", keys hidden, on `conn`: one of the instances a span follows.
fn orders_on(conn: InMemoryBackplane) -> Cache {
    Cache::builder()
        .options(named("orders", false))
        .backplane(conn)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn one_invalidation_is_followed_from_publish_on_a_to_apply_on_b() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let bus = InMemoryBackplane::new();
    let (a, b) = (orders_on(bus.connection()), orders_on(bus.connection()));
    a.ready().await;
    b.ready().await;
    let mut events = b.events();
    a.remove(Key::from_text("Order:get-1")).await;
    let (origin, seq) = tokio::time::timeout(WAIT, async {
        loop {
            if let CacheEvent::Applied { origin, seq, .. } = events.recv().await.unwrap() {
                return (origin, seq);
            }
        }
    })
    .await
    .unwrap();
    let (a_id, b_id) = (
        a.instance_id().unwrap().to_string(),
        b.instance_id().unwrap().to_string(),
    );
    assert_eq!(origin.to_string(), a_id);
    let seq = seq.to_string();

    let published = capture.find(
        "publish",
        &[("cache", "orders"), ("instance", &a_id), ("seq", &seq)],
    );
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].fields["ops"], "1");
    assert!(published[0].fields["bytes"].parse::<u64>().unwrap() > 0);

    let applied = capture.find(
        "apply",
        &[
            ("cache", "orders"),
            ("instance", &b_id),
            ("origin", &a_id),
            ("seq", &seq),
            ("heartbeat", "false"),
        ],
    );
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(applied[0].fields.contains_key("lag_us"), "{applied:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_span_shows_the_key_only_when_allowed() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let secret = Key::from_text("User:get-alice@example.com");
    for (name, log_keys) in [("hidden", false), ("shown", true)] {
        let cache = Cache::new(named(name, log_keys)).unwrap();
        cache
            .get_or_create(&secret, async |_| Ok::<_, Infallible>(1u8))
            .await
            .unwrap();
        // A hit runs no factory: no second span.
        cache
            .get_or_create(&secret, async |_| Ok::<_, Infallible>(2u8))
            .await
            .unwrap();
    }
    let hidden = capture.find("load", &[("cache", "hidden")]);
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    let key = &hidden[0].fields["key"];
    assert!(key.starts_with('#') && !key.contains("alice"), "{key}");
    let shown = capture.find("load", &[("cache", "shown")]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].fields["key"], secret.as_str());
}

#[test]
fn the_stores_log_events_show_the_key_only_when_allowed() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let secret = Key::from_text("User:get-alice@example.com");
    for log_keys in [false, true] {
        let cache = Cache::new(named("panics", log_keys)).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_create_sync(&secret, |_| -> Result<u8, Infallible> {
                panic!("the factory fails")
            })
        }));
        assert!(panicked.is_err());
    }
    let keys = capture.event_keys("the factory panicked");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].starts_with('#') && !keys[0].contains("alice"),
        "{keys:?}"
    );
    assert_eq!(keys[1], secret.as_str());
}

/// `eager_refresh_threshold` does nothing for the loaders that are not detached: the first
/// load through one of them says so (once per cache), and detached loads do not.
#[test]
fn an_eager_refresh_threshold_the_loaders_in_use_ignore_is_logged_once() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let options = CacheOptions {
        store: StoreOptions {
            eager_refresh_threshold: Some(0.8),
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    };
    let detached_only = Cache::new(options.clone()).unwrap();
    for i in 0..3 {
        detached_only
            .get_or_create_detached_sync(Key::from_text(format!("k{i}")), move |_| {
                Ok::<_, Infallible>(i)
            })
            .unwrap();
    }
    assert!(capture.events("never refresh early").is_empty());
    let plain = Cache::new(options).unwrap();
    for i in 0..3 {
        plain
            .get_or_create_sync(Key::from_text(format!("k{i}")), |_| Ok::<_, Infallible>(i))
            .unwrap();
    }
    assert_eq!(capture.events("never refresh early").len(), 1);
}

/// Under a `warn` filter (which disables info spans), a warning of a background task still
/// says which cache and instance it comes from.
#[tokio::test(flavor = "current_thread")]
async fn a_tasks_warning_carries_the_cache_and_instance_under_a_warn_filter() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(capture.clone().with_filter(LevelFilter::WARN)),
    );
    let bus = InMemoryBackplane::new();
    let a = orders_on(bus.connection());
    let b_conn = bus.connection();
    let b = orders_on(b_conn.clone());
    a.ready().await;
    b.ready().await;
    let mut events = b.events();
    // B misses A's first message: the second shows a gap, and B warns.
    b_conn.drop_incoming(1);
    a.remove(Key::from_text("k1")).await;
    a.remove(Key::from_text("k2")).await;
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await.unwrap(), CacheEvent::LossCleared { .. }) {}
    })
    .await
    .unwrap();
    let warned = capture.events("messages from a peer were lost");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["span.cache"], "orders");
    assert_eq!(
        warned[0]["span.instance"],
        b.instance_id().unwrap().to_string()
    );
}
