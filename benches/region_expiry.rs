//! Row 5 of the benchmark table: expiring a region of 100,000 entries.
//!
//! * The expiry itself must be O(1): it flips the region's token, so it takes as long with
//!   1,000,000 entries as with 100,000. Every timed expiry starts with the CPU caches swept,
//!   so both sizes start equally cold (a small store would otherwise stay cached and look
//!   faster for that reason alone). Measured two ways: the call as users make it (median; the
//!   row says in how many samples the caller was preempted anyway, by anything), and the
//!   token flip alone. The call wakes no thread: the purger finds the request at its next
//!   tick (`benches/expiry_churn.rs` times the call with caller and purger on one CPU).
//! * The purger then sweeps the dead entries out of memory: the time from the expiry until
//!   the purger's pass is done (awaited on the store's purge progress, not polled), which
//!   includes up to one 50 ms tick of the purger.
//!
//! Baseline: a raw `quick_cache` whose values carry their region, expired the only way a
//! raw cache can be, by `retain` over every entry. The store is used directly (the facade's
//! `expire_region` is this call plus one message to the peers; it does not expose purge
//! progress).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Catalog, Goal, Payload, Report, Row, Unit, VALUE, median, pick, populated};
use nearcache::Key;

/// The region id a raw cache's values carry.
const CATALOG: u32 = 1;
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the samples of one size measured.
struct Sizes {
    /// Median time of the `expire_region` call.
    expire: f64,
    /// Median time of the token flip alone (`Regions::expire_region_of`, which wakes no
    /// purger): the work of an expiry without the thread hand-off.
    flip: f64,
    /// Median time from the call until the purger's pass is done.
    purged: f64,
    /// Samples whose call was preempted (involuntary context switch of the calling thread).
    preempted: usize,
    samples: usize,
}

/// This thread's involuntary context switches so far (Linux; 0 elsewhere).
fn involuntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sweeps a buffer larger than the CPU caches, so every timed expiry starts equally cold
/// whatever the store's size (a store of 1k entries would otherwise stay cached and one of
/// 1M would not, which is a difference of cache state, not of work).
fn evict_caches(buffer: &mut [u8]) {
    for byte in buffer.iter_mut().step_by(64) {
        *byte = byte.wrapping_add(1);
    }
    std::hint::black_box(&buffer);
}

/// The buffer `evict_caches` sweeps: 64 MiB.
fn cache_sweeper() -> Vec<u8> {
    vec![0; 64 << 20]
}

/// Each sample: populate, flip the region's token alone (timed), then make the real call
/// (timed; it does the same O(1) work again on the region's new token, and wakes the purger),
/// and time until the purger's pass is done. Caches are swept before each timed step.
fn nearcache_expiry(entries: usize, samples: usize) -> Sizes {
    let keys = common::keys(entries);
    let mut sweeper = cache_sweeper();
    let (mut flip, mut expire, mut purged) = (Vec::new(), Vec::new(), Vec::new());
    let mut preempted = 0;
    for _ in 0..samples {
        let store = populated(&keys);

        evict_caches(&mut sweeper);
        let start = Instant::now();
        store.regions().expire_region_of::<Catalog>();
        flip.push(start.elapsed().as_nanos() as f64);
        assert!(
            store.get::<Payload>(&keys[0]).unwrap().is_none(),
            "the flip expired the region's entries"
        );

        evict_caches(&mut sweeper);
        let switches = involuntary_switches();
        let start = Instant::now();
        store.expire_region::<Catalog>();
        let expired = start.elapsed();
        if involuntary_switches() > switches {
            preempted += 1;
        }
        let requested = store.purge_progress().requested;
        assert!(
            store.wait_for_purge(|p| p.served >= requested, PURGE_TIMEOUT),
            "the purger finished within {PURGE_TIMEOUT:?}"
        );
        let done = start.elapsed();
        assert_eq!(store.len(), 0, "the purger removed every expired entry");
        expire.push(expired.as_nanos() as f64);
        purged.push(done.as_nanos() as f64);
    }
    Sizes {
        expire: median(expire),
        flip: median(flip),
        purged: median(purged),
        preempted,
        samples,
    }
}

fn quick_cache_retain(entries: usize, samples: usize) -> f64 {
    let keys = common::keys(entries);
    let mut times = Vec::new();
    for _ in 0..samples {
        let cache: quick_cache::sync::Cache<Key, (u32, Arc<Payload>)> =
            quick_cache::sync::Cache::new(2 * entries);
        for key in &keys {
            cache.insert(key.clone(), (CATALOG, Arc::new(VALUE)));
        }
        assert_eq!(cache.len(), entries);
        let start = Instant::now();
        cache.retain(|_, (region, _)| *region != CATALOG);
        times.push(start.elapsed().as_nanos() as f64);
        assert_eq!(cache.len(), 0);
    }
    median(times)
}

fn main() {
    let samples = pick(21, 5);
    let base = nearcache_expiry(100_000, samples);
    let tenfold = nearcache_expiry(1_000_000, samples);
    let retain = quick_cache_retain(100_000, samples);

    let mut report = Report::new("region_expiry");
    // Every figure here is row 5 of the targets table, in nanoseconds.
    let row = |what: String, ours, baseline: &str, theirs, goal| {
        Row::vs("5", what, Unit::Nanos, ours, baseline, theirs, goal)
    };
    report.push(row(
        format!(
            "expire a region of 100k entries: the call (median; preempted in {}/{})",
            base.preempted, base.samples
        ),
        base.expire,
        "quick_cache retain over 100k",
        retain,
        Goal::Better,
    ));
    report.push(row(
        format!(
            "O(1): the call with 1M entries (median; caller preempted in {}/{} samples)",
            tenfold.preempted, tenfold.samples
        ),
        tenfold.expire,
        "same call, 100k entries",
        base.expire,
        Goal::RatioAtMost(2.0),
    ));
    report.push(row(
        "O(1): token flip alone (no purger wake-up), 1M entries (median)".into(),
        tenfold.flip,
        "same flip, 100k entries",
        base.flip,
        Goal::RatioAtMost(2.0),
    ));
    report.push(row(
        "expire a region of 100k entries: until purged (background)".into(),
        base.purged,
        "quick_cache retain over 100k",
        retain,
        Goal::Info,
    ));
}
