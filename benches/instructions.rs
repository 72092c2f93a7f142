//! Row 1 counted in instructions instead of nanoseconds: the hit paths of nearcache and a raw
//! `quick_cache` hit with the same `Key`, each run under callgrind (valgrind), so the figures
//! do not drift with the machine's load the way wall-clock medians do on a shared VM.
//!
//! Run by `cargo xtask bench --instructions` (which installs valgrind when missing), or alone
//! with `cargo bench -p nearcache-bench --bench instructions`. The binary re-runs itself under
//! `valgrind --tool=callgrind` once per operation and iteration count: the same set-up (10,000
//! cached keys, the uniform order of row 1) with `SHORT` and with `LONG` operations. The
//! difference of the two totals divided by `LONG - SHORT` is the cost of one operation,
//! set-up and process start-up cancelled out; the median of `REPEATS` such pairs is reported.
//! Callgrind counts only inside the measured loop ([`run`], named by `--toggle-collect`):
//! the set-up outside it is not the same in every process — quanta calibrates its clock in a
//! loop bounded by wall time, which under callgrind ran up to 6 instructions per operation
//! longer in one process than in the next — so it is left out rather than subtracted.
//! Each run's callgrind profile is kept in `<out>/callgrind/<operation>.<iterations>.<run>.out`
//! for `callgrind_annotate`.

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::hit::{BASELINE, HIT_ROWS, ready};
use common::{Payload, Report, Row, Unit, VALUE};
use nearcache::{Cache, CacheOptions, EntryOptions, Key, StoreOptions};

/// Keys held (as row 1).
const KEYS: usize = 10_000;
/// Operations of the short and the long run.
const SHORT: u64 = 200_000;
const LONG: u64 = 1_200_000;
/// Pairs of runs per operation; the median is reported. Keys hash with a per-process random
/// seed (as in production), so each process lays its tables out differently; with only the
/// measured loop counted, the runs agree within 0.1 instructions per operation.
const REPEATS: usize = 3;

/// Set when this binary runs one measured loop under callgrind: `<operation> <iterations>`.
const CHILD_ENV: &str = "NEARCACHE_INSTRUCTIONS_CHILD";

fn main() {
    if let Some(spec) = std::env::var_os(CHILD_ENV) {
        let spec = spec.to_string_lossy().into_owned();
        let (operation, iterations) = spec.split_once(' ').expect("`<operation> <iterations>`");
        child(operation, iterations.parse().expect("an iteration count"));
        return;
    }
    parent();
}

// ---- the parent: runs the children under callgrind and reports ----------------------------

fn parent() {
    let out = common::out_dir();
    let profiles = out.join("callgrind");
    std::fs::create_dir_all(&profiles).expect("the output directory");
    let mut report = Report::new("instructions");
    let baseline = per_operation(&profiles, BASELINE);
    for row in HIT_ROWS {
        let ours = per_operation(&profiles, row.operation);
        report.push(Row::vs(
            "1i",
            format!("instructions per {}", row.what),
            Unit::Count,
            ours,
            "quick_cache (Key) get",
            baseline,
            row.goal,
        ));
    }
}

/// Instructions per `operation`: the median of `REPEATS` pairs of a short and a long run.
fn per_operation(profiles: &Path, operation: &str) -> f64 {
    let mut runs: Vec<f64> = (0..REPEATS)
        .map(|run| {
            let short = callgrind_total(profiles, operation, SHORT, run);
            let long = callgrind_total(profiles, operation, LONG, run);
            long.saturating_sub(short) as f64 / (LONG - SHORT) as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    let each = runs[runs.len() / 2];
    eprintln!("{operation}: {each:.1} instructions per operation (runs: {runs:.1?})");
    each
}

/// Runs `operation` `iterations` times under callgrind; returns the instructions it counted.
fn callgrind_total(profiles: &Path, operation: &str, iterations: u64, run: usize) -> u64 {
    let profile = profiles.join(format!("{operation}.{iterations}.{run}.out"));
    let exe = std::env::current_exe().expect("this binary's path");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg("--quiet")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={MEASURED}"))
        .arg(&exe)
        .env(CHILD_ENV, format!("{operation} {iterations}"))
        .status()
        .expect("valgrind on PATH (`cargo xtask bench --instructions` installs it)");
    assert!(
        status.success(),
        "callgrind run of {operation} failed: {status}"
    );
    let text = std::fs::read_to_string(&profile).expect("callgrind's output file");
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|total| total.split_whitespace().next()?.parse().ok())
        .expect("a `summary:` line in callgrind's output")
}

// ---- the child: one measured loop ---------------------------------------------------------

/// The measured loop, as callgrind names it: collection is on only inside it.
const MEASURED: &str = "instructions::run*";

/// `lookup(i)` for `iterations` indexes of row 1's uniform order. Never inlined: callgrind
/// counts only inside this function (`MEASURED`).
#[inline(never)]
fn run<R>(order: &[u32], iterations: u64, lookup: impl Fn(usize) -> R) {
    let mask = order.len() - 1;
    for n in 0..iterations as usize {
        black_box(lookup(order[n & mask] as usize));
    }
}

fn child(operation: &str, iterations: u64) {
    let keys = common::keys(KEYS);
    let order = common::uniform_indexes(KEYS, 1 << 16, 1);
    let capacity = 2 * KEYS as u64;
    if operation == BASELINE {
        let quick: quick_cache::sync::Cache<Key, Arc<Payload>> =
            quick_cache::sync::Cache::new(capacity as usize);
        for key in &keys {
            quick.insert(key.clone(), Arc::new(VALUE));
        }
        run(&order, iterations, |i| quick.get(&keys[i]));
        return;
    }
    let cache = Cache::new(CacheOptions {
        store: StoreOptions {
            max_capacity: capacity,
            time_to_idle: (operation == "nearcache_get_sliding")
                .then_some(Duration::from_secs(600)),
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    })
    .expect("valid options");
    for key in &keys {
        cache.set(key, VALUE);
    }
    for key in &keys {
        assert!(
            cache.get::<Payload>(key).unwrap().is_some(),
            "every read is a hit"
        );
    }
    match operation {
        "nearcache_get" | "nearcache_get_sliding" => {
            run(&order, iterations, |i| cache.get::<Payload>(&keys[i]));
        }
        "nearcache_get_or_create_sync" => {
            let factory = |_: &mut EntryOptions| Ok::<Payload, Infallible>(VALUE);
            run(&order, iterations, |i| {
                cache.get_or_create_sync(&keys[i], factory)
            });
        }
        "nearcache_get_or_create_async" => run(&order, iterations, |i| {
            ready(cache.get_or_create(&keys[i], async |_: &mut EntryOptions| {
                Ok::<Payload, Infallible>(VALUE)
            }))
        }),
        other => panic!("unknown operation `{other}`"),
    }
}
