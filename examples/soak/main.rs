//! The soak: three caches through a real `redis-server` under steady read/write load while
//! Redis is killed and restarted and its subscribers are `CLIENT KILL`ed at random — or, with
//! `--topology cluster|sentinel`, through a Redis Cluster or behind Sentinels whose primaries
//! fail over and are killed (and, on a cluster, whose channel slot migrates); see
//! [`deployment`].
//!
//! ```text
//! cargo xtask soak --minutes 1                       # what CI runs
//! cargo run --example soak -- --minutes 30 --bound 5s
//! cargo xtask soak --minutes 1 --topology cluster
//! ```
//!
//! Every read is checked against the "database" ([`db`]): a read that returns a version
//! older than the current one is stale, and how long it had been stale is measured. At the
//! end, once every instance is connected and has applied its peers' last messages, no
//! instance may hold an entry older than the database. The report gives operations done,
//! faults injected, clears by cause, outbox overflows, the longest staleness of a read that
//! missed a write made after recovery (no fault in progress at the write or the read) and
//! of one that missed a write made during a fault, and resident memory over time with a
//! growth verdict. Exit status 1 on any stale read past the bound (default: `max_staleness`
//! plus 4 s), any stale entry left at the end, any panic, or an instance that did not
//! reconnect (and on memory growth with `--strict-rss`).
//!
//! Loopback only: every server is a private `redis-server` on a free 127.0.0.1 port. Every
//! loop is bounded by the deadline and by a cap on operations.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a report on the terminal is its job

mod db;
mod deployment;
mod faults;
mod rss;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nearcache::{Cache, CacheEvent, CacheOptions, EntryOptions, Key, LossClears, region};
use rand::Rng;

use db::{Db, Staleness};
use deployment::{Deployment, Topology};
use faults::{Fault, FaultCounts};

region!(Shard = "shard");

const INSTANCES: usize = 3;
const WORKERS_PER_INSTANCE: usize = 3;
const KEYS: usize = 2_000;
/// Every worker stops after this many operations even if the deadline is far.
const MAX_OPS_PER_WORKER: u64 = 50_000_000;
const MAX_STALENESS: Duration = Duration::from_secs(1);

/// What a cached entry holds: the database version it was loaded at, and some bytes so
/// memory use is realistic.
struct Versioned {
    version: u64,
    _payload: Vec<u8>,
}

/// The soak's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "soak",
    about = "Three caches through a real redis-server under read/write load while Redis is \
             killed and restarted and its subscribers are CLIENT KILLed; exits 1 on any stale \
             read past the bound, stale entry left, panic or instance that did not reconnect.",
    override_usage = "cargo run --example soak -- [--minutes N | --seconds N] [--bound D] [--strict-rss] [--topology single|cluster|sentinel]",
    after_help = "Durations: 500ms, 5s, 1m 30s."
)]
struct Cli {
    /// How long to run, in minutes (fractions allowed).
    #[arg(long, value_name = "N", conflicts_with = "seconds")]
    minutes: Option<f64>,
    /// How long to run, in seconds.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Stale-read bound (default: max_staleness plus 4 s).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    bound: Option<Duration>,
    /// Exit 1 on resident-memory growth too.
    #[arg(long)]
    strict_rss: bool,
    /// Which Redis deployment to run against.
    #[arg(long, value_enum, default_value = "single")]
    topology: Topology,
}

struct Args {
    duration: Duration,
    bound: Duration,
    strict_rss: bool,
    topology: Topology,
}

fn parse_args() -> Result<Args, String> {
    let cli = <Cli as clap::Parser>::parse();
    let duration = match (cli.minutes, cli.seconds) {
        (Some(minutes), _) => Duration::try_from_secs_f64(minutes * 60.0)
            .map_err(|e| format!("--minutes {minutes}: {e}"))?,
        (None, Some(seconds)) => Duration::from_secs(seconds),
        (None, None) => Duration::from_secs(60),
    };
    Ok(Args {
        duration,
        bound: cli.bound.unwrap_or(MAX_STALENESS + Duration::from_secs(4)),
        strict_rss: cli.strict_rss,
        topology: cli.topology,
    })
}

static PANICS: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}");
            return ExitCode::FAILURE;
        }
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("soak: no tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(soak(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("soak: {message}");
            ExitCode::FAILURE
        }
    }
}

fn key(k: usize) -> Key {
    Key::from_text(format!("Product:get-{k}"))
}

fn sub(k: usize) -> String {
    format!("s{}", k % 16)
}

/// Everything the workers share.
struct Shared {
    caches: Vec<Cache>,
    db: Db,
    staleness: Staleness,
    bound: Duration,
    stop: AtomicBool,
    faulting: AtomicBool,
    reads: AtomicU64,
    writes: AtomicU64,
}

async fn soak(args: &Args) -> Result<bool, String> {
    let channel = "nearcache:soak:invalidations";
    let deployment = Deployment::start(args.topology, channel)
        .map_err(|e| format!("redis ({:?}): {e}", args.topology))?;
    let mut options = CacheOptions::default();
    let backplane = &mut options.backplane;
    let redis_url_shown = deployment.url();
    backplane.redis = Some(nearcache::RedisConfig {
        channel: Some(channel.into()),
        ..nearcache::RedisConfig::new(redis_url_shown.clone())
    });
    backplane.heartbeat_interval = Duration::from_secs(1);
    backplane.publish_timeout = Duration::from_millis(200);
    // Small, so a long outage overflows it (the lost-backlog path).
    backplane.outbox_capacity = 64;
    backplane.max_staleness = Some(MAX_STALENESS);
    backplane.reconnect_initial_delay = Duration::from_millis(50);
    backplane.reconnect_max_delay = Duration::from_millis(500);
    let mut caches = Vec::new();
    for _ in 0..INSTANCES {
        let cache = Cache::builder()
            .options(options.clone())
            .connect()
            .await
            .map_err(|e| format!("cache: {e}"))?;
        caches.push(cache);
    }
    for cache in &caches {
        cache.ready().await;
    }
    let shared = Arc::new(Shared {
        caches,
        db: Db::new(KEYS),
        staleness: Staleness::default(),
        bound: args.bound,
        stop: AtomicBool::new(false),
        faulting: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
    });
    println!(
        "soak: {INSTANCES} instances × {WORKERS_PER_INSTANCE} workers, {KEYS} keys, redis {:?} \
         at {}, {:?}, staleness bound {:?}",
        args.topology, redis_url_shown, args.duration, args.bound
    );

    let started = Instant::now();
    let mut workers = Vec::new();
    for at in 0..INSTANCES {
        for worker in 0..WORKERS_PER_INSTANCE {
            workers.push(tokio::spawn(work(Arc::clone(&shared), at, worker == 0)));
        }
    }
    let deployment = Arc::new(Mutex::new(deployment));
    let counts = Arc::new(FaultCounts::default());
    let warm_up = (args.duration / 10).min(Duration::from_secs(10));
    let injector = {
        let (deployment, counts, shared) = (
            Arc::clone(&deployment),
            Arc::clone(&counts),
            Arc::clone(&shared),
        );
        std::thread::spawn(move || {
            faults::inject(
                &deployment,
                &shared.caches,
                &counts,
                &shared.faulting,
                &shared.stop,
                warm_up,
            );
        })
    };

    let mut rss_samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < args.duration {
        ticker.tick().await;
        let elapsed = started.elapsed();
        if let Some(kib) = rss::rss_kib() {
            rss_samples.push((elapsed, kib));
        }
        if elapsed.as_secs().is_multiple_of(10) && elapsed.as_secs() > 0 {
            println!(
                "  t={:>4}s reads={} writes={} faults={} stale_reads={} rss={} MiB",
                elapsed.as_secs(),
                shared.reads.load(Ordering::Relaxed),
                shared.writes.load(Ordering::Relaxed),
                counts.total(),
                shared.staleness.stale_reads.load(Ordering::Relaxed),
                rss_samples.last().map_or(0, |(_, kib)| kib / 1024),
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut worker_panics = 0;
    for worker in workers {
        if worker.await.is_err() {
            worker_panics += 1;
        }
    }
    if injector.join().is_err() {
        worker_panics += 1;
    }
    let left_stale = settle_and_compare(&shared).await;
    for cache in &shared.caches {
        cache.shutdown().await;
    }
    Ok(report(
        args,
        &shared,
        &counts,
        &rss_samples,
        warm_up,
        worker_panics,
        left_stale,
    ))
}

/// One worker: reads (95 %) and writes (5 %) on instance `at` until told to stop. Worker 0
/// of each instance does not wait for its invalidations to be published (it drops the
/// `Invalidation` each returns), so during an outage it fills the outbox until it overflows.
async fn work(shared: Arc<Shared>, at: usize, fire_and_forget: bool) {
    let cache = &shared.caches[at];
    for op in 0..MAX_OPS_PER_WORKER {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let (k, roll) = {
            let mut rng = rand::rng();
            (rng.random_range(0..KEYS), rng.random_range(0..100_000_u32))
        };
        if roll < 95_000 {
            read(&shared, cache, k).await;
        } else {
            write(&shared, cache, k, roll, fire_and_forget).await;
        }
        // A steady load, not a flat-out one: Redis and the other workers share 2 cores.
        if op % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn read(shared: &Shared, cache: &Cache, k: usize) {
    shared.reads.fetch_add(1, Ordering::Relaxed);
    let db = &shared.db;
    let loaded = cache
        .get_or_create(key(k), async |entry: &mut EntryOptions| {
            entry.region_key::<Shard>(&sub(k));
            Ok::<_, std::convert::Infallible>(Versioned {
                version: db.read(k),
                _payload: vec![0; 256],
            })
        })
        .await;
    let Ok(value) = loaded else {
        return;
    };
    if let Some((age, written_during_fault)) = db.staleness(k, value.version, Instant::now()) {
        // Healthy: the write it missed and the read both happened with no fault in progress.
        let healthy = !written_during_fault
            && !shared.faulting.load(Ordering::Relaxed)
            && faults::all_connected(&shared.caches);
        shared.staleness.record(age, healthy, shared.bound);
        if age > shared.bound {
            tracing::error!(
                key = k,
                seen = value.version,
                current = db.read(k),
                ?age,
                healthy,
                "stale read past the bound"
            );
        }
    }
}

/// A database write, then its invalidation: mostly `remove`, some `set`, a few sub-key
/// expiries, rarely a `clear`.
async fn write(shared: &Shared, cache: &Cache, k: usize, roll: u32, fire_and_forget: bool) {
    shared.writes.fetch_add(1, Ordering::Relaxed);
    let version = shared.db.write(k, shared.faulting.load(Ordering::Relaxed));
    let value = || Versioned {
        version,
        _payload: vec![0; 256],
    };
    let s = sub(k);
    let tie = move |entry: &mut EntryOptions| {
        entry.region_key::<Shard>(&s);
    };
    match (roll, fire_and_forget) {
        (95_000..95_001, false) => {
            cache.clear().await;
        }
        (95_000..95_001, true) => {
            cache.clear();
        }
        (95_001..95_100, false) => {
            cache.expire_region_key::<Shard, _>(&sub(k)).await;
        }
        (95_001..95_100, true) => {
            cache.expire_region_key::<Shard, _>(&sub(k));
        }
        (95_100..97_000, _) => {
            // Stored and queued at once; fire and forget drops the wait.
            let set = cache.set_with(key(k), value(), tie);
            if !fire_and_forget {
                set.await;
            }
        }
        (_, true) => {
            cache.remove(key(k));
        }
        (_, false) => {
            cache.remove(key(k)).await;
        }
    }
}

/// One round of markers: each instance removes a marker key, and every peer must apply
/// each marker (or a later message of its sender) within 5 s. `Some(false)` when the round
/// did not complete in time; `None` without a backplane.
async fn markers_applied(caches: &[Cache]) -> Option<bool> {
    let mut events: Vec<_> = caches.iter().map(Cache::events).collect();
    let mut want = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        cache.remove(Key::from_text(format!("Marker:{i}"))).await;
        let p = cache.stats().propagation?;
        want.push((p.instance, p.messages_sent));
    }
    let round = async {
        for (j, events) in events.iter_mut().enumerate() {
            let mut pending: Vec<_> = want
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != j)
                .map(|(_, w)| *w)
                .collect();
            while !pending.is_empty() {
                if let Ok(CacheEvent::Applied { origin, seq, .. }) = events.recv().await {
                    pending.retain(|(o, s)| !(*o == origin && seq >= *s));
                }
            }
        }
    };
    Some(
        tokio::time::timeout(Duration::from_secs(5), round)
            .await
            .is_ok(),
    )
}

/// Waits (at most 30 s) until every instance is connected, has published its outbox, and
/// has applied a marker message from every peer (a lost earlier message shows as a gap on
/// it); then counts entries older than the database.
async fn settle_and_compare(shared: &Shared) -> Option<usize> {
    let caches = &shared.caches;
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ready = caches.iter().all(|c| {
                c.stats()
                    .propagation
                    .is_some_and(|p| p.connected && p.outbox_len == 0)
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A marker published while a subscription is still moving (a failover just before
        // the end) can be missed without an `Applied` to wait for: each round that does not
        // complete within 5 s is followed by a new round of markers.
        while !markers_applied(caches).await? {}
        Some(())
    })
    .await;
    if !matches!(settled, Ok(Some(()))) {
        eprintln!("soak: the instances did not settle within 30 s");
        return None;
    }
    let mut stale = 0;
    for (j, cache) in caches.iter().enumerate() {
        for k in 0..KEYS {
            if let Ok(Some(value)) = cache.get::<Versioned>(key(k)) {
                let current = shared.db.read(k);
                if value.version != current {
                    stale += 1;
                    eprintln!(
                        "soak: instance {j} holds key {k} at version {}, the database has {current}",
                        value.version
                    );
                }
            }
        }
    }
    Some(stale)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Prints the report; returns whether the run passed.
fn report(
    args: &Args,
    shared: &Shared,
    counts: &FaultCounts,
    rss_samples: &[(Duration, u64)],
    warm_up: Duration,
    worker_panics: u64,
    left_stale: Option<usize>,
) -> bool {
    let mut clears = LossClears::default();
    let (mut overflows, mut failures, mut loads, mut lag_max, mut lag_p99) = (0, 0, 0, 0, 0);
    for cache in &shared.caches {
        let stats = cache.stats();
        loads += stats.store.loads;
        if let Some(p) = stats.propagation {
            // Named field by field, so that a new cause fails to compile here instead of
            // going missing from the report.
            let LossClears {
                reconnect,
                lagged,
                peer_gap,
                outbox_overflow,
                subscription_ended,
                echo_lost,
            } = p.loss_clears;
            clears.reconnect += reconnect;
            clears.lagged += lagged;
            clears.peer_gap += peer_gap;
            clears.outbox_overflow += outbox_overflow;
            clears.subscription_ended += subscription_ended;
            clears.echo_lost += echo_lost;
            overflows += p.outbox_overflows;
            failures += p.publish_failures;
            lag_max = lag_max.max(p.propagation_lag.max.as_micros());
            lag_p99 = lag_p99.max(p.propagation_lag.p99.as_micros());
        }
    }
    let s = &shared.staleness;
    let past_bound = s.past_bound.load(Ordering::Relaxed);
    let panics = PANICS.load(Ordering::SeqCst) + worker_panics;
    let unrecovered = counts.unrecovered.load(Ordering::Relaxed);
    let growth = rss::growth(rss_samples, warm_up);
    println!("soak report ({:?})", args.duration);
    println!(
        "  operations      reads {}  writes {}  loads {}",
        shared.reads.load(Ordering::Relaxed),
        shared.writes.load(Ordering::Relaxed),
        loads
    );
    println!(
        "  faults          redis killed+restarted {}  subscribers CLIENT KILLed {}  \
         failovers {}  slot migrations {}  slowest recovery {} ms  not recovered {}",
        counts.of(Fault::RedisKill),
        counts.of(Fault::SubscriberKill),
        counts.of(Fault::Failover),
        counts.of(Fault::Migration),
        counts.max_recovery_ms.load(Ordering::Relaxed),
        unrecovered
    );
    println!(
        "  clears          total {}  (reconnect {}, peer gap {}, lagged {}, outbox overflow {}, \
         subscription ended {}, echo lost {})",
        clears.total(),
        clears.reconnect,
        clears.peer_gap,
        clears.lagged,
        clears.outbox_overflow,
        clears.subscription_ended,
        clears.echo_lost
    );
    println!("  outbox          overflows {overflows}  publish failures {failures}");
    println!(
        "  propagation lag p99 {:.1} ms  max {:.1} ms",
        lag_p99 as f64 / 1000.0,
        lag_max as f64 / 1000.0
    );
    println!(
        "  staleness       stale reads {}  max after recovery {:.1} ms  \
         max around faults {:.1} ms  past the {:?} bound {}",
        s.stale_reads.load(Ordering::Relaxed),
        ms(s.max_healthy_micros.load(Ordering::Relaxed)),
        ms(s.max_faulty_micros.load(Ordering::Relaxed)),
        args.bound,
        past_bound
    );
    match left_stale {
        Some(n) => println!("  at the end      entries older than the database: {n}"),
        None => println!("  at the end      did not settle"),
    }
    let line: Vec<String> = rss_samples
        .iter()
        .filter(|(at, _)| at.as_secs().is_multiple_of(10))
        .map(|(at, kib)| format!("{}s:{}", at.as_secs(), kib / 1024))
        .collect();
    println!("  rss (MiB)       {}", line.join(" "));
    let grew = match &growth {
        Some(g) => {
            println!(
                "  rss growth      first third {} MiB, last third {} MiB (tolerance {} MiB): {}",
                g.first_third_kib / 1024,
                g.last_third_kib / 1024,
                g.tolerance_kib / 1024,
                if g.grew() { "GREW" } else { "flat" }
            );
            g.grew()
        }
        None => {
            println!("  rss growth      too few samples");
            false
        }
    };
    println!("  panics          {panics}");
    let passed = panics == 0
        && past_bound == 0
        && unrecovered == 0
        && left_stale == Some(0)
        && !(args.strict_rss && grew);
    println!("soak: {}", if passed { "passed" } else { "FAILED" });
    passed
}
