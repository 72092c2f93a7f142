//! Rows 6 and 7 of the benchmark table: invalidations between two instances through a real
//! Redis on loopback (a private `redis-server` started by nearcache-testkit).
//!
//! 6. Propagation latency: instance A removes a key that B holds; the clock stops when B's
//!    `CacheEvent::Applied` for it arrives (B's entry is then checked to be gone). Baseline:
//!    a raw redis-rs `PUBLISH` of the same bytes → a RESP3 subscriber's push, on the same
//!    server and runtime. The same again through a private Redis Cluster (3 primaries, 3
//!    replicas; A and B given every node as seeds, so each finds the channel's shard itself):
//!    baseline a raw redis-rs `SPUBLISH` → `SSUBSCRIBE` subscriber on the same channel, both
//!    connected to the primary that serves its slot (what a slot-aware client does).
//! 7. Invalidation throughput: A calls `remove` (not awaited) for N keys that B holds; the clock
//!    stops when B's `Applied` events add up to N. The outbox batches by group commit.
//!    Baselines: raw redis-rs, one awaited `PUBLISH` per key; and raw 256-key payloads.
//!
//! 10. The cost of one lost link: B holds a working set; every subscriber connection is
//!     killed (`CLIENT KILL TYPE pubsub`) while A invalidates a few of its keys; once B is
//!     back, B reads the whole working set again and the data-source loads are counted —
//!     with the replay log (B evicts what it missed) and with `replay_log_len = 0` (B
//!     clears), side by side in one run.
//!
//! `cargo bench -p nearcache-bench --bench redis -- cluster` runs only the cluster's row 6
//! (words: `latency` for row 6 on one server, `cluster`, `throughput` for row 7, `loss` for
//! row 10; none: all).

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Goal, Payload, Report, Row, Unit, VALUE, pick};
use hdrhistogram::Histogram;
use nearcache::{
    BackplaneOptions, Cache, CacheEvent, CacheOptions, EntryOptions, InstanceId, Key, RedisConfig,
    StoreOptions,
};
use nearcache_backplane::wire::{self, MessageBuilder, WireLimits};
use nearcache_testkit::{RedisCluster, RedisServer};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{broadcast, mpsc};

/// Longest wait for any one expected event before the bench gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
const RAW_CHANNEL: &str = "nearcache-bench:raw";
/// Keys per payload of the batched raw baseline.
const RAW_BATCH: usize = 256;

/// The parts of this bench, as named on its command line.
const PARTS: [&str; 4] = ["latency", "cluster", "throughput", "loss"];

fn main() {
    // `cargo bench` passes `--bench` (and any flag of its own); words are the parts to run.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if let Some(unknown) = words.iter().find(|w| !PARTS.contains(&w.as_str())) {
        panic!("unknown part `{unknown}`: the parts are {PARTS:?}");
    }
    let wanted = |part: &str| words.is_empty() || words.iter().any(|w| w == part);
    let server = (wanted("latency") || wanted("throughput") || wanted("loss")).then(|| {
        RedisServer::start().expect(
            "start redis-server (install it with `cargo xtask redis` or apt-get install redis-server)",
        )
    });
    let cluster = wanted("cluster").then(|| {
        RedisCluster::start().expect(
            "start a Redis Cluster (redis-server and redis-cli: `cargo xtask redis` or apt-get \
             install redis-server redis-tools)",
        )
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::new("redis");
    runtime.block_on(async {
        if let Some(server) = &server {
            let url = server.url();
            if wanted("latency") {
                latency(&url, &mut report).await;
            }
            if let Some(cluster) = &cluster {
                cluster_latency(cluster, &mut report).await;
            }
            if wanted("throughput") {
                throughput(&url, &mut report).await;
            }
            if wanted("loss") {
                loss(server, &mut report).await;
            }
        } else if let Some(cluster) = &cluster {
            cluster_latency(cluster, &mut report).await;
        }
    });
    drop(runtime);
    drop(cluster);
    drop(server);
}

/// Options of a bench cache on `app`'s channel; `replay_log: false` sets `replay_log_len = 0`.
fn options(url: &str, app: &str, capacity: usize, outbox: usize, replay_log: bool) -> CacheOptions {
    let mut redis = RedisConfig {
        app: app.to_owned(),
        ..RedisConfig::new(url)
    };
    if !replay_log {
        redis.replay_log_len = 0;
    }
    CacheOptions {
        store: StoreOptions {
            max_capacity: capacity as u64,
            ..StoreOptions::default()
        },
        backplane: BackplaneOptions {
            redis: Some(redis),
            outbox_capacity: outbox,
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    }
}

/// Two caches on one channel, both subscribed.
async fn pair(
    url: &str,
    app: &str,
    capacity: usize,
    outbox: usize,
    replay_log: bool,
) -> (Cache, Cache) {
    let connect = || async {
        Cache::builder()
            .options(options(url, app, capacity, outbox, replay_log))
            .connect()
            .await
            .expect("connect a cache to the bench's redis-server")
    };
    let (a, b) = (connect().await, connect().await);
    a.ready().await;
    b.ready().await;
    (a, b)
}

/// Waits for the next `Applied` from `origin`; returns how many invalidations it carried,
/// or `None` when events were dropped for this slow reader.
async fn next_applied(
    events: &mut broadcast::Receiver<CacheEvent>,
    origin: InstanceId,
) -> Option<u64> {
    loop {
        let event = tokio::time::timeout(EVENT_TIMEOUT, events.recv())
            .await
            .expect("an Applied event within the timeout");
        match event {
            Ok(CacheEvent::Applied {
                origin: from,
                invalidations,
                ..
            }) if from == origin => return Some(invalidations),
            Ok(CacheEvent::LossCleared { cause, .. }) => {
                panic!("B cleared itself ({cause:?}): the measure is void")
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => panic!("B's events ended"),
        }
    }
}

/// A raw RESP3 client of the server (the same protocol nearcache's backplane speaks).
fn raw_client(url: &str) -> redis::Client {
    let info = url.into_connection_info().expect("a valid URL");
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).expect("a redis client")
}

/// A publishing connection, and a subscriber whose messages arrive on the receiver.
async fn raw_pair(url: &str) -> (MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>) {
    raw_pair_on(url, RAW_CHANNEL, false).await
}

/// A publishing connection and a subscriber of `channel` (sharded: `SSUBSCRIBE`), both on
/// the node at `url`; the subscriber's messages arrive on the receiver.
async fn raw_pair_on(
    url: &str,
    channel: &str,
    sharded: bool,
) -> (MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>) {
    let client = raw_client(url);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new().set_push_sender(tx);
    let mut subscriber = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("subscriber connection");
    let confirmation = if sharded {
        redis::cmd("SSUBSCRIBE")
            .arg(channel)
            .exec_async(&mut subscriber)
            .await
            .expect("SSUBSCRIBE");
        PushKind::SSubscribe
    } else {
        subscriber.subscribe(channel).await.expect("SUBSCRIBE");
        PushKind::Subscribe
    };
    // The confirmation arrives as a push too.
    loop {
        let push = rx.recv().await.expect("subscription confirmed");
        if push.kind == confirmation {
            break;
        }
    }
    // The subscriber connection must outlive the measure: leak it into a task that holds it.
    tokio::spawn(async move {
        let _subscriber = subscriber;
        std::future::pending::<()>().await;
    });
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher connection");
    (publisher, rx)
}

async fn publish(publisher: &mut MultiplexedConnection, payload: &[u8]) {
    redis::cmd("PUBLISH")
        .arg(RAW_CHANNEL)
        .arg(payload)
        .exec_async(publisher)
        .await
        .expect("PUBLISH");
}

/// The next message (classic or sharded).
async fn next_message(rx: &mut mpsc::UnboundedReceiver<PushInfo>) -> PushInfo {
    loop {
        let push = tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
            .await
            .expect("a message within the timeout")
            .expect("the subscriber is open");
        if matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            return push;
        }
    }
}

/// The bytes nearcache sends for the removal of `key`.
fn remove_message(key: &Key) -> Bytes {
    let mut builder = MessageBuilder::new(WireLimits::DEFAULT);
    builder
        .push_remove(key.as_str().to_owned())
        .expect("a short key fits");
    let message = builder.build(InstanceId::random(), 1, 1, 1);
    wire::encode(&message).expect("encodes")
}

// ---- row 6 ----------------------------------------------------------------------------

async fn latency(url: &str, report: &mut Report) {
    let samples = pick(5_000, 500);
    let warmup = samples / 10;
    let keys = common::keys(warmup + samples);

    let ours = nearcache_latency_on(url, "bench-latency", &keys, warmup, true).await;
    let unlogged = nearcache_latency_on(url, "bench-latency-unlogged", &keys, warmup, false).await;
    let theirs = raw_latency(url, &keys, warmup).await;
    for (histogram, q, name, goal) in [
        (&ours, 0.50, "p50", Goal::RatioAtMost(1.3)),
        (&ours, 0.99, "p99", Goal::Info),
        // What the replay log's publish script (a numbered XADD with the PUBLISH) costs.
        (&unlogged, 0.50, "p50, replay log off", Goal::Info),
    ] {
        report.push(Row::vs(
            "6",
            format!("propagation A remove → B Applied, {name} ({samples} samples)"),
            Unit::Nanos,
            histogram.value_at_quantile(q) as f64,
            "raw redis-rs PUBLISH → subscriber",
            theirs.value_at_quantile(q) as f64,
            goal,
        ));
    }
}

/// Row 6's measure on the channel of `app`, with or without the replay log.
async fn nearcache_latency_on(
    url: &str,
    app: &str,
    keys: &[Key],
    warmup: usize,
    replay_log: bool,
) -> Histogram<u64> {
    let (a, b) = pair(url, app, 2 * keys.len(), 100_000, replay_log).await;
    let origin = a.instance_id().expect("A has a backplane");
    let mut events = b.events();
    let mut histogram = common::histogram();
    for (n, key) in keys.iter().enumerate() {
        b.get_or_create(key, async |_: &mut EntryOptions| {
            Ok::<Payload, Infallible>(VALUE)
        })
        .await
        .expect("loads");
        let start = Instant::now();
        a.remove(key);
        next_applied(&mut events, origin)
            .await
            .expect("one event per sample cannot lag");
        let took = start.elapsed();
        assert!(
            b.get::<Payload>(key).unwrap().is_none(),
            "B's entry is gone once its Applied event is out"
        );
        if n >= warmup {
            common::record(&mut histogram, took);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    histogram
}

async fn raw_latency(url: &str, keys: &[Key], warmup: usize) -> Histogram<u64> {
    let (mut publisher, mut rx) = raw_pair(url).await;
    let mut histogram = common::histogram();
    for (n, key) in keys.iter().enumerate() {
        let payload = remove_message(key);
        let start = Instant::now();
        let ((), received) = tokio::join!(publish(&mut publisher, &payload), async {
            let push = next_message(&mut rx).await;
            (Instant::now(), push)
        });
        let (at, _push) = received;
        if n >= warmup {
            common::record(&mut histogram, at - start);
        }
    }
    histogram
}

// ---- row 6 on a Redis Cluster ----------------------------------------------------------

async fn cluster_latency(cluster: &RedisCluster, report: &mut Report) {
    let samples = pick(5_000, 500);
    let warmup = samples / 10;
    let keys = common::keys(warmup + samples);
    let url = cluster.url();
    let app = "bench-latency-cluster";
    let channel = RedisConfig::for_app(app).channel_name();
    let owner = cluster
        .owner_of_channel(&channel)
        .expect("the cluster names the channel's primary");
    let owner_url = cluster.node(owner).url();

    let ours = nearcache_latency_on(&url, app, &keys, warmup, true).await;
    let theirs = raw_sharded_latency(&owner_url, &channel, &keys, warmup).await;
    for (q, name, goal) in [
        (0.50, "p50", Goal::RatioAtMost(1.3)),
        (0.99, "p99", Goal::Info),
    ] {
        report.push(Row::vs(
            "6",
            format!(
                "propagation through a Redis Cluster (3 primaries), A remove → B Applied, \
                 {name} ({samples} samples)"
            ),
            Unit::Nanos,
            ours.value_at_quantile(q) as f64,
            "raw redis-rs SPUBLISH → SSUBSCRIBE subscriber, on the slot's primary",
            theirs.value_at_quantile(q) as f64,
            goal,
        ));
    }
}

async fn raw_sharded_latency(
    url: &str,
    channel: &str,
    keys: &[Key],
    warmup: usize,
) -> Histogram<u64> {
    let (mut publisher, mut rx) = raw_pair_on(url, channel, true).await;
    let mut histogram = common::histogram();
    for (n, key) in keys.iter().enumerate() {
        let payload = remove_message(key);
        let start = Instant::now();
        let spublish = async {
            let reached: u64 = redis::cmd("SPUBLISH")
                .arg(channel)
                .arg(&payload[..])
                .query_async(&mut publisher)
                .await
                .expect("SPUBLISH on the slot's primary");
            assert_eq!(reached, 1, "the one sharded subscriber got it");
        };
        let ((), at) = tokio::join!(spublish, async {
            next_message(&mut rx).await;
            Instant::now()
        });
        if n >= warmup {
            common::record(&mut histogram, at - start);
        }
    }
    histogram
}

// ---- row 7 ----------------------------------------------------------------------------

async fn throughput(url: &str, report: &mut Report) {
    let n = pick(1_000_000, 200_000);
    let per_key_n = pick(20_000, 3_000);
    let ours = nearcache_throughput(url, n).await;
    let one_per_key = raw_per_key(url, per_key_n).await;
    let batched = raw_batched(url, n).await;
    let what = format!("invalidations applied on B, {n} keys (remove not awaited, group commit)");
    report.push(Row::vs(
        "7",
        what.clone(),
        Unit::PerSec,
        ours,
        "raw redis-rs, one PUBLISH per key",
        one_per_key,
        Goal::AtLeast(1_000_000.0),
    ));
    report.push(Row::vs(
        "7",
        what,
        Unit::PerSec,
        ours,
        format!("raw redis-rs, {RAW_BATCH}-key payloads"),
        batched,
        Goal::Info,
    ));
}

/// Keys per second applied on B.
async fn nearcache_throughput(url: &str, n: usize) -> f64 {
    // The whole burst may wait in the outbox: it must not overflow (B would clear itself on
    // the gap an overflow leaves). Twice the
    // capacity, so that uneven shards evict none of B's keys.
    let (a, b) = pair(url, "bench-throughput", 2 * n, n + 1024, true).await;
    let origin = a.instance_id().expect("A has a backplane");
    let keys = common::keys(n);
    let keys = {
        let b = b.clone();
        tokio::task::spawn_blocking(move || {
            for key in &keys {
                b.get_or_create_sync(key, |_| Ok::<Payload, Infallible>(VALUE))
                    .expect("loads");
            }
            keys
        })
        .await
        .expect("populating B")
    };
    assert_eq!(b.len(), n, "B holds every key before the burst");
    let applied_before = b.stats().propagation.map_or(0, |p| p.invalidations_applied);

    let mut events = b.events();
    let start = Instant::now();
    let producer = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            for key in &keys {
                a.remove(key);
            }
        })
    };
    let mut applied = 0_u64;
    while applied < n as u64 {
        match next_applied(&mut events, origin).await {
            Some(count) => applied += count,
            // Events were dropped; the counter is exact.
            None => {
                applied =
                    b.stats().propagation.map_or(0, |p| p.invalidations_applied) - applied_before;
            }
        }
    }
    let took = start.elapsed();
    producer.await.expect("producer");

    let a_stats = a.stats().propagation.expect("A has a backplane");
    let b_stats = b.stats().propagation.expect("B has a backplane");
    assert_eq!(a_stats.outbox_overflows, 0, "A's outbox never overflowed");
    assert_eq!(b_stats.loss_clears.total(), 0, "B never cleared itself");
    assert_eq!(b.len(), 0, "every key B held was removed");
    println!(
        "row 7: {n} keys in {took:?}: A sent {} messages ({:.0} keys each on average)",
        a_stats.messages_sent,
        n as f64 / a_stats.messages_sent.max(1) as f64
    );
    a.shutdown().await;
    b.shutdown().await;
    n as f64 / took.as_secs_f64()
}

/// `n` keys over the time from the first of `payloads` published (each awaited) until
/// `counter`, which counts the keys arriving, has seen them all.
async fn keys_per_second<P: AsRef<[u8]>>(
    publisher: &mut MultiplexedConnection,
    payloads: &[P],
    n: usize,
    counter: tokio::task::JoinHandle<Instant>,
) -> f64 {
    let start = Instant::now();
    for payload in payloads {
        publish(publisher, payload.as_ref()).await;
    }
    let done = counter.await.expect("counter");
    n as f64 / (done - start).as_secs_f64()
}

/// Keys per second with one awaited `PUBLISH` per key (the bytes nearcache would send).
async fn raw_per_key(url: &str, n: usize) -> f64 {
    let (mut publisher, mut rx) = raw_pair(url).await;
    let payloads: Vec<Bytes> = common::keys(n).iter().map(remove_message).collect();
    let counter = tokio::spawn(async move {
        for _ in 0..n {
            next_message(&mut rx).await;
        }
        Instant::now()
    });
    keys_per_second(&mut publisher, &payloads, n, counter).await
}

/// Keys per second with awaited `PUBLISH`es of `RAW_BATCH` newline-separated keys.
async fn raw_batched(url: &str, n: usize) -> f64 {
    let (mut publisher, mut rx) = raw_pair(url).await;
    let keys = common::keys(n);
    let payloads: Vec<Vec<u8>> = keys
        .chunks(RAW_BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(Key::as_str)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        })
        .collect();
    let counter = tokio::spawn(async move {
        let mut received = 0;
        while received < n {
            let push = next_message(&mut rx).await;
            if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                received += payload.iter().filter(|&&b| b == b'\n').count() + 1;
            }
        }
        Instant::now()
    });
    keys_per_second(&mut publisher, &payloads, n, counter).await
}

/// Row 10: data-source loads after one lost link, repaired from the log vs cleared.
async fn loss(server: &RedisServer, report: &mut Report) {
    let working_set = pick(10_000, 2_000);
    let invalidated = pick(100, 20);
    let repaired = loads_after_a_lost_link(server, true, working_set, invalidated).await;
    let cleared = loads_after_a_lost_link(server, false, working_set, invalidated).await;
    report.push(Row::vs(
        "10",
        format!(
            "loads re-reading {working_set} keys after one subscriber kill, {invalidated} \
             invalidated meanwhile (replay log on)"
        ),
        Unit::Count,
        repaired,
        "replay_log_len = 0 (a clear)",
        cleared,
        Goal::AtMost(1.1 * invalidated as f64),
    ));
}

/// Loads B's working set, kills every subscriber connection while A invalidates
/// `invalidated` of its keys, waits until B is back and has heard A since, then counts the
/// loads of reading the working set again.
async fn loads_after_a_lost_link(
    server: &RedisServer,
    replay: bool,
    working_set: usize,
    invalidated: usize,
) -> f64 {
    let app = if replay {
        "bench-loss-replay"
    } else {
        "bench-loss-clear"
    };
    let connect = || async {
        let cache = Cache::builder()
            .options(options(&server.url(), app, 2 * working_set, 1024, replay))
            .connect()
            .await
            .expect("connect a cache to the bench's redis-server");
        cache.ready().await;
        cache
    };
    let (a, b) = (connect().await, connect().await);
    let origin = a.instance_id().expect("A has a backplane");
    let keys = common::keys(working_set);
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let read_all = async |keys: &[Key]| {
        for key in keys {
            let loads = loads.clone();
            b.get_or_create(key, async move |_| {
                loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<Payload, Infallible>(VALUE)
            })
            .await
            .expect("loads");
        }
    };
    read_all(&keys).await;
    assert_eq!(b.len(), working_set, "B holds the working set");

    let mut events = b.events();
    tokio::task::block_in_place(|| server.client_kill_pubsub()).expect("CLIENT KILL");
    for key in &keys[..invalidated] {
        a.remove(key).await;
    }
    // B noticed the loss and recovered (repaired or cleared), then hears A again.
    let mut recovered = false;
    let marker = Key::from_text(format!("{app}:marker"));
    a.remove(&marker).await;
    let mut marker_seq = a
        .stats()
        .propagation
        .expect("A has a backplane")
        .messages_sent;
    let mut marker_applied = false;
    while !(recovered && marker_applied) {
        let event = tokio::time::timeout(EVENT_TIMEOUT, events.recv())
            .await
            .expect("B recovers and hears A within the timeout");
        match event {
            Ok(CacheEvent::LossRepaired { .. } | CacheEvent::LossCleared { .. }) => {
                // What B hears of A from now on was sent after everything before it.
                recovered = true;
                marker_applied = false;
                a.remove(&marker).await;
                marker_seq = a
                    .stats()
                    .propagation
                    .expect("A has a backplane")
                    .messages_sent;
            }
            Ok(CacheEvent::Applied {
                origin: from, seq, ..
            }) if from == origin => {
                marker_applied = seq >= marker_seq;
            }
            Ok(_) => {}
            Err(error) => panic!("B's events: {error}"),
        }
    }
    let before = loads.load(std::sync::atomic::Ordering::Relaxed);
    read_all(&keys).await;
    let after = loads.load(std::sync::atomic::Ordering::Relaxed);
    let s = b.stats().propagation.expect("B has a backplane");
    println!(
        "row 10 ({}): {} loads; B: {} repairs ({} keys replayed), {} loss clears",
        if replay { "replay" } else { "clear" },
        after - before,
        s.loss_repairs.repairs,
        s.loss_repairs.keys_replayed,
        s.loss_clears.total()
    );
    a.shutdown().await;
    b.shutdown().await;
    (after - before) as f64
}
