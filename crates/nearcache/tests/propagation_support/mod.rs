//! What the tests on an in-process bus share (the `tests/propagation_*.rs` files and
//! others): cache instances on one bus, a raw tap on the bus that decodes what travels, and
//! ways to await what the propagation layer does (events, bounded polls) instead of sleeping
//! and hoping.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nearcache::{
    Backplane, BackplaneEvent, Cache, CacheEvent, CacheOptions, ClearCause, InMemoryBackplane,
    InstanceId, Key, PropagationStats, cache_key,
};
use nearcache_backplane::Subscription;
use nearcache_backplane::wire::{self, Message, Op};
use tokio::sync::broadcast;

/// How long any awaited thing may take before the test fails. Generous: on a loaded 2-core
/// CI machine a task may wait its turn, but nothing here should take more than milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test loudly if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` until it holds, failing loudly after [`WAIT`]. Only for states that
/// have no signal to await (a caller joining a flight, a subscription being dropped).
pub async fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Options for tests: heartbeats far apart (one hour) so none is published during a test
/// unless the test asks for them.
pub fn quiet() -> CacheOptions {
    heartbeats_every(Duration::from_secs(3600))
}

/// Options for tests that count on heartbeats: one every `interval`.
pub fn heartbeats_every(interval: Duration) -> CacheOptions {
    let mut options = CacheOptions::default();
    options.backplane.heartbeat_interval = interval;
    options
}

/// [`quiet`] options that retry a lost link every `delay` (a backoff that never grows).
pub fn reconnecting_every(delay: Duration) -> CacheOptions {
    let mut options = quiet();
    options.backplane.reconnect_initial_delay = delay;
    options.backplane.reconnect_max_delay = delay;
    options
}

/// Two caches (A, B) with [`quiet`] options on a new bus, each on its own connection and
/// subscribed. Unlike [`trio`], the hellos' answers are not awaited: for tests that await
/// each event they count on rather than counting messages.
pub async fn pair() -> (Cache, Cache) {
    let bus = InMemoryBackplane::new();
    let build = |conn| {
        Cache::builder()
            .options(quiet())
            .backplane(conn)
            .build()
            .expect("valid options inside a runtime")
    };
    let (a, b) = (build(bus.connection()), build(bus.connection()));
    within("a", a.ready()).await;
    within("b", b.ready()).await;
    (a, b)
}

/// Waits for the next `Applied` event on `events` (a peer's message applied there).
pub async fn next_applied(events: &mut broadcast::Receiver<CacheEvent>) {
    within("a peer's message to be applied", async {
        while !matches!(events.recv().await.unwrap(), CacheEvent::Applied { .. }) {}
    })
    .await;
}

/// One cache on its own connection to the bus, with an event receiver opened before it
/// subscribed (so no event is missed).
pub struct Instance {
    pub cache: Cache,
    pub conn: InMemoryBackplane,
    pub events: broadcast::Receiver<CacheEvent>,
}

impl Instance {
    /// Builds a cache on a new connection to `bus`, waits until it listens and until its
    /// hello (the first thing a cache publishes once subscribed) has come back to it, so
    /// counts of publishes and echoes are settled when a test starts.
    pub async fn start(bus: &InMemoryBackplane, options: CacheOptions) -> Instance {
        let instance = Instance::build(bus, options);
        within("the cache's subscription", instance.cache.ready()).await;
        poll_until("the cache's hello to come back", || {
            instance.stats().own_messages_ignored >= 1
        })
        .await;
        instance
    }

    /// [`start`](Self::start)s a newcomer after `earlier` instances on the same bus, and
    /// waits until each of them has answered its hello (published its position) and it has
    /// heard them all: answers are settled — none still on its way — when a test starts, so
    /// a gate or a count sees only what the test does.
    pub async fn start_after(
        bus: &InMemoryBackplane,
        options: CacheOptions,
        earlier: &[&Instance],
    ) -> Instance {
        let answered: Vec<u64> = earlier.iter().map(|e| e.stats().answers_sent).collect();
        let newcomer = Instance::start(bus, options).await;
        poll_until(
            "each earlier instance to answer the newcomer's hello",
            || {
                earlier
                    .iter()
                    .zip(&answered)
                    .all(|(e, before)| e.stats().answers_sent == before + 1)
                    && newcomer.stats().peers == earlier.len()
            },
        )
        .await;
        newcomer
    }

    /// Builds a cache on a new connection to `bus` without waiting for its subscription.
    pub fn build(bus: &InMemoryBackplane, options: CacheOptions) -> Instance {
        let conn = bus.connection();
        let cache = Cache::builder()
            .options(options)
            .backplane(conn.clone())
            .build()
            .expect("valid options inside a runtime");
        let events = cache.events();
        Instance {
            cache,
            conn,
            events,
        }
    }

    pub fn id(&self) -> InstanceId {
        self.cache.instance_id().expect("a cache with a backplane")
    }

    pub fn stats(&self) -> PropagationStats {
        self.cache
            .stats()
            .propagation
            .expect("a cache with a backplane")
    }

    /// The next event that `wanted` accepts; others are skipped.
    pub async fn next_event(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&CacheEvent) -> bool,
    ) -> CacheEvent {
        let events = &mut self.events;
        within(what, async {
            loop {
                match events.recv().await {
                    Ok(event) if wanted(&event) => return event,
                    Ok(_) => {}
                    Err(error) => {
                        panic!("the event stream failed while waiting for {what}: {error}")
                    }
                }
            }
        })
        .await
    }

    /// Awaits the next `Applied` event: (origin, seq, invalidations).
    pub async fn applied(&mut self) -> (InstanceId, u64, u64) {
        match self
            .next_event("an Applied event", |e| {
                matches!(e, CacheEvent::Applied { .. })
            })
            .await
        {
            CacheEvent::Applied {
                origin,
                seq,
                invalidations,
            } => (origin, seq, invalidations),
            _ => unreachable!(),
        }
    }

    /// Awaits a `LossCleared` event with `cause`; returns whether the store was cleared.
    pub async fn loss_cleared(&mut self, cause: ClearCause) -> bool {
        match self
            .next_event(
                &format!("a LossCleared({cause:?}) event"),
                |e| matches!(e, CacheEvent::LossCleared { cause: c, .. } if *c == cause),
            )
            .await
        {
            CacheEvent::LossCleared { cleared, .. } => cleared,
            _ => unreachable!(),
        }
    }

    /// Awaits the next `Rejected` event: with [`fence`], proof that everything delivered to
    /// this instance before the fence has been processed.
    pub async fn rejected(&mut self) {
        self.next_event("a Rejected event", |e| *e == CacheEvent::Rejected)
            .await;
    }

    /// Awaits exactly `event`.
    pub async fn event(&mut self, event: CacheEvent) {
        self.next_event(&format!("{event:?}"), |e| *e == event)
            .await;
    }

    /// Loads `value` under `key` (a miss; the factory cannot fail).
    pub async fn load(&self, key: &Key, value: u32) -> Arc<u32> {
        self.cache
            .get_or_create(key, async |_| Ok::<_, Infallible>(value))
            .await
            .unwrap()
    }

    /// Starts a load of `key` whose factory has read `value` (what the database said when
    /// the load began) and is held there until [`HeldLoad::finish`]; returns once the
    /// factory runs, so whatever the test does next overlaps the load.
    pub async fn held_load(&self, key: &Key, value: u32) -> HeldLoad {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        let load = tokio::spawn({
            let (cache, key) = (self.cache.clone(), key.clone());
            async move {
                cache
                    .get_or_create(&key, async |_| {
                        started_tx.send(()).unwrap();
                        release_rx.await.unwrap();
                        Ok::<_, Infallible>(value)
                    })
                    .await
                    .unwrap()
            }
        });
        within("the held load's factory to start", started_rx)
            .await
            .unwrap();
        HeldLoad { release, load }
    }

    /// Caches each of `keys` at version 1 (each a miss).
    pub async fn load_all(&self, keys: &[&Key]) {
        for key in keys {
            self.load(key, 1).await;
        }
    }

    /// This instance hears `writer`: it caches `key`, `writer` removes it, and `writer`'s
    /// message `seq` (one invalidation) is applied here and evicts it.
    pub async fn hears(&mut self, writer: &Instance, key: &Key, seq: u64) {
        self.load(key, 1).await;
        writer.cache.remove(key).await;
        assert_eq!(self.applied().await, (writer.id(), seq, 1));
        assert_eq!(self.get(key), None, "evicted by the writer's remove");
    }

    /// Caches each of `missed` and `kept` (at version 1), then loses its link (awaiting its
    /// `Disconnected`) while `writer` removes `missed`: invalidations this instance misses
    /// until its link is back (`conn.reconnect()`), while `kept` is touched by none.
    pub async fn misses_while_disconnected(
        &mut self,
        writer: &Instance,
        missed: &[&Key],
        kept: &[&Key],
    ) {
        self.load_all(missed).await;
        self.load_all(kept).await;
        self.conn.disconnect();
        self.event(CacheEvent::Disconnected).await;
        for key in missed {
            writer.cache.remove(*key).await;
        }
    }

    /// The `u32` under `key`, if any.
    pub fn get(&self, key: &Key) -> Option<u32> {
        self.cache.get::<u32>(key).unwrap().map(|v| *v)
    }
}

/// A load held inside its factory ([`Instance::held_load`]).
pub struct HeldLoad {
    release: tokio::sync::oneshot::Sender<()>,
    load: tokio::task::JoinHandle<Arc<u32>>,
}

impl HeldLoad {
    /// Lets the factory return, and awaits what the caller gets.
    pub async fn finish(self) -> Arc<u32> {
        self.release.send(()).unwrap();
        within("the held load", self.load).await.unwrap()
    }
}

/// What each cache publishes once, on subscribing: its hello.
pub const HELLO: u64 = 1;

/// What a [`trio`] publishes that invalidates nothing: a hello each, and an answer to each
/// hello from every instance started before it (A answers B and C, B answers C).
pub const TRIO_HELLOS_AND_ANSWERS: u64 = 3 * HELLO + 3;

/// Asserts that `bus` has carried a [`trio`]'s hellos and answers and then exactly `more`
/// publishes, which `what` names.
pub fn assert_published_after_the_trio(bus: &InMemoryBackplane, more: u64, what: &str) {
    assert_eq!(
        bus.published(),
        TRIO_HELLOS_AND_ANSWERS + more,
        "hellos and answers, then {what}"
    );
}

/// Two instances (A, B) with [`quiet`] options on one bus, B started after A with A's
/// answer to its hello settled ([`Instance::start_after`]).
pub async fn duo(bus: &InMemoryBackplane) -> [Instance; 2] {
    let a = Instance::start(bus, quiet()).await;
    let b = Instance::start_after(bus, quiet(), &[&a]).await;
    [a, b]
}

/// Three instances (A, B, C) on one bus, each on its own connection, started one after the
/// other with their answers settled ([`Instance::start_after`]).
pub async fn trio(bus: &InMemoryBackplane, options: CacheOptions) -> [Instance; 3] {
    let a = Instance::start(bus, options.clone()).await;
    let b = Instance::start_after(bus, options.clone(), &[&a]).await;
    let c = Instance::start_after(bus, options, &[&a, &b]).await;
    [a, b, c]
}

/// A [`trio`] with [`quiet`] options on a new bus, and the bus.
pub async fn quiet_trio() -> (InMemoryBackplane, [Instance; 3]) {
    let bus = InMemoryBackplane::new();
    let instances = trio(&bus, quiet()).await;
    (bus, instances)
}

/// A garbage payload: injected after something, the `Rejected` it causes on an instance
/// shows that the instance has processed everything before it (delivery is in order).
pub fn fence() -> Bytes {
    Bytes::from_static(b"not an invalidation")
}

struct Svc;

/// A distinct key per name.
pub fn key(name: &str) -> Key {
    cache_key!(Svc, "get", name)
}

/// A valid message from `origin`, encoded.
pub fn encoded(origin: InstanceId, seq: u64, ops: Vec<Op>) -> Bytes {
    wire::encode(&Message {
        origin,
        seq,
        sent_at_unix_micros: 0,
        origin_started_unix_ms: 0,
        ops,
    })
    .unwrap()
}

pub fn remove_op(keys: &[&Key]) -> Op {
    Op::Remove {
        keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
    }
}

/// A raw subscriber on the bus: sees every payload and decodes it.
pub struct Tap {
    subscription: Subscription,
    pub conn: InMemoryBackplane,
}

impl Tap {
    pub async fn new(bus: &InMemoryBackplane) -> Tap {
        let conn = bus.connection();
        let subscription = conn.subscribe().await.unwrap();
        Tap { subscription, conn }
    }

    /// The next payload, decoded (heartbeats included).
    pub async fn next_any(&mut self) -> Message {
        let subscription = &mut self.subscription;
        within("a payload on the bus", async {
            match subscription.recv().await {
                Some(BackplaneEvent::Message(payload)) => wire::decode(&payload).unwrap(),
                other => panic!("the tap expected a message, got {other:?}"),
            }
        })
        .await
    }

    /// The next message that is not a heartbeat.
    pub async fn next_message(&mut self) -> Message {
        loop {
            let message = self.next_any().await;
            if !message.is_heartbeat() {
                return message;
            }
        }
    }

    /// Forgets every payload delivered so far.
    pub fn drain(&mut self) {
        while self.subscription.try_recv().is_some() {}
    }

    /// Asserts that no message other than heartbeats has been delivered and not yet read.
    pub fn assert_no_message(&mut self) {
        while let Some(event) = self.subscription.try_recv() {
            if let BackplaneEvent::Message(payload) = &event {
                let message = wire::decode(payload).unwrap();
                assert!(message.is_heartbeat(), "unexpected message {message:?}");
            } else {
                panic!("unexpected event on the tap: {event:?}");
            }
        }
    }
}
