//! Rows 5 (pinned) and 9 of the benchmark table: what region expiries cost the threads that
//! do not make them.
//!
//! * **Readers during expiry churn** (row 9): a store of 1,000,000 entries, each tied to one
//!   of 10,000 sub-keys of a region (100 entries each). One reader thread reads entries of
//!   the first half of the sub-keys in random order, timing every `get`, while the main
//!   thread expires one sub-key per millisecond: sub-keys nothing is tied to, then sub-keys
//!   of the second half (each expiry kills 100 entries the reader never reads, so every read
//!   stays a hit and only interference is measured). Churning phases alternate with idle
//!   ones (no expiries) of the same length, and are compared with them: `get` p99 and reads
//!   per second.
//! * **`expire_region` on one CPU** (row 5): the binary re-runs itself under
//!   `taskset -c 0`, so the caller and the purger thread it wakes share one CPU, and times
//!   the call on a region of 100,000 entries (median). A purger that takes the CPU as soon
//!   as it is woken makes the call last as long as its pass.

mod common;

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Catalog, Goal, Payload, Report, Row, Unit, VALUE, median, pick, populated};
use nearcache::Key;
use nearcache_store::{Store, StoreOptions};

const ENTRIES: usize = 1_000_000;
const PER_SUB_KEY: usize = 100;
/// Set when this binary runs the pinned measurement under `taskset`: the sample count.
const PINNED_ENV: &str = "NEARCACHE_EXPIRY_PINNED_CHILD";
const PINNED_ENTRIES: usize = 100_000;

fn main() {
    if let Some(samples) = std::env::var_os(PINNED_ENV) {
        pinned_child(samples.to_string_lossy().parse().expect("a sample count"));
        return;
    }
    let mut report = Report::new("expiry_churn");
    churn(&mut report);
    pinned(&mut report);
}

// ---- row 9: readers during expiry churn ----------------------------------------------------

fn sub_key(i: usize) -> String {
    format!("s{}", i / PER_SUB_KEY)
}

/// What the reader measured over one or more phases.
struct Reads {
    histogram: hdrhistogram::Histogram<u64>,
    reads: usize,
    elapsed: Duration,
}

impl Reads {
    fn new() -> Self {
        Reads {
            histogram: common::histogram(),
            reads: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn add(&mut self, other: Reads) {
        self.histogram.add(&other.histogram).expect("same bounds");
        self.reads += other.reads;
        self.elapsed += other.elapsed;
    }

    fn p99(&self) -> f64 {
        self.histogram.value_at_quantile(0.99) as f64
    }

    fn rate(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64()
    }
}

/// Reads entries of the first half for `length` while `expire(n)` runs once per
/// millisecond on this thread (`None`: idle); `n` counts on from `*next`.
fn phase(
    store: &Store,
    keys: &[Key],
    order: &[u32],
    length: Duration,
    mut expire: Option<(&mut dyn FnMut(usize), &mut usize)>,
) -> Reads {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut measured = Reads::new();
            let mask = order.len() - 1;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[order[measured.reads & mask] as usize];
                let t = Instant::now();
                let hit = store.get::<Payload>(key);
                common::record(&mut measured.histogram, t.elapsed());
                assert!(matches!(hit, Ok(Some(_))), "every read is a hit");
                let _ = black_box(hit);
                measured.reads += 1;
            }
            measured.elapsed = start.elapsed();
            measured
        });
        let start = Instant::now();
        while start.elapsed() < length {
            if let Some((expire, next)) = expire.as_mut() {
                expire(**next);
                **next += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("the reader")
    })
}

/// Alternates idle and churning phases (`ROUNDS` of each, interleaved so that the machine's
/// load, which drifts on a shared VM, weighs on both alike); returns (idle, churning).
fn interleaved(
    store: &Store,
    keys: &[Key],
    order: &[u32],
    expire: &mut dyn FnMut(usize),
) -> (Reads, Reads) {
    let rounds = pick(6, 2);
    let length = pick(Duration::from_millis(500), Duration::from_millis(300));
    let (mut idle, mut churning) = (Reads::new(), Reads::new());
    let mut next = 0;
    for _ in 0..rounds {
        idle.add(phase(store, keys, order, length, None));
        churning.add(phase(
            store,
            keys,
            order,
            length,
            Some((&mut *expire, &mut next)),
        ));
    }
    (idle, churning)
}

fn churn(report: &mut Report) {
    let keys = common::keys(ENTRIES);
    let store = Store::new(StoreOptions {
        max_capacity: 2 * ENTRIES as u64,
        ..StoreOptions::default()
    })
    .expect("valid options");
    for (i, key) in keys.iter().enumerate() {
        store.set_with(key.clone(), VALUE, |entry| {
            entry.region_key::<Catalog>(&sub_key(i));
        });
    }
    assert_eq!(store.len(), ENTRIES);
    // The reader reads the first half; expiries of used sub-keys take the second half.
    let order = common::uniform_indexes(ENTRIES / 2, 1 << 20, 7);

    let unused = interleaved(&store, &keys, &order, &mut |n| {
        store.expire_region_key::<Catalog>(&format!("unused-{n}"));
    });
    let first_used = ENTRIES / 2 / PER_SUB_KEY;
    let passes = store.purge_progress().passes;
    let used = interleaved(&store, &keys, &order, &mut |n| {
        let sub = first_used + n % (ENTRIES / 2 / PER_SUB_KEY);
        store.expire_region_key::<Catalog>(&format!("s{sub}"));
    });
    eprintln!(
        "used sub-keys: {} purge passes, {} entries left of {ENTRIES}",
        store.purge_progress().passes - passes,
        store.len()
    );
    for (what, (idle, measured)) in [("unused sub-keys", &unused), ("used sub-keys", &used)] {
        report.push(Row::vs(
            "9",
            format!("readers during expiry churn (1M entries, 1 expiry/ms of {what}): get p99"),
            Unit::Nanos,
            measured.p99(),
            "same run, no expiries",
            idle.p99(),
            Goal::RatioAtMost(5.0),
        ));
        report.push(Row::vs(
            "9",
            format!("readers during expiry churn (1M entries, 1 expiry/ms of {what}): reads/s"),
            Unit::PerSec,
            measured.rate(),
            "same run, no expiries",
            idle.rate(),
            Goal::RatioAtLeast(0.8),
        ));
    }
}

// ---- row 5: expire_region on one CPU ---------------------------------------------------------

/// Populates a region of 100k entries `samples` times and times `expire_region` on it;
/// returns the median in nanoseconds.
fn expire_region_calls(samples: usize) -> f64 {
    let keys = common::keys(PINNED_ENTRIES);
    let mut times = Vec::new();
    for _ in 0..samples {
        let store = populated(&keys);
        let start = Instant::now();
        store.expire_region::<Catalog>();
        times.push(start.elapsed().as_nanos() as f64);
        let requested = store.purge_progress().requested;
        assert!(store.wait_for_purge(|p| p.served >= requested, Duration::from_secs(60)));
        assert_eq!(store.len(), 0, "the purger removed the region");
    }
    median(times)
}

fn pinned_child(samples: usize) {
    println!("{}", expire_region_calls(samples));
}

fn pinned(report: &mut Report) {
    let samples = pick(21, 5);
    let exe = std::env::current_exe().expect("this binary's path");
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&exe)
        .env(PINNED_ENV, samples.to_string())
        .output()
        .expect("taskset (util-linux) on PATH");
    assert!(out.status.success(), "the pinned run failed: {out:?}");
    let pinned: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .expect("the pinned run's median");
    let free = expire_region_calls(samples);
    report.push(Row::vs(
        "5",
        "expire_region of 100k entries pinned to one CPU (taskset -c 0): the call (median)",
        Unit::Nanos,
        pinned,
        "same call, both cores",
        free,
        Goal::AtMost(100_000.0),
    ));
}
