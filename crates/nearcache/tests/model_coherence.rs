//! Model-based coherence test: three instances on the in-process bus against a "database".
//!
//! proptest generates sequences of reads, writes (a database update followed by the matching
//! invalidation through one instance: remove, set, sub-key expiry, region expiry or clear),
//! reads whose load races a peer's write, bursts of concurrent readers on one instance that
//! overlap a write (some start before it, some after it returned or was applied there, and
//! the later ones find the earlier ones' loads still in flight), lost publishes
//! (`drop_next`), lost deliveries to one instance (`drop_incoming`), disconnects and
//! reconnects, connection flapping behind a full subscription queue (down, up, down — the
//! health the instance ends with must be the link's), subscriptions the backplane ends, and
//! forged messages under a real peer's name with an implausible sequence number (no signing
//! key: they may cost a clear, but must never make that peer's real messages invisible),
//! writers that die with invalidations still in their outbox and no goodbye (replaced by a
//! new instance; their peers must forget them and count it as a loss), and subscriptions the
//! server drops without a word (only the instance's own heartbeats not coming back can tell).
//! The last two need heartbeat intervals to pass: the model lets them pass on tokio's paused
//! clock, one interval at a time, so live instances' heartbeats keep flowing.
//! The model checks:
//!
//! - **no read goes back past a finished invalidation, for every caller:** once an
//!   invalidation has been applied on an instance — its own call returned, or the model saw
//!   the instance's `Applied` event for the peer's message that carried it — no read that
//!   starts there afterwards returns a version older than the one that invalidation was for,
//!   whether it hits, loads, or joins a load in progress;
//! - **no stale insert:** a load that read the database before a peer's write, and finished
//!   after the peer's invalidation was applied here, is not stored;
//! - **coherence at quiescent points:** once every instance is connected and has applied
//!   everything its peers published (awaited through the caches' events, never by sleeping),
//!   no instance holds an entry older than the database — whatever was lost on the way was
//!   either re-sent or made the instance clear itself (guarantees 3, 6, 7, 8).
//!
//! Failures shrink to a minimal sequence; proptest keeps their seeds in
//! `model_coherence.proptest-regressions` (committed), and real bugs found also get a named
//! test below.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nearcache::{
    Backplane, BackplaneEvent, Cache, CacheEvent, CacheOptions, EntryOptions, InMemoryBackplane,
    Key, Propagated, PropagationStats, region,
};
use nearcache_backplane::Subscription;
use nearcache_backplane::wire;
use proptest::prelude::*;
use tokio::sync::{broadcast, oneshot, watch};

region!(Catalog = "catalog");

const INSTANCES: usize = 3;
const KEYS: usize = 4;
/// How long any awaited condition may take before the test fails (it takes milliseconds).
const PATIENCE: Duration = Duration::from_secs(10);

/// How a write invalidates the key it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Remove,
    Set,
    SubKey,
    Region,
    Clear,
}

#[derive(Debug, Clone)]
enum Step {
    Read {
        at: usize,
        key: usize,
    },
    Write {
        at: usize,
        key: usize,
        how: How,
    },
    /// `reader` starts loading `key` (its factory reads the database), then `writer` writes
    /// it, and the load finishes only once `reader` has applied the write (if it can).
    ReadDuringWrite {
        reader: usize,
        writer: usize,
        key: usize,
        how: How,
    },
    /// Readers on `at` start loading `key` (their loads wait on a gate), `writer` writes it,
    /// and more readers start on `at` once the write is known to have been applied there;
    /// then the gate opens.
    ConcurrentReads {
        at: usize,
        writer: usize,
        key: usize,
        how: How,
    },
    DropNext {
        n: u64,
    },
    /// Garbage fills every subscription queue, then `at`'s link goes down, up and down (and
    /// up again when `end_up`), faster than its receiver reads.
    Flap {
        at: usize,
        end_up: bool,
    },
    /// The backplane ends `at`'s subscription; it must subscribe again by itself.
    EndSubscription {
        at: usize,
    },
    /// A message under `origin`'s name, removing `key`, with a sequence number far ahead of
    /// its real ones (`u64::MAX`, or 1,000 ahead).
    Forge {
        origin: usize,
        key: usize,
        at_the_end: bool,
    },
    DropIncoming {
        at: usize,
        n: u64,
    },
    /// `at`'s link goes down, it writes `writes` keys (they stay in its outbox) and it dies
    /// without a goodbye; a new instance takes its place. Heartbeat intervals then pass until
    /// its peers forget it.
    DeadWriter {
        at: usize,
        writes: usize,
    },
    /// The server stops feeding `at`'s subscription (which holds `key`) without a word, and
    /// the next instance writes `key`; heartbeat intervals pass until `at` notices that its
    /// own publishes do not come back.
    SilentUnsubscribe {
        at: usize,
        key: usize,
    },
    Disconnect {
        at: usize,
    },
    Reconnect {
        at: usize,
    },
    Quiesce,
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        4 => Just(How::Remove),
        2 => Just(How::Set),
        2 => Just(How::SubKey),
        1 => Just(How::Region),
        1 => Just(How::Clear),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let at = 0..INSTANCES;
    let key = 0..KEYS;
    prop_oneof![
        5 => (at.clone(), key.clone()).prop_map(|(at, key)| Step::Read { at, key }),
        5 => (at.clone(), key.clone(), how()).prop_map(|(at, key, how)| Step::Write { at, key, how }),
        3 => (at.clone(), at.clone(), key.clone(), how()).prop_map(|(reader, writer, key, how)| {
            Step::ReadDuringWrite { reader, writer, key, how }
        }),
        3 => (at.clone(), at.clone(), key, how()).prop_map(|(at, writer, key, how)| {
            Step::ConcurrentReads { at, writer, key, how }
        }),
        2 => (1..3_u64).prop_map(|n| Step::DropNext { n }),
        1 => (at.clone(), any::<bool>()).prop_map(|(at, end_up)| Step::Flap { at, end_up }),
        1 => at.clone().prop_map(|at| Step::EndSubscription { at }),
        1 => (at.clone(), 0..KEYS, any::<bool>())
            .prop_map(|(origin, key, at_the_end)| Step::Forge { origin, key, at_the_end }),
        2 => (at.clone(), 1..3_u64).prop_map(|(at, n)| Step::DropIncoming { at, n }),
        1 => (at.clone(), 1..3_usize).prop_map(|(at, writes)| Step::DeadWriter { at, writes }),
        1 => (at.clone(), 0..KEYS).prop_map(|(at, key)| Step::SilentUnsubscribe { at, key }),
        2 => at.clone().prop_map(|at| Step::Disconnect { at }),
        2 => at.prop_map(|at| Step::Reconnect { at }),
        1 => Just(Step::Quiesce),
    ]
}

fn key(k: usize) -> Key {
    Key::from_text(format!("Product:get-{k}"))
}

/// Keys share sub-keys two by two, so a sub-key expiry also evicts a neighbour.
fn sub(k: usize) -> String {
    format!("c{}", k % 2)
}

/// Which keys an invalidation of `k` by `how` covers.
fn covered(k: usize, how: How) -> Vec<usize> {
    match how {
        How::Remove | How::Set => vec![k],
        How::SubKey => (0..KEYS).filter(|&j| sub(j) == sub(k)).collect(),
        How::Region | How::Clear => (0..KEYS).collect(),
    }
}

type Db = Arc<Mutex<Vec<u64>>>;

fn read_db(db: &Db, k: usize) -> u64 {
    db.lock().unwrap()[k]
}

/// Three caches on one bus, a database, and what the model knows.
struct World {
    bus: InMemoryBackplane,
    conns: Vec<InMemoryBackplane>,
    caches: Vec<Cache>,
    events: Vec<broadcast::Receiver<CacheEvent>>,
    /// Per instance: the highest sequence number applied per origin.
    applied: Vec<HashMap<u128, u64>>,
    db: Db,
    /// Per instance and key: the oldest version a read there may still return, from its own
    /// invalidations and quiescent points.
    floor: Vec<[u64; KEYS]>,
    /// Every delivered write: who sent it, in which message, and the versions it was for. A
    /// read on an instance that has applied that message (or a later one from the same
    /// origin) must not return anything older.
    delivered: Vec<Delivered>,
    /// A raw subscriber on the bus: tells which message carried each write.
    tap: Subscription,
    /// Per origin: the highest sequence number the tap has seen.
    tapped: HashMap<u128, u64>,
    /// Forged messages injected (origin, seq): not what the origin sent, so neither the tap
    /// nor the floors count them.
    forged: std::collections::HashSet<(u128, u64)>,
    /// While `Flap` floods the bus with garbage (the tap's queue overflows too).
    flapped: bool,
    /// Instances whose subscription was ended while their link was down: they subscribe
    /// again once it is back.
    ended_while_down: [bool; INSTANCES],
    /// Instances whose link was down while heartbeat intervals passed (since the last
    /// quiescent point): they may have forgotten their peers, and been forgotten by them.
    down_through_intervals: [bool; INSTANCES],
}

/// Each subscription's queue on the model's bus (the in-memory default), which `Flap` fills.
const QUEUE: usize = InMemoryBackplane::DEFAULT_QUEUE_CAPACITY;

/// A write whose message reached every subscription.
struct Delivered {
    origin: u128,
    seq: u64,
    versions: Vec<(usize, u64)>,
}

/// Readers started per wave of [`Step::ConcurrentReads`].
const WAVE: usize = 3;

/// The model's heartbeat interval: long, so heartbeats publish only when the model lets
/// intervals pass on a paused clock ([`World::let_intervals_pass`]).
const HEARTBEAT: Duration = Duration::from_secs(3600);

/// Peers forget an instance silent for this many heartbeat intervals (see `propagation`).
const FORGET_AFTER_INTERVALS: u32 = 20;

/// An instance whose own publishes have not come back for this many intervals (the
/// default `heartbeat_echo_intervals`) subscribes again.
const ECHO_INTERVALS: u32 = 3;

fn options() -> CacheOptions {
    let mut options = CacheOptions::default();
    let backplane = &mut options.backplane;
    // Heartbeats would publish on their own; quiescent points flush explicitly instead.
    backplane.heartbeat_interval = HEARTBEAT;
    backplane.heartbeat_echo_intervals = ECHO_INTERVALS;
    backplane.publish_timeout = Duration::from_millis(20);
    backplane.reconnect_initial_delay = Duration::from_millis(1);
    backplane.reconnect_max_delay = Duration::from_millis(5);
    // Small, so a disconnected writer overflows it and the lost-backlog path runs.
    backplane.outbox_capacity = 3;
    options
}

/// Polls `condition` until it holds; fails the test after [`PATIENCE`]. For conditions no
/// event announces (outbox drained, connection state).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

impl World {
    /// Three caches on a bus; with `log`, the bus keeps a replay log (large enough for any
    /// sequence) and losses are repaired from it instead of clearing.
    async fn new(log: Log) -> World {
        let bus = match log {
            Log::Off => InMemoryBackplane::new(),
            Log::On => InMemoryBackplane::new().with_replay_log(4096),
        };
        let conns: Vec<_> = (0..INSTANCES).map(|_| bus.connection()).collect();
        let mut caches = Vec::new();
        let mut events = Vec::new();
        for conn in &conns {
            let cache = build(conn);
            events.push(cache.events());
            caches.push(cache);
        }
        for cache in &caches {
            within("ready", cache.ready()).await;
        }
        let tap = bus.connection().subscribe().await.unwrap();
        let mut world = World {
            bus,
            conns,
            caches,
            events,
            applied: vec![HashMap::new(); INSTANCES],
            db: Arc::new(Mutex::new(vec![0; KEYS])),
            floor: vec![[0; KEYS]; INSTANCES],
            delivered: Vec::new(),
            tap,
            tapped: HashMap::new(),
            forged: std::collections::HashSet::new(),
            flapped: false,
            ended_while_down: [false; INSTANCES],
            down_through_intervals: [false; INSTANCES],
        };
        world.introduce().await;
        world
    }

    /// Every instance hears from every other once before any fault, so each knows its
    /// peers' sequence numbers and a lost message shows as a gap. (A message lost before
    /// that first contact, and followed by another within one heartbeat interval of the
    /// subscription, is the introduction window's documented gap: see `propagation::peers`.)
    async fn introduce(&mut self) {
        for (i, cache) in self.caches.iter().enumerate() {
            assert_eq!(
                cache.remove(Key::from_text(format!("Hello:{i}"))).await,
                Propagated::Published
            );
        }
        self.wait_all_applied().await;
        for cache in &self.caches {
            assert_eq!(cache.stats().propagation.unwrap().peers, INSTANCES - 1);
        }
    }

    /// Waits until every instance has applied everything each of its peers has published.
    async fn wait_all_applied(&mut self) {
        for j in 0..INSTANCES {
            for i in (0..INSTANCES).filter(|&i| i != j) {
                let seq = messages_sent(&self.caches[i]);
                let origin = self.origin(i);
                self.wait_applied(j, origin, seq).await;
            }
        }
    }

    fn origin(&self, i: usize) -> u128 {
        self.caches[i].instance_id().unwrap().as_u128()
    }

    fn record(&mut self, j: usize, event: CacheEvent) {
        if let CacheEvent::Applied { origin, seq, .. } = event
            && !self.forged.contains(&(origin.as_u128(), seq))
        {
            let last = self.applied[j].entry(origin.as_u128()).or_default();
            *last = (*last).max(seq);
        }
    }

    /// Waits until instance `j` has applied message `seq` (or a later one) from `origin`.
    async fn wait_applied(&mut self, j: usize, origin: u128, seq: u64) {
        loop {
            while let Ok(event) = self.events[j].try_recv() {
                self.record(j, event);
            }
            if self.applied[j].get(&origin).is_some_and(|&s| s >= seq) {
                return;
            }
            match within("an Applied event", self.events[j].recv()).await {
                Ok(event) => self.record(j, event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("instance {j} lost {n} cache events: the model cannot follow")
                }
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    }

    /// Reads what the tap has received: the highest sequence number per origin.
    fn drain_tap(&mut self) {
        while let Some(event) = self.tap.try_recv() {
            match event {
                BackplaneEvent::Message(delivered) => {
                    let (_, payload) = wire::logged::unframe(&delivered);
                    let Ok(message) = wire::decode(&payload) else {
                        continue; // the garbage `Flap` injects
                    };
                    let origin = message.origin.as_u128();
                    if !self.forged.contains(&(origin, message.seq)) {
                        let seen = self.tapped.entry(origin).or_default();
                        *seen = (*seen).max(message.seq);
                    }
                }
                // `Flap` fills the queues on purpose; the tap's own gaps do not matter then.
                BackplaneEvent::Lagged { .. } if self.flapped => {}
                BackplaneEvent::Lagged { .. } => panic!("the tap lagged: the model cannot follow"),
                _ => {}
            }
        }
    }

    /// The oldest version of `k` a read that starts on instance `at` now may return: what
    /// its own invalidations and the quiescent points say, and every delivered write whose
    /// message it has applied (as its events tell so far).
    fn floor_for(&mut self, at: usize, k: usize) -> u64 {
        while let Ok(event) = self.events[at].try_recv() {
            self.record(at, event);
        }
        let applied = &self.applied[at];
        let me = self.origin(at);
        self.delivered
            .iter()
            .filter(|d| d.origin != me && applied.get(&d.origin).is_some_and(|&s| s >= d.seq))
            .flat_map(|d| d.versions.iter())
            .filter(|&&(key, _)| key == k)
            .map(|&(_, version)| version)
            .fold(self.floor[at][k], u64::max)
    }

    /// Updates the database and invalidates through instance `at`; returns whether the
    /// message reached every subscription on the bus.
    async fn write(&mut self, at: usize, k: usize, how: How) -> bool {
        self.drain_tap();
        let before = self.tapped.get(&self.origin(at)).copied().unwrap_or(0);
        let version = {
            let mut db = self.db.lock().unwrap();
            db[k] += 1;
            db[k]
        };
        let cache = &self.caches[at];
        let dropped = self.bus.dropped();
        let sent = messages_sent(cache);
        let published = match how {
            How::Remove => cache.remove(key(k)).await,
            How::Set => {
                let s = sub(k);
                cache
                    .set_with(key(k), version, move |e: &mut EntryOptions| {
                        e.region_key::<Catalog>(&s);
                    })
                    .await
            }
            How::SubKey => cache.expire_region_key::<Catalog, _>(&sub(k)).await,
            How::Region => cache.expire_region::<Catalog>().await,
            How::Clear => cache.clear().await,
        };
        let versions: Vec<(usize, u64)> = covered(k, how)
            .into_iter()
            .map(|j| (j, read_db(&self.db, j)))
            .collect();
        for &(j, version) in &versions {
            self.floor[at][j] = version;
        }
        let delivered = published == Propagated::Published
            && messages_sent(cache) > sent
            && self.bus.dropped() == dropped;
        if delivered {
            self.drain_tap();
            let origin = self.origin(at);
            let seq = self.tapped.get(&origin).copied().unwrap_or(0);
            assert!(seq > before, "the tap saw no message for a delivered write");
            self.delivered.push(Delivered {
                origin,
                seq,
                versions,
            });
        }
        delivered
    }

    async fn read(&mut self, at: usize, k: usize) -> u64 {
        let floor = self.floor_for(at, k);
        let db = Arc::clone(&self.db);
        let value = self.caches[at]
            .get_or_create(key(k), async move |e: &mut EntryOptions| {
                e.region_key::<Catalog>(&sub(k));
                Ok::<_, std::convert::Infallible>(read_db(&db, k))
            })
            .await
            .unwrap();
        let value = *value;
        assert!(
            value >= floor,
            "instance {at} read key {k} at version {value}, but the invalidation for version \
             {floor} had been applied there before the read started"
        );
        value
    }

    /// Starts a read of `k` on `at` whose load (if it runs one) waits for `gate`; it checks
    /// its result against the floor when it started.
    fn spawn_read(
        &mut self,
        at: usize,
        k: usize,
        gate: &watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let floor = self.floor_for(at, k);
        let (db, cache, mut gate) = (Arc::clone(&self.db), self.caches[at].clone(), gate.clone());
        tokio::spawn(async move {
            let value = cache
                .get_or_create(key(k), async move |e: &mut EntryOptions| {
                    e.region_key::<Catalog>(&sub(k));
                    let version = read_db(&db, k);
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, std::convert::Infallible>(version)
                })
                .await
                .unwrap();
            assert!(
                *value >= floor,
                "a concurrent read on instance {at} got key {k} at version {value}, but the \
                 invalidation for version {floor} had been applied there before it started"
            );
        })
    }

    /// Brings `at`'s link back; if its subscription was ended while it was down, waits until
    /// it has made a new one, so that a connected instance is always a subscribed one.
    async fn reconnect(&mut self, at: usize) {
        let before = self.bus.subscribers();
        self.conns[at].reconnect();
        if std::mem::take(&mut self.ended_while_down[at]) {
            let bus = &self.bus;
            wait_until("the ended subscription is made again", || {
                bus.subscribers() > before
            })
            .await;
        }
    }

    /// Waits until every instance has a live subscription (plus the tap's).
    async fn wait_all_subscribed(&self) {
        let bus = &self.bus;
        wait_until("every instance is subscribed", || {
            bus.subscribers() == INSTANCES + 1
        })
        .await;
    }

    /// Lets spawned tasks run up to where they wait (a current-thread runtime).
    async fn let_tasks_run() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    async fn concurrent_reads(&mut self, at: usize, writer: usize, k: usize, how: How) {
        let (open, gate) = watch::channel(false);
        let mut readers: Vec<_> = (0..WAVE).map(|_| self.spawn_read(at, k, &gate)).collect();
        Self::let_tasks_run().await;
        let delivered = self.write(writer, k, how).await;
        if delivered && writer != at && self.conns[at].is_connected() {
            let seq = self.delivered.last().map_or(0, |d| d.seq);
            let origin = self.origin(writer);
            self.wait_applied(at, origin, seq).await;
        }
        // These start after the invalidation was applied here, while the first wave's load
        // (if any) is still held at the gate.
        readers.extend((0..WAVE).map(|_| self.spawn_read(at, k, &gate)));
        Self::let_tasks_run().await;
        open.send_replace(true);
        for reader in readers {
            within("a concurrent read", reader).await.unwrap();
        }
    }

    async fn read_during_write(&mut self, reader: usize, writer: usize, k: usize, how: How) {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let db = Arc::clone(&self.db);
        let cache = self.caches[reader].clone();
        let load = tokio::spawn(async move {
            cache
                .get_or_create(key(k), async move |e: &mut EntryOptions| {
                    e.region_key::<Catalog>(&sub(k));
                    let version = read_db(&db, k);
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::convert::Infallible>(version)
                })
                .await
                .map(|v| *v)
        });
        // A hit runs no factory: then this is just a write.
        let loading = within("the load to start", started_rx).await.is_ok();
        let delivered = self.write(writer, k, how).await;
        if loading && delivered && reader != writer && self.conns[reader].is_connected() {
            let seq = messages_sent(&self.caches[writer]);
            let origin = self.origin(writer);
            self.wait_applied(reader, origin, seq).await;
        }
        let _ = release_tx.send(());
        within("the racing load", load).await.unwrap().unwrap();
        // The load read the database before the write; once the write was applied at the
        // reader, storing that value would be a stale insert.
        // (A reader whose link is down hears nothing, delivered or not.)
        let heard = reader == writer || (delivered && self.conns[reader].is_connected());
        if loading
            && heard
            && let Some(cached) = self.caches[reader].get::<u64>(key(k)).unwrap()
        {
            assert_eq!(
                *cached,
                read_db(&self.db, k),
                "instance {reader} stored a load that raced an invalidation it applied"
            );
        }
    }

    /// Heals every fault, makes sure every instance has applied everything its peers sent
    /// (lost messages are noticed by the next one from the same origin), then checks that
    /// no instance holds an entry older than the database.
    async fn quiesce(&mut self) {
        for conn in &self.conns {
            conn.reconnect();
        }
        self.wait_all_subscribed().await;
        self.ended_while_down = [false; INSTANCES];
        let caches = &self.caches;
        wait_until("every instance is connected with an empty outbox", || {
            caches.iter().all(|c| {
                let p = c.stats().propagation.unwrap();
                p.connected && p.outbox_len == 0
            })
        })
        .await;
        // Each instance publishes a marker until a round reaches every subscription: pending
        // `drop_next`/`drop_incoming` faults are used up by then.
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 20, "faults still pending after {rounds} rounds");
            let dropped = self.bus.dropped();
            for (i, cache) in self.caches.iter().enumerate() {
                let sent = messages_sent(cache);
                cache.remove(Key::from_text(format!("Marker:{i}"))).await;
                wait_until("the marker is published", || messages_sent(cache) > sent).await;
            }
            if self.bus.dropped() == dropped {
                break;
            }
        }
        self.wait_all_applied().await;
        // Everyone has heard everyone's marker: known to each other again.
        self.down_through_intervals = [false; INSTANCES];
        let db = self.db.lock().unwrap().clone();
        for (j, cache) in self.caches.iter().enumerate() {
            for (k, &version) in db.iter().enumerate() {
                if let Some(cached) = cache.get::<u64>(key(k)).unwrap() {
                    assert_eq!(
                        *cached, version,
                        "instance {j} holds key {k} at version {cached}, the database has {version}"
                    );
                }
            }
            self.floor[j] = db.clone().try_into().unwrap();
        }
    }

    async fn run(&mut self, step: &Step) {
        match *step {
            Step::Read { at, key } => {
                self.read(at, key).await;
            }
            Step::Write { at, key, how } => {
                self.write(at, key, how).await;
            }
            Step::ReadDuringWrite {
                reader,
                writer,
                key,
                how,
            } => self.read_during_write(reader, writer, key, how).await,
            Step::ConcurrentReads {
                at,
                writer,
                key,
                how,
            } => self.concurrent_reads(at, writer, key, how).await,
            Step::DropNext { n } => self.bus.drop_next(n),
            Step::DropIncoming { at, n } => self.conns[at].drop_incoming(n),
            Step::DeadWriter { at, writes } => self.dead_writer(at, writes).await,
            Step::SilentUnsubscribe { at, key } => self.silent_unsubscribe(at, key).await,
            Step::Disconnect { at } => self.conns[at].disconnect(),
            Step::Reconnect { at } => self.reconnect(at).await,
            Step::Quiesce => self.quiesce().await,
            Step::Flap { at, end_up } => {
                self.drain_tap();
                self.flapped = true;
                for _ in 0..QUEUE + 2 {
                    self.bus
                        .inject(bytes::Bytes::from_static(b"not an invalidation"));
                }
                self.drain_tap();
                self.flapped = false;
                let conn = &self.conns[at];
                conn.disconnect();
                conn.reconnect();
                conn.disconnect();
                if end_up {
                    self.reconnect(at).await;
                }
            }
            Step::EndSubscription { at } => {
                let before = self.bus.subscribers();
                self.conns[at].end_subscriptions();
                // It must subscribe again by itself; a connection that is down gets there
                // once it is back (at the latest at the next quiescent point).
                if self.conns[at].is_connected() {
                    let bus = &self.bus;
                    wait_until("the ended subscription is made again", || {
                        bus.subscribers() >= before
                    })
                    .await;
                } else {
                    self.ended_while_down[at] = true;
                }
            }
            Step::Forge {
                origin,
                key: k,
                at_the_end,
            } => {
                let id = self.caches[origin].instance_id().unwrap();
                let seq = if at_the_end {
                    u64::MAX
                } else {
                    messages_sent(&self.caches[origin]) + 1_000
                };
                self.forged.insert((id.as_u128(), seq));
                self.bus.inject(
                    wire::encode(&wire::Message {
                        origin: id,
                        seq,
                        sent_at_unix_micros: 0,
                        origin_started_unix_ms: 0,
                        ops: vec![wire::Op::Remove {
                            keys: vec![key(k).as_str().to_owned()],
                        }],
                    })
                    .unwrap(),
                );
            }
        }
    }

    /// Lets `steps` × `stride` heartbeat intervals pass on tokio's paused clock, `stride` at
    /// a time, each step followed by the heartbeat it brings (one per instance: a stride
    /// below 20 intervals keeps live peers from being forgotten). All of them, not until
    /// something is noticed: a loss noticed on the way may have another cause than the one
    /// the caller waits for.
    async fn let_intervals_pass(&mut self, steps: u32, stride: u32) {
        tokio::time::pause();
        for i in 0..INSTANCES {
            if !self.conns[i].is_connected() {
                self.down_through_intervals[i] = true;
            }
        }
        // Heartbeats, and answers (which put the next heartbeat off).
        let beats = |p: PropagationStats| p.heartbeats_sent + p.answers_sent;
        for _ in 0..steps {
            // Instances able to send a heartbeat: connected, nothing waiting to go out.
            let beating: Vec<(usize, u64)> = (0..INSTANCES)
                .filter(|&i| self.conns[i].is_connected())
                .map(|i| (i, self.caches[i].stats().propagation.unwrap()))
                .filter(|(_, p)| p.outbox_len == 0)
                .map(|(i, p)| (i, beats(p)))
                .collect();
            tokio::time::advance(HEARTBEAT * stride).await;
            let caches = &self.caches;
            wait_until("the interval's heartbeats", || {
                beating
                    .iter()
                    .all(|&(i, before)| beats(caches[i].stats().propagation.unwrap()) > before)
            })
            .await;
            Self::let_tasks_run().await;
        }
        tokio::time::resume();
    }

    /// `at` dies with invalidations in its outbox and no goodbye; a new instance takes its
    /// place. Once its peers have had time to forget it (20 silent intervals), none of them
    /// may serve a key it wrote at a version older than that write: the bound on staleness
    /// after a writer's death.
    ///
    /// Not while an instance has been down through intervals since the last quiescent
    /// point: it and its peers may have forgotten each other already, and then what a writer
    /// never published cannot reach a peer that forgot it by any means — the limit of that
    /// bound (docs/guarantees.md). The step is skipped then, rather than checked only at the
    /// reads that follow it: the quiescent check after it would find that staleness too.
    async fn dead_writer(&mut self, at: usize, writes: usize) {
        if self.down_through_intervals.iter().any(|&down| down) {
            return;
        }
        self.conns[at].disconnect();
        let written: Vec<usize> = (0..writes).map(|k| k % KEYS).collect();
        for &k in &written {
            // Not published: the link is down.
            self.write(at, k, How::Remove).await;
        }
        // Its sender cannot publish its backlog, so it leaves without a goodbye.
        let unsent = self.caches[at].shutdown().await;
        assert!(unsent > 0, "the dead writer's outbox was empty");
        let conn = self.bus.connection();
        let cache = build(&conn);
        self.events[at] = cache.events();
        within("ready", cache.ready()).await;
        self.caches[at] = cache;
        self.conns[at] = conn;
        self.applied[at].clear();
        self.floor[at] = self.db.lock().unwrap().clone().try_into().unwrap();
        self.ended_while_down[at] = false;
        self.down_through_intervals[at] = false;
        // Peers forget a peer silent for 20 intervals at their housekeeping tick (every 20):
        // 45 intervals pass. (One that is down hears nobody: it forgets every peer, and
        // clears, in that time.)
        self.let_intervals_pass(FORGET_AFTER_INTERVALS * 9 / 4 / 5, 5)
            .await;
        for i in (0..INSTANCES).filter(|&i| i != at) {
            for &k in &written {
                self.assert_fresh(i, k, "a writer died with it unpublished")
                    .await;
            }
        }
    }

    /// The server stops feeding `at`'s subscription; a peer writes `k`, which `at` holds.
    /// Past the echo wait (three intervals, plus one for the first heartbeat) `at` must
    /// have noticed and must not serve `k` at a version older than that write.
    async fn silent_unsubscribe(&mut self, at: usize, k: usize) {
        if !self.conns[at].is_connected() {
            return; // nothing to unsubscribe from
        }
        self.read(at, k).await;
        self.conns[at].unsubscribe_silently();
        let delivered = self.write((at + 1) % INSTANCES, k, How::Remove).await;
        self.let_intervals_pass(ECHO_INTERVALS + 2, 1).await;
        if delivered {
            self.assert_fresh(at, k, "its subscription was silently dropped")
                .await;
        }
    }

    /// A read of `k` on `i` returns the database's version: the bound on staleness after
    /// `what` has passed.
    async fn assert_fresh(&mut self, i: usize, k: usize, what: &str) {
        let version = read_db(&self.db, k);
        let value = self.read(i, k).await;
        assert!(
            value >= version,
            "instance {i} still serves key {k} at version {value} (the database has \
             {version}) long after {what}"
        );
    }

    async fn shutdown(self) {
        for cache in &self.caches {
            cache.shutdown().await;
        }
    }
}

fn build(conn: &InMemoryBackplane) -> Cache {
    Cache::builder()
        .options(options())
        .backplane(conn.clone())
        .build()
        .unwrap()
}

fn messages_sent(cache: &Cache) -> u64 {
    cache.stats().propagation.unwrap().messages_sent
}

/// Whether the bus keeps a replay log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Log {
    /// No log: every loss clears.
    Off,
    /// A replay log: losses are repaired from it.
    On,
}

/// Runs `steps`, then a final quiescent point, on a bus without a replay log.
fn check(steps: &[Step]) {
    check_with(Log::Off, steps);
}

/// Runs `steps`, then a final quiescent point; returns each instance's propagation stats.
fn check_with(log: Log, steps: &[Step]) -> Vec<PropagationStats> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut world = World::new(log).await;
        for step in steps {
            world.run(step).await;
        }
        world.quiesce().await;
        let stats = world
            .caches
            .iter()
            .map(|c| c.stats().propagation.unwrap())
            .collect();
        world.shutdown().await;
        stats
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_instance_agrees_with_the_database_at_quiescent_points(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        check(&steps);
    }

    /// The same model with the bus keeping a replay log: losses are repaired from it (or,
    /// when it cannot tell, cleared), and the same three properties hold.
    #[test]
    fn every_instance_agrees_with_the_database_at_quiescent_points_with_replay(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        check_with(Log::On, &steps);
    }
}

/// `before`, then the next message is lost, and it is instance 0's remove of key 0; then
/// quiescence.
fn then_a_lost_remove(before: &[Step]) -> Vec<Step> {
    let lost = [
        Step::DropNext { n: 1 },
        Step::Write {
            at: 0,
            key: 0,
            how: How::Remove,
        },
        Step::Quiesce,
    ];
    [before, &lost].concat()
}

/// Instance 1 caches key 0, then instance 0's remove of that key is lost.
fn a_lost_remove() -> Vec<Step> {
    then_a_lost_remove(&[Step::Read { at: 1, key: 0 }])
}

/// With a replay log, a lost publish is repaired at the next message from the same origin:
/// the peer evicts the key it missed and does not clear.
#[test]
fn with_replay_a_lost_remove_is_repaired_without_a_clear() {
    let stats = check_with(Log::On, &a_lost_remove());
    for (j, s) in stats.iter().enumerate().skip(1) {
        assert_eq!(s.loss_clears.total(), 0, "instance {j} cleared: {s:?}");
        assert!(s.loss_repairs.repairs >= 1, "instance {j} repaired: {s:?}");
    }
}

/// With a replay log, a reconnect after missed messages is repaired, not cleared.
#[test]
fn with_replay_a_disconnected_reader_is_repaired_without_a_clear() {
    let stats = check_with(
        Log::On,
        &[
            Step::Read { at: 1, key: 0 },
            Step::Read { at: 1, key: 1 },
            Step::Disconnect { at: 1 },
            Step::Write {
                at: 0,
                key: 0,
                how: How::Remove,
            },
            Step::Reconnect { at: 1 },
            Step::Quiesce,
        ],
    );
    let s = &stats[1];
    assert_eq!(s.loss_clears.total(), 0, "{s:?}");
    assert!(s.loss_repairs.repairs >= 1, "{s:?}");
    assert!(s.loss_repairs.keys_replayed >= 1, "{s:?}");
}

#[test]
fn a_lost_remove_is_caught_by_the_next_message_and_clears_the_peer() {
    check(&a_lost_remove());
}

#[test]
fn a_disconnected_writer_overflows_its_outbox_and_peers_still_converge() {
    let mut steps = vec![
        Step::Read { at: 1, key: 0 },
        Step::Read { at: 2, key: 3 },
        Step::Disconnect { at: 0 },
    ];
    for k in 0..KEYS {
        steps.push(Step::Write {
            at: 0,
            key: k,
            how: How::Remove,
        });
    }
    steps.push(Step::Read { at: 0, key: 1 });
    steps.push(Step::Quiesce);
    check(&steps);
}

#[test]
fn a_load_racing_a_peers_invalidation_is_not_stored() {
    for how in [How::Remove, How::Set, How::SubKey, How::Region, How::Clear] {
        check(&[Step::ReadDuringWrite {
            reader: 1,
            writer: 0,
            key: 2,
            how,
        }]);
    }
}

/// Found by the model (shrunk): after a reconnect an instance forgot its peers' sequence
/// numbers, so the first message it then heard from a peer became a new baseline, and a
/// message lost between the reconnect and that one went unnoticed: instance 1 kept its own
/// `set` of version 2 after instance 0's remove (version 3) was lost on the way.
#[test]
fn a_message_lost_after_a_reconnect_is_still_noticed() {
    check(&then_a_lost_remove(&[
        Step::Disconnect { at: 1 },
        Step::Reconnect { at: 1 },
        Step::ReadDuringWrite {
            reader: 0,
            writer: 1,
            key: 0,
            how: How::Remove,
        },
        Step::Write {
            at: 1,
            key: 0,
            how: How::Set,
        },
    ]));
}

/// Readers that start after a peer's invalidation was applied here must not get the load
/// that an earlier reader started before it (the flight still in progress), for every kind
/// of invalidation; nor after the instance's own invalidation.
#[test]
fn readers_that_start_after_an_invalidation_never_get_the_load_in_progress() {
    for how in [How::Remove, How::Set, How::SubKey, How::Region, How::Clear] {
        for writer in [0, 1] {
            check(&[Step::ConcurrentReads {
                at: 1,
                writer,
                key: 2,
                how,
            }]);
        }
    }
}

/// A writer dies with invalidations still in its outbox and no goodbye: its peers hold what
/// it invalidated in the database until they forget it (20 silent heartbeat intervals), and
/// then they must count that as a loss.
#[test]
fn a_writer_that_dies_with_a_full_outbox_is_forgotten_as_a_loss() {
    check(&[
        Step::Read { at: 1, key: 0 },
        Step::Read { at: 2, key: 1 },
        Step::DeadWriter { at: 0, writes: 2 },
        Step::Read { at: 1, key: 2 },
        Step::Quiesce,
    ]);
}

/// The server drops a reader's subscription without a word: it hears nothing, its link looks
/// up, and only its own heartbeats not coming back tell it to subscribe again.
#[test]
fn a_silently_dropped_subscription_is_noticed_by_its_echo() {
    for log in [Log::Off, Log::On] {
        check_with(
            log,
            &[
                Step::Read { at: 1, key: 0 },
                Step::SilentUnsubscribe { at: 1, key: 0 },
                Step::Read { at: 1, key: 1 },
                Step::Quiesce,
            ],
        );
    }
}

/// Found by the model (it failed before the rewind floor was kept): a forged highest number
/// for a real peer, then a forged number between it and the real one, then real messages
/// lost — the loss must still be noticed, not taken for duplicates.
#[test]
fn forged_jumps_then_a_real_loss_still_converge() {
    check(&[
        Step::Forge {
            origin: 0,
            key: 0,
            at_the_end: true,
        },
        Step::Forge {
            origin: 0,
            key: 0,
            at_the_end: false,
        },
        Step::DropNext { n: 2 },
        Step::ReadDuringWrite {
            reader: 1,
            writer: 0,
            key: 0,
            how: How::Remove,
        },
        Step::Read { at: 0, key: 0 },
        Step::Quiesce,
    ]);
}

/// Found by the model: an instance down through the intervals of one writer's death has
/// forgotten every peer (and been forgotten) when a second writer dies. The step is skipped
/// then (what a forgotten writer never published cannot reach anyone); the run converges.
#[test]
fn a_second_dead_writer_after_a_peer_was_down_through_intervals() {
    for log in [Log::Off, Log::On] {
        check_with(
            log,
            &[
                Step::Disconnect { at: 2 },
                Step::DeadWriter { at: 0, writes: 1 },
                Step::DeadWriter { at: 2, writes: 1 },
                Step::Quiesce,
            ],
        );
    }
}
