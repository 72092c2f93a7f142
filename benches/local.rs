//! Rows 1–3 of the benchmark table, measured with criterion beside raw `quick_cache` and
//! `moka` in the same run, with the same keys and `Arc` values:
//!
//! 1. hit latency on one thread: `get` (no expiry, and with a sliding expiration) and the hit
//!    path of `get_or_create` (blocking and async);
//! 2. read throughput on one and two threads over Zipf-distributed keys (scaling);
//! 3. a mixed load under capacity pressure (Zipf reads through the cache, 10 % inserts):
//!    throughput, and hit ratio in a separate counted pass.
//!
//! Criterion's medians are read back from its `estimates.json` files and written as summary
//! rows (see `common`).

mod common;

use std::cell::Cell;
use std::convert::Infallible;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::hit::{HIT_ROWS, ready};
use common::{Goal, Payload, Report, Row, Unit, VALUE, pick};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use nearcache::{Cache, CacheOptions, EntryOptions, Key, StoreOptions};

type QuickKey = quick_cache::sync::Cache<Key, Arc<Payload>>;
type QuickStr = quick_cache::sync::Cache<Arc<str>, Arc<Payload>>;
type MokaKey = moka::sync::Cache<Key, Arc<Payload>>;
type MokaStr = moka::sync::Cache<Arc<str>, Arc<Payload>>;

/// Keys of row 1 (all cached: a pure hit path).
const HIT_KEYS: usize = 10_000;
/// Keys of rows 2 and 3.
const ZIPF_KEYS: usize = 100_000;
/// Zipf exponent of rows 2 and 3.
const ZIPF_S: f64 = 1.0;
/// Row 3's capacity: a tenth of the keys.
const MIXED_CAPACITY: usize = 10_000;
/// Index sequences are this long (a power of two) and replayed.
const ORDER_LEN: usize = 1 << 20;
const ORDER_MASK: usize = ORDER_LEN - 1;

fn main() {
    let out = common::out_dir();
    let criterion_dir = out.join("criterion");
    // Stale estimates of an earlier run must never be read back as this run's.
    let _ = std::fs::remove_dir_all(&criterion_dir);
    let mut c = Criterion::default()
        .without_plots()
        .output_directory(&criterion_dir)
        .warm_up_time(pick(Duration::from_secs(2), Duration::from_millis(300)))
        .measurement_time(pick(Duration::from_secs(5), Duration::from_millis(700)))
        .sample_size(pick(50, 10))
        .nresamples(pick(100_000, 5_000))
        .configure_from_args();

    let mut report = Report::new("local");
    let medians = Medians { dir: criterion_dir };
    hit_latency(&mut c, &medians, &mut report);
    read_scaling(&mut c, &medians, &mut report);
    mixed_load(&mut c, &medians, &mut report);
    c.final_summary();
}

/// Reads criterion's median time per iteration back from its files.
struct Medians {
    dir: PathBuf,
}

impl Medians {
    /// Nanoseconds per iteration of `group/id`, if it ran.
    fn get(&self, group: &str, id: &str) -> Option<f64> {
        let path = self.dir.join(group).join(id).join("new/estimates.json");
        read_median(&path)
    }
}

fn read_median(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Benches `lookup(i)` for `i` taken from `order` in turn: one lookup per iteration.
fn bench_lookup<R>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    order: &[u32],
    lookup: impl Fn(usize) -> R,
) {
    group.bench_function(id, |b| {
        let mut at = 0_usize;
        b.iter(|| {
            let i = order[at & ORDER_MASK] as usize;
            at = at.wrapping_add(1);
            black_box(lookup(i))
        });
    });
}

/// A cache of its own (no backplane) with `store`'s options.
fn cache_with(store: StoreOptions) -> Cache {
    Cache::new(CacheOptions {
        store,
        ..CacheOptions::default()
    })
    .expect("valid options")
}

/// A cache of its own holding up to `capacity` entries, without expiry.
fn cache_of(capacity: usize) -> Cache {
    cache_with(StoreOptions {
        max_capacity: capacity as u64,
        ..StoreOptions::default()
    })
}

// ---- row 1 ----------------------------------------------------------------------------

fn hit_latency(c: &mut Criterion, medians: &Medians, report: &mut Report) {
    let keys = common::keys(HIT_KEYS);
    let texts: Vec<Arc<str>> = keys.iter().map(|k| Arc::clone(k.text())).collect();
    let order = common::uniform_indexes(HIT_KEYS, ORDER_LEN, 1);
    let capacity = 2 * HIT_KEYS;

    let plain = cache_of(capacity);
    let sliding = cache_with(StoreOptions {
        max_capacity: capacity as u64,
        time_to_idle: Some(Duration::from_secs(600)),
        ..StoreOptions::default()
    });
    let quick_key = QuickKey::new(capacity);
    let quick_str = QuickStr::new(capacity);
    let moka_key = MokaKey::new(capacity as u64);
    let moka_str = MokaStr::new(capacity as u64);
    for (key, text) in keys.iter().zip(&texts) {
        plain.set(key, VALUE);
        sliding.set(key, VALUE);
        quick_key.insert(key.clone(), Arc::new(VALUE));
        quick_str.insert(Arc::clone(text), Arc::new(VALUE));
        moka_key.insert(key.clone(), Arc::new(VALUE));
        moka_str.insert(Arc::clone(text), Arc::new(VALUE));
    }
    moka_key.run_pending_tasks();
    moka_str.run_pending_tasks();
    // Every lookup below must be a hit, or the row measures misses.
    for (key, text) in keys.iter().zip(&texts) {
        assert!(plain.get::<Payload>(key).unwrap().is_some());
        assert!(sliding.get::<Payload>(key).unwrap().is_some());
        assert!(quick_key.get(key).is_some());
        assert!(quick_str.get(&**text).is_some());
        assert!(moka_key.get(key).is_some());
        assert!(moka_str.get(&**text).is_some());
    }

    let factory = |_: &mut EntryOptions| Ok::<Payload, Infallible>(VALUE);
    let mut group = c.benchmark_group("hit");
    bench_lookup(&mut group, "nearcache_get", &order, |i| {
        plain.get::<Payload>(&keys[i])
    });
    bench_lookup(&mut group, "nearcache_get_sliding", &order, |i| {
        sliding.get::<Payload>(&keys[i])
    });
    bench_lookup(&mut group, "nearcache_get_or_create_sync", &order, |i| {
        plain.get_or_create_sync(&keys[i], factory)
    });
    bench_lookup(&mut group, "nearcache_get_or_create_async", &order, |i| {
        ready(plain.get_or_create(&keys[i], async |_: &mut EntryOptions| {
            Ok::<Payload, Infallible>(VALUE)
        }))
    });
    bench_lookup(&mut group, "quick_cache_key", &order, |i| {
        quick_key.get(&keys[i])
    });
    bench_lookup(&mut group, "quick_cache_arc_str", &order, |i| {
        quick_str.get(&*texts[i])
    });
    bench_lookup(&mut group, "moka_key", &order, |i| moka_key.get(&keys[i]));
    bench_lookup(&mut group, "moka_arc_str", &order, |i| {
        moka_str.get(&*texts[i])
    });
    group.finish();

    let m = |id: &str| medians.get("hit", id);
    let (Some(quick_key), Some(quick_str), Some(moka_key), Some(moka_str)) = (
        m("quick_cache_key"),
        m("quick_cache_arc_str"),
        m("moka_key"),
        m("moka_arc_str"),
    ) else {
        eprintln!("row 1: a baseline did not run (filtered out?): no rows");
        return;
    };
    // Every hit path against the raw `quick_cache` hit with the same `Key`; then `get`
    // against the other baselines.
    let get = HIT_ROWS[0];
    let rows = HIT_ROWS
        .iter()
        .map(|row| (row, "quick_cache (Key)", quick_key, row.goal))
        .chain([
            (&get, "quick_cache (Arc<str>)", quick_str, get.goal),
            (&get, "moka (Key)", moka_key, Goal::Better),
            (&get, "moka (Arc<str>)", moka_str, Goal::Better),
        ]);
    for (row, baseline, theirs, goal) in rows {
        if let Some(ours) = m(row.operation) {
            report.push(Row::vs(
                "1",
                row.what,
                Unit::Nanos,
                ours,
                baseline,
                theirs,
                goal,
            ));
        }
    }
}

// ---- row 2 ----------------------------------------------------------------------------

/// Runs `threads` threads, each doing `iters` lookups over its own index sequence; returns
/// the slowest thread's time. One iteration = one lookup on every thread.
fn run_threads(
    threads: usize,
    iters: u64,
    orders: &[Vec<u32>],
    lookup: &(impl Fn(usize) -> bool + Sync),
) -> Duration {
    slowest_thread(&orders[..threads], |order| {
        let mut hits = 0_u64;
        for n in 0..iters {
            if lookup(order[n as usize & ORDER_MASK] as usize) {
                hits += 1;
            }
        }
        black_box(hits);
    })
}

/// Runs `work` on one thread per index sequence of `orders`, all started together by a
/// barrier; returns the slowest thread's time.
fn slowest_thread(orders: &[Vec<u32>], work: impl Fn(&[u32]) + Sync) -> Duration {
    let barrier = Barrier::new(orders.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = orders
            .iter()
            .map(|order| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    work(order);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn bench_threads(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    threads: usize,
    orders: &[Vec<u32>],
    lookup: &(impl Fn(usize) -> bool + Sync),
) {
    group.throughput(Throughput::Elements(threads as u64));
    group.bench_function(format!("{id}_{threads}t"), |b| {
        b.iter_custom(|iters| run_threads(threads, iters, orders, lookup));
    });
}

fn read_scaling(c: &mut Criterion, medians: &Medians, report: &mut Report) {
    let keys = common::keys(ZIPF_KEYS);
    let orders: Vec<Vec<u32>> = (0..2)
        .map(|t| common::zipf_indexes(ZIPF_KEYS, ORDER_LEN, ZIPF_S, 10 + t))
        .collect();
    let capacity = 2 * ZIPF_KEYS;
    let near = cache_of(capacity);
    let quick_key = QuickKey::new(capacity);
    let quick_str = QuickStr::new(capacity);
    let moka_key = MokaKey::new(capacity as u64);
    let texts: Vec<Arc<str>> = keys.iter().map(|k| Arc::clone(k.text())).collect();
    for (key, text) in keys.iter().zip(&texts) {
        near.set(key, VALUE);
        quick_key.insert(key.clone(), Arc::new(VALUE));
        quick_str.insert(Arc::clone(text), Arc::new(VALUE));
        moka_key.insert(key.clone(), Arc::new(VALUE));
    }
    moka_key.run_pending_tasks();

    let near_lookup = |i: usize| near.get::<Payload>(&keys[i]).is_ok_and(|v| v.is_some());
    let quick_key_lookup = |i: usize| quick_key.get(&keys[i]).is_some();
    let quick_str_lookup = |i: usize| quick_str.get(&*texts[i]).is_some();
    let moka_lookup = |i: usize| moka_key.get(&keys[i]).is_some();
    let mut group = c.benchmark_group("read_scaling");
    // Each cache's one- and two-thread runs back to back, so a change in the machine's load
    // between them skews its scaling as little as possible.
    for threads in [1, 2] {
        bench_threads(&mut group, "nearcache", threads, &orders, &near_lookup);
    }
    for threads in [1, 2] {
        bench_threads(
            &mut group,
            "quick_cache_key",
            threads,
            &orders,
            &quick_key_lookup,
        );
    }
    for threads in [1, 2] {
        bench_threads(
            &mut group,
            "quick_cache_arc_str",
            threads,
            &orders,
            &quick_str_lookup,
        );
    }
    for threads in [1, 2] {
        bench_threads(&mut group, "moka_key", threads, &orders, &moka_lookup);
    }
    group.finish();

    scaling_runs(&near_lookup, &quick_key_lookup, &orders, report);

    // ns per iteration → lookups per second over all threads.
    let rate = |id: &str, threads: usize| {
        medians
            .get("read_scaling", &format!("{id}_{threads}t"))
            .map(|ns| threads as f64 * 1e9 / ns)
    };
    let Some((near1, near2)) = rate("nearcache", 1).zip(rate("nearcache", 2)) else {
        eprintln!("row 2: nearcache did not run (filtered out?): no rows");
        return;
    };
    report.push(Row::vs(
        "2",
        "Zipf reads, 2 threads ÷ 1 thread (scaling)",
        Unit::Factor,
        near2 / near1,
        "quick_cache (Key) scaling",
        rate("quick_cache_key", 2).unwrap_or(0.0) / rate("quick_cache_key", 1).unwrap_or(f64::NAN),
        Goal::Info,
    ));
    report.push(Row::vs(
        "2",
        "Zipf reads, 2 threads ÷ 1 thread (scaling)",
        Unit::Factor,
        near2 / near1,
        "moka (Key) scaling",
        rate("moka_key", 2).unwrap_or(0.0) / rate("moka_key", 1).unwrap_or(f64::NAN),
        Goal::Info,
    ));
    for (id, name) in [
        ("quick_cache_key", "quick_cache (Key)"),
        ("quick_cache_arc_str", "quick_cache (Arc<str>)"),
        ("moka_key", "moka (Key)"),
    ] {
        for (threads, ours) in [(1, near1), (2, near2)] {
            if let Some(theirs) = rate(id, threads) {
                report.push(Row::vs(
                    "2",
                    format!(
                        "Zipf reads, {threads} thread{}",
                        if threads == 1 { "" } else { "s" }
                    ),
                    Unit::PerSec,
                    ours,
                    name,
                    theirs,
                    Goal::Info,
                ));
            }
        }
    }
}

/// Row 2's target: the two-thread scaling of nearcache and of raw quick_cache (`Key`),
/// each the median of `SCALING_RUNS` runs in this invocation; a run times a fixed number of
/// lookups on one thread, then on two, for both caches back to back.
fn scaling_runs(
    near: &(impl Fn(usize) -> bool + Sync),
    quick: &(impl Fn(usize) -> bool + Sync),
    orders: &[Vec<u32>],
    report: &mut Report,
) {
    const SCALING_RUNS: usize = 5;
    let iters = pick(4_000_000, 1_000_000);
    let scaling = |lookup: &(dyn Fn(usize) -> bool + Sync)| {
        let one = run_threads(1, iters, orders, &lookup).as_secs_f64();
        let two = run_threads(2, iters, orders, &lookup).as_secs_f64();
        // Two threads did twice the lookups.
        2.0 * one / two
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..SCALING_RUNS {
        ours.push(scaling(near));
        theirs.push(scaling(quick));
    }
    eprintln!("row 2 scaling runs: nearcache {ours:.2?}, quick_cache {theirs:.2?}");
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    report.push(Row::vs(
        "2",
        format!("Zipf reads, 2 threads ÷ 1 thread (scaling, median of {SCALING_RUNS} runs)"),
        Unit::Factor,
        median(ours),
        "quick_cache (Key) scaling",
        median(theirs),
        Goal::RatioAtLeast(0.9),
    ));
}

// ---- row 3 ----------------------------------------------------------------------------

/// One caller's mixed workload: nine reads through the cache (loading on a miss), then one
/// insert, over Zipf-distributed keys.
trait Mixed: Sync {
    /// Reads `key` through the cache; `loads` counts factory runs.
    fn read(&self, key: &Key, loads: &Cell<u64>);
    /// Inserts `key`.
    fn insert(&self, key: &Key);
}

impl Mixed for Cache {
    fn read(&self, key: &Key, loads: &Cell<u64>) {
        let value = self.get_or_create_sync(key, |_| {
            loads.set(loads.get() + 1);
            Ok::<Payload, Infallible>(VALUE)
        });
        black_box(value.is_ok());
    }
    fn insert(&self, key: &Key) {
        self.set(key, VALUE);
    }
}

impl Mixed for MokaKey {
    fn read(&self, key: &Key, loads: &Cell<u64>) {
        black_box(self.get_with_by_ref(key, || {
            loads.set(loads.get() + 1);
            Arc::new(VALUE)
        }));
    }
    fn insert(&self, key: &Key) {
        MokaKey::insert(self, key.clone(), Arc::new(VALUE));
    }
}

impl Mixed for QuickKey {
    fn read(&self, key: &Key, loads: &Cell<u64>) {
        let value = self.get_or_insert_with(key, || {
            loads.set(loads.get() + 1);
            Ok::<_, Infallible>(Arc::new(VALUE))
        });
        black_box(value.is_ok());
    }
    fn insert(&self, key: &Key) {
        QuickKey::insert(self, key.clone(), Arc::new(VALUE));
    }
}

/// Runs `ops` operations of the mix starting at `start` in `order`; returns (reads, loads).
fn run_mix(cache: &impl Mixed, keys: &[Key], order: &[u32], start: usize, ops: u64) -> (u64, u64) {
    let loads = Cell::new(0);
    let mut reads = 0;
    for n in 0..ops as usize {
        let at = start.wrapping_add(n);
        let key = &keys[order[at & ORDER_MASK] as usize];
        if at % 10 == 9 {
            cache.insert(key);
        } else {
            cache.read(key, &loads);
            reads += 1;
        }
    }
    (reads, loads.get())
}

/// Hit ratio of the mix on a fresh cache: one pass to warm it, one counted pass.
fn hit_ratio(cache: &impl Mixed, keys: &[Key], order: &[u32]) -> f64 {
    let ops = pick(ORDER_LEN, ORDER_LEN / 4) as u64;
    run_mix(cache, keys, order, 0, ops);
    let (reads, loads) = run_mix(cache, keys, order, ops as usize, ops);
    1.0 - loads as f64 / reads as f64
}

fn bench_mix(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    cache: &impl Mixed,
    keys: &[Key],
    orders: &[Vec<u32>],
) {
    const THREADS: usize = 2;
    group.throughput(Throughput::Elements(THREADS as u64));
    group.bench_function(id, |b| {
        let mut offset = 0_usize;
        b.iter_custom(|iters| {
            let start_at = offset;
            offset = offset.wrapping_add(iters as usize);
            slowest_thread(&orders[..THREADS], |order| {
                black_box(run_mix(cache, keys, order, start_at, iters));
            })
        });
    });
}

fn mixed_load(c: &mut Criterion, medians: &Medians, report: &mut Report) {
    let keys = common::keys(ZIPF_KEYS);
    let orders: Vec<Vec<u32>> = (0..2)
        .map(|t| common::zipf_indexes(ZIPF_KEYS, ORDER_LEN, ZIPF_S, 20 + t))
        .collect();
    let near = || cache_of(MIXED_CAPACITY);
    let moka = || MokaKey::new(MIXED_CAPACITY as u64);
    let quick = || QuickKey::new(MIXED_CAPACITY);

    let mut group = c.benchmark_group("mixed");
    bench_mix(&mut group, "nearcache", &near(), &keys, &orders);
    bench_mix(&mut group, "moka_key", &moka(), &keys, &orders);
    bench_mix(&mut group, "quick_cache_key", &quick(), &keys, &orders);
    group.finish();

    let rate = |id: &str| medians.get("mixed", id).map(|ns| 2.0 * 1e9 / ns);
    if rate("nearcache").is_none() {
        eprintln!("row 3: nearcache did not run (filtered out?): no rows");
        return;
    }
    let ratios = [
        hit_ratio(&near(), &keys, &orders[0]),
        hit_ratio(&moka(), &keys, &orders[0]),
        hit_ratio(&quick(), &keys, &orders[0]),
    ];
    let what = "Zipf mix (90 % read-through, 10 % insert), capacity = 10 % of keys, 2 threads";
    if let Some(ours) = rate("nearcache") {
        for (id, name) in [
            ("moka_key", "moka (Key)"),
            ("quick_cache_key", "quick_cache (Key)"),
        ] {
            if let Some(theirs) = rate(id) {
                report.push(Row::vs(
                    "3",
                    what,
                    Unit::PerSec,
                    ours,
                    name,
                    theirs,
                    Goal::Info,
                ));
            }
        }
    }
    for (name, theirs) in [("moka (Key)", ratios[1]), ("quick_cache (Key)", ratios[2])] {
        report.push(Row::vs(
            "3",
            "hit ratio of that mix (1 thread, counted pass after a warm-up pass)",
            Unit::Fraction,
            ratios[0],
            name,
            theirs,
            Goal::Info,
        ));
    }
}
