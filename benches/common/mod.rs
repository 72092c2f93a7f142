//! What the bench binaries share: quick or full runs, the keys and values every row uses, and
//! the summary rows each binary writes for `cargo xtask bench` to print as one table.
//!
//! Each binary writes `<out>/<bench>.tsv` (one preformatted table line per row; the xtask
//! reads it) and `<out>/<bench>.json` (the raw numbers), where `<out>` is
//! `$NEARCACHE_BENCH_OUT`, else `target/nearcache-bench`. Files are rewritten after every row,
//! so a bench that fails half-way still leaves the rows it measured.
#![allow(dead_code)] // every bench binary uses its own part of this module

pub(crate) mod hit;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use nearcache::{Key, cache_key, region};
use nearcache_store::{Store, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The value every row stores: 32 bytes, held as `Arc<Payload>` by every cache.
pub(crate) type Payload = [u64; 4];

/// The value stored.
pub(crate) const VALUE: Payload = [1, 2, 3, 4];

region!(pub(crate) Catalog = "catalog");

/// A store holding `keys` (with room for twice as many), each set to [`VALUE`] in region
/// [`Catalog`]: what the region expiry rows expire.
pub(crate) fn populated(keys: &[Key]) -> Store {
    let store = Store::new(StoreOptions {
        max_capacity: 2 * keys.len() as u64,
        ..StoreOptions::default()
    })
    .expect("valid options");
    for key in keys {
        store.set_with(key.clone(), VALUE, |entry| {
            entry.region::<Catalog>();
        });
    }
    assert_eq!(
        store.len(),
        keys.len(),
        "every entry is held before the expiry"
    );
    store
}

/// The median of `samples` (the upper one of an even count).
pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The type part of the benchmark keys (`Product:get-42`).
pub(crate) struct Product;

/// Whether this is a quick run (`cargo xtask bench --quick`, `NEARCACHE_BENCH_QUICK=1`):
/// short measurements and fewer samples, for a sanity check of the whole table.
pub(crate) fn quick() -> bool {
    std::env::var_os("NEARCACHE_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` normally, `quick` in a quick run.
pub(crate) fn pick<T>(full: T, quick_value: T) -> T {
    if quick() { quick_value } else { full }
}

/// Where rows (and criterion's own files) go.
pub(crate) fn out_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NEARCACHE_BENCH_OUT") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("nearcache-bench")
}

/// `n` distinct keys `Product:get-0` … built the way applications build them.
pub(crate) fn keys(n: usize) -> Vec<Key> {
    (0..n).map(|i| cache_key!(Product, "get", &i)).collect()
}

/// `len` key indexes in `0..n`, uniformly at random (fixed seed).
pub(crate) fn uniform_indexes(n: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(0..n) as u32).collect()
}

/// `len` key indexes in `0..n`, Zipf-distributed with exponent `s` (index 0 the hottest;
/// fixed seed).
pub(crate) fn zipf_indexes(n: usize, len: usize, s: f64, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(n as f64, s).expect("valid Zipf parameters");
    (0..len)
        .map(|_| (zipf.sample(&mut rng) as usize - 1).min(n - 1) as u32)
        .collect()
}

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub(crate) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// Records `elapsed` in `histogram` (nanoseconds).
pub(crate) fn record(histogram: &mut hdrhistogram::Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.max(1));
}

/// What a measured figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A duration in nanoseconds (lower is better).
    Nanos,
    /// Operations or keys per second (higher is better).
    PerSec,
    /// Bytes (lower is better).
    Bytes,
    /// A plain count.
    Count,
    /// A fraction shown as a percentage (higher is better).
    Fraction,
    /// A ratio such as a scaling factor (higher is better).
    Factor,
}

impl Unit {
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::PerSec | Unit::Fraction | Unit::Factor)
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::PerSec => "per_s",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
            Unit::Fraction => "fraction",
            Unit::Factor => "factor",
        }
    }

    /// `value` for people: `12.3 ns`, `45.6 µs`, `1.23 M/s`, `97 B`, `93.1 %`.
    pub(crate) fn show(self, value: f64) -> String {
        match self {
            Unit::Nanos => {
                if value < 1e3 {
                    format!("{value:.1} ns")
                } else if value < 1e6 {
                    format!("{:.1} µs", value / 1e3)
                } else if value < 1e9 {
                    format!("{:.2} ms", value / 1e6)
                } else {
                    format!("{:.2} s", value / 1e9)
                }
            }
            Unit::PerSec => {
                if value >= 1e6 {
                    format!("{:.2} M/s", value / 1e6)
                } else if value >= 1e3 {
                    format!("{:.1} k/s", value / 1e3)
                } else {
                    format!("{value:.0} /s")
                }
            }
            Unit::Bytes => format!("{value:.0} B"),
            Unit::Count => format!("{value:.0}"),
            Unit::Fraction => format!("{:.1} %", value * 100.0),
            Unit::Factor => format!("{value:.2}×"),
        }
    }
}

/// What a row's nearcache figure is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Goal {
    /// nearcache / baseline at most this (for lower-is-better units).
    RatioAtMost(f64),
    /// nearcache / baseline at least this (for higher-is-better units).
    RatioAtLeast(f64),
    /// nearcache's figure at most this.
    AtMost(f64),
    /// Better than the baseline: a lower time, a higher throughput.
    Better,
    /// nearcache's figure at least this.
    AtLeast(f64),
    /// nearcache's figure exactly this.
    Exactly(f64),
    /// No target: shown for information.
    Info,
}

/// One line of the summary table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The row's number in the targets table of docs/benchmarks.md ("1" … "8").
    pub(crate) row: &'static str,
    /// What is measured, in a few words.
    pub(crate) what: String,
    /// nearcache's figure.
    pub(crate) ours: f64,
    /// Its unit (the baseline's too).
    pub(crate) unit: Unit,
    /// The baseline's name and figure, if the row has one.
    pub(crate) baseline: Option<(String, f64)>,
    /// The target.
    pub(crate) goal: Goal,
}

impl Row {
    /// A row comparing nearcache's `ours` with `baseline`'s `theirs`.
    pub(crate) fn vs(
        row: &'static str,
        what: impl Into<String>,
        unit: Unit,
        ours: f64,
        baseline: impl Into<String>,
        theirs: f64,
        goal: Goal,
    ) -> Self {
        Row {
            baseline: Some((baseline.into(), theirs)),
            ..Row::alone(row, what, unit, ours, goal)
        }
    }

    /// A row without a baseline.
    pub(crate) fn alone(
        row: &'static str,
        what: impl Into<String>,
        unit: Unit,
        ours: f64,
        goal: Goal,
    ) -> Self {
        Row {
            row,
            what: what.into(),
            ours,
            unit,
            baseline: None,
            goal,
        }
    }

    /// nearcache / baseline.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let (_, theirs) = self.baseline.as_ref()?;
        (*theirs > 0.0).then(|| self.ours / theirs)
    }

    /// Whether the target is met (`None`: no target, or nothing to compare).
    pub(crate) fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::RatioAtMost(limit) => self.ratio().map(|r| r <= limit),
            Goal::RatioAtLeast(floor) => self.ratio().map(|r| r >= floor),
            Goal::AtMost(ceiling) => Some(self.ours <= ceiling),
            Goal::Better => self.ratio().map(|r| {
                if self.unit.higher_is_better() {
                    r > 1.0
                } else {
                    r < 1.0
                }
            }),
            Goal::AtLeast(floor) => Some(self.ours >= floor),
            Goal::Exactly(expected) => Some(self.ours == expected),
            Goal::Info => None,
        }
    }

    fn target_text(&self) -> String {
        match self.goal {
            Goal::RatioAtMost(limit) => format!("≤ {limit}×"),
            Goal::RatioAtLeast(floor) => format!("≥ {floor}×"),
            Goal::AtMost(ceiling) => format!("≤ {}", self.unit.show(ceiling)),
            Goal::Better if self.unit.higher_is_better() => "> 1× (more)".to_owned(),
            Goal::Better => "< 1× (faster)".to_owned(),
            Goal::AtLeast(floor) => format!("≥ {}", self.unit.show(floor)),
            Goal::Exactly(expected) => format!("= {}", self.unit.show(expected)),
            Goal::Info => "—".to_owned(),
        }
    }

    /// The table fields: row, what, nearcache, baseline, ratio, target, verdict.
    fn fields(&self) -> [String; 7] {
        let baseline = match &self.baseline {
            Some((name, theirs)) => format!("{name}: {}", self.unit.show(*theirs)),
            None => "—".to_owned(),
        };
        let ratio = self.ratio().map_or_else(|| "—".to_owned(), show_ratio);
        let verdict = match self.met() {
            Some(true) => "✓",
            Some(false) => "✗",
            None => "",
        };
        [
            self.row.to_owned(),
            self.what.clone(),
            self.unit.show(self.ours),
            baseline,
            ratio,
            self.target_text(),
            verdict.to_owned(),
        ]
        .map(|field| field.replace(['\t', '\n'], " "))
    }
}

/// `2.19×`; below 0.01, `1/1042×` (so a tiny ratio does not read as zero).
fn show_ratio(ratio: f64) -> String {
    if ratio > 0.0 && ratio < 0.01 {
        format!("1/{:.0}×", 1.0 / ratio)
    } else {
        format!("{ratio:.2}×")
    }
}

/// The rows of one bench binary, written out after each push.
#[derive(Debug)]
pub(crate) struct Report {
    bench: &'static str,
    rows: Vec<Row>,
}

impl Report {
    /// An empty report for bench `bench`; removes the files of an earlier run.
    pub(crate) fn new(bench: &'static str) -> Self {
        let report = Report {
            bench,
            rows: Vec::new(),
        };
        let dir = out_dir();
        let _ = std::fs::remove_file(dir.join(format!("{bench}.tsv")));
        let _ = std::fs::remove_file(dir.join(format!("{bench}.json")));
        report
    }

    /// Adds `row`, prints it, and rewrites this bench's files.
    pub(crate) fn push(&mut self, row: Row) {
        let [n, what, ours, baseline, ratio, target, verdict] = row.fields();
        println!(
            "row {n}: {what}: nearcache {ours} | {baseline} | {ratio} | target {target} {verdict}"
        );
        self.rows.push(row);
        self.write();
    }

    fn write(&self) {
        let dir = out_dir();
        if let Err(error) = std::fs::create_dir_all(&dir) {
            eprintln!("cannot create {}: {error}", dir.display());
            return;
        }
        let mut tsv = String::new();
        for row in &self.rows {
            let _ = writeln!(tsv, "{}", row.fields().join("\t"));
        }
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "row": row.row,
                    "what": row.what,
                    "unit": row.unit.name(),
                    "nearcache": row.ours,
                    "baseline": row.baseline.as_ref().map(|(name, _)| name),
                    "baseline_value": row.baseline.as_ref().map(|(_, value)| value),
                    "ratio": row.ratio(),
                    "target": row.target_text(),
                    "met": row.met(),
                })
            })
            .collect();
        let json = serde_json::json!({
            "bench": self.bench,
            "quick": quick(),
            "rows": rows,
        });
        for (name, text) in [
            (format!("{}.tsv", self.bench), tsv),
            (
                format!("{}.json", self.bench),
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            ),
        ] {
            let path = dir.join(name);
            if let Err(error) = std::fs::write(&path, text) {
                eprintln!("cannot write {}: {error}", path.display());
            }
        }
    }
}
