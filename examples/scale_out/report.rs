//! The numbers of a run: one [`InstanceReport`] per instance (sent as one JSON line by the
//! instances of a `--processes` run), and the [`Summary`] table printed at the end.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nearcache::CacheStats;
use serde::{Deserialize, Serialize};

use crate::clock::Micros;
use crate::faults::FaultRecord;
use crate::timeline::{Tally, Timeline};
use crate::workload::Counters;

/// What one instance did in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceReport {
    /// Its number (0 is the writer).
    pub(crate) index: usize,
    /// Whether it ran the writer.
    pub(crate) writer: bool,
    /// Its running totals at the end (inline in its JSON).
    #[serde(flatten)]
    pub(crate) totals: Tally,
    /// Reads answered from the cache.
    pub(crate) hits: u64,
    /// Reads that missed (and loaded, or joined a load).
    pub(crate) misses: u64,
    /// Factory runs.
    pub(crate) loads: u64,
    /// Misses that joined another caller's load instead of querying the database.
    pub(crate) collapsed: u64,
    /// Loaded values not stored because an invalidation overlapped the load.
    pub(crate) inserts_rejected_stale: u64,
    /// Invalidations it published.
    pub(crate) invalidations_sent: u64,
    /// Messages whose lag was measured.
    pub(crate) lag_samples: u64,
    /// Median propagation lag (publish on the origin → applied here), µs.
    pub(crate) lag_p50: Micros,
    /// 99th percentile propagation lag, µs.
    pub(crate) lag_p99: Micros,
    /// Largest propagation lag, µs.
    pub(crate) lag_max: Micros,
    /// The longest a stale read came after the write it missed, µs.
    pub(crate) worst_stale: Micros,
    /// Reads the check could not judge (should be none).
    pub(crate) unchecked_reads: u64,
    /// Failed loads whose callers got the expired value instead (fail-safe).
    #[serde(default)]
    pub(crate) fail_safe: u64,
    /// Times its outbox overflowed (and dropped its backlog).
    pub(crate) outbox_overflows: u64,
    /// The most invalidations waiting in its outbox at once.
    pub(crate) outbox_peak: u64,
}

impl InstanceReport {
    /// Gathers an instance's numbers from its counters and its cache's stats.
    pub(crate) fn gather(
        index: usize,
        writer: bool,
        counters: &Counters,
        stats: &CacheStats,
        unchecked_reads: u64,
    ) -> InstanceReport {
        let store = &stats.store;
        let mut report = InstanceReport {
            index,
            writer,
            totals: Tally::of(counters, stats),
            hits: store.hits,
            misses: store.misses,
            loads: store.loads,
            collapsed: store.misses.saturating_sub(store.loads),
            inserts_rejected_stale: store.inserts_rejected_stale,
            worst_stale: counters.worst_stale.load(Ordering::Relaxed),
            unchecked_reads,
            fail_safe: store.fail_safe_activations,
            outbox_peak: counters.outbox_peak.load(Ordering::Relaxed),
            ..InstanceReport::default()
        };
        if let Some(propagation) = &stats.propagation {
            let lag = &propagation.propagation_lag;
            report.invalidations_sent = propagation.invalidations_sent;
            report.lag_samples = lag.samples;
            report.lag_p50 = micros(lag.p50);
            report.lag_p99 = micros(lag.p99);
            report.lag_max = micros(lag.max);
            report.outbox_overflows = propagation.outbox_overflows;
        }
        report
    }
}

fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A whole run: what was run, and every instance's report.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// One line saying what ran (instances, backplane, duration, workload).
    pub(crate) title: String,
    /// The stale-read bound.
    pub(crate) bound: Duration,
    /// How long the readers ran.
    pub(crate) elapsed: Duration,
    /// One report per instance, by index.
    pub(crate) instances: Vec<InstanceReport>,
    /// Every instance's totals over time.
    pub(crate) timeline: Timeline,
    /// The faults the demo injected (`--faults`).
    pub(crate) faults: Vec<FaultRecord>,
}

impl Summary {
    /// Stale reads across instances.
    pub(crate) fn stale_reads(&self) -> u64 {
        self.instances.iter().map(|i| i.totals.stale_reads).sum()
    }

    /// Reads nobody could judge across instances.
    pub(crate) fn unchecked_reads(&self) -> u64 {
        self.instances.iter().map(|i| i.unchecked_reads).sum()
    }

    /// Whether the run proved what it should: no stale read, every read judged.
    pub(crate) fn passed(&self) -> bool {
        self.stale_reads() == 0 && self.unchecked_reads() == 0
    }

    fn total(&self, field: impl Fn(&InstanceReport) -> u64) -> u64 {
        self.instances.iter().map(field).sum()
    }

    /// The table and the verdict, as printed at the end of a run.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(
            out,
            "stale-read bound: {} (a read is stale if it returned a version older than one written more than this before it started)\n",
            human_duration(self.bound)
        );
        let mut table = Table::new(&self.instances);
        let requests = self.total(|i| i.totals.requests);
        let queries = self.total(|i| i.totals.db_queries);
        let hits = self.total(|i| i.hits);
        let reads = hits + self.total(|i| i.misses);
        table.row(
            "requests",
            self,
            |i| count(i.totals.requests),
            count(requests),
        );
        table.row(
            "database queries, with nearcache",
            self,
            |i| count(i.totals.db_queries),
            count(queries),
        );
        table.row(
            "database queries, without a cache",
            self,
            |i| count(i.totals.requests),
            count(requests),
        );
        table.row(
            "hit ratio",
            self,
            |i| ratio(i.hits, i.hits + i.misses),
            ratio(hits, reads),
        );
        table.summed(
            self,
            &[
                ("loads collapsed by single flight", |i| i.collapsed, count),
                (
                    "loads not stored (invalidated mid-load)",
                    |i| i.inserts_rejected_stale,
                    count,
                ),
                ("writes", |i| i.totals.writes, count),
                ("invalidations sent", |i| i.invalidations_sent, count),
                (
                    "invalidations received",
                    |i| i.totals.invalidations_received,
                    count,
                ),
            ],
        );
        let worst = |f: fn(&InstanceReport) -> Micros| {
            self.instances
                .iter()
                .filter(|i| i.lag_samples > 0)
                .map(f)
                .max()
                .map_or_else(|| "-".to_owned(), lag)
        };
        // An instance that measured no propagation shows "-", and does not count as the worst.
        let measured = |f: fn(&InstanceReport) -> Micros| {
            move |i: &InstanceReport| {
                if i.lag_samples > 0 {
                    lag(f(i))
                } else {
                    "-".into()
                }
            }
        };
        table.row(
            "propagation latency p50",
            self,
            measured(|i| i.lag_p50),
            worst(|i| i.lag_p50),
        );
        table.row(
            "propagation latency p99",
            self,
            measured(|i| i.lag_p99),
            worst(|i| i.lag_p99),
        );
        table.summed(
            self,
            &[
                ("loss clears", |i| i.totals.loss_clears, count),
                (
                    "loss repairs (from the replay log)",
                    |i| i.totals.loss_repairs,
                    count,
                ),
                (
                    "keys replayed by repairs",
                    |i| i.totals.keys_replayed,
                    count,
                ),
                (
                    "time disconnected from Redis",
                    |i| i.totals.disconnected_us,
                    lag,
                ),
                ("time reads bypassed the cache", |i| i.totals.bypass_us, lag),
                (
                    "failed publishes (retried)",
                    |i| i.totals.publish_failures,
                    count,
                ),
            ],
        );
        table.row(
            "invalidations queued (most at once)",
            self,
            |i| count(i.outbox_peak),
            count(
                self.instances
                    .iter()
                    .map(|i| i.outbox_peak)
                    .max()
                    .unwrap_or(0),
            ),
        );
        table.summed(
            self,
            &[
                ("outbox overflows", |i| i.outbox_overflows, count),
                (
                    "database errors (tried again)",
                    |i| i.totals.db_errors,
                    count,
                ),
                ("loads served by fail-safe", |i| i.fail_safe, count),
            ],
        );
        table.row(
            "stale reads",
            self,
            |i| count(i.totals.stale_reads),
            count(self.stale_reads()),
        );
        out.push_str(&table.finish());
        out.push_str("  (latency and queue totals are the worst instance's; without a cache every request is a query)\n\n");
        out.push_str(&crate::faults::render(&crate::faults::costs(
            &self.timeline,
            &self.faults,
        )));
        if !self.faults.is_empty() {
            out.push('\n');
        }

        if queries > 0 {
            let _ = writeln!(
                out,
                "The database answered {} queries instead of {}: {:.0}x fewer, {} requests/s in {}.",
                count(queries),
                count(requests),
                requests as f64 / queries as f64,
                count(per_second(requests, self.elapsed)),
                human_duration(self.elapsed),
            );
        }
        if self.stale_reads() > 0 {
            let worst = self
                .instances
                .iter()
                .map(|i| i.worst_stale)
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "FAILED: {} stale reads; the worst came {} after the write it missed (bound {}).",
                count(self.stale_reads()),
                lag(worst),
                human_duration(self.bound)
            );
        } else if self.unchecked_reads() > 0 {
            let _ = writeln!(
                out,
                "FAILED: {} reads could not be checked against the database's write log.",
                count(self.unchecked_reads())
            );
        } else {
            let _ = writeln!(
                out,
                "OK: 0 stale reads. After every write, each instance stopped serving the old version within {}.",
                human_duration(self.bound)
            );
        }
        out
    }
}

/// A row of figures that add up across instances: its label, the figure, how it is shown.
type Summed = (&'static str, fn(&InstanceReport) -> u64, fn(u64) -> String);

/// A right-aligned table: one label column, one column per instance, a total.
struct Table {
    header: Vec<String>,
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    fn new(instances: &[InstanceReport]) -> Table {
        let mut header: Vec<String> = instances
            .iter()
            .map(|i| {
                if i.writer {
                    format!("#{} (writer)", i.index)
                } else {
                    format!("#{}", i.index)
                }
            })
            .collect();
        header.push("total".to_owned());
        Table {
            header,
            rows: Vec::new(),
        }
    }

    fn row(
        &mut self,
        label: &str,
        summary: &Summary,
        cell: impl Fn(&InstanceReport) -> String,
        total: String,
    ) {
        let mut cells: Vec<String> = summary.instances.iter().map(cell).collect();
        cells.push(total);
        self.rows.push((label.to_owned(), cells));
    }

    /// One row per `(label, field, show)`: `field` of each instance and its sum over them,
    /// each shown by `show`.
    fn summed(&mut self, summary: &Summary, rows: &[Summed]) {
        for &(label, field, show) in rows {
            self.row(
                label,
                summary,
                |i| show(field(i)),
                show(summary.total(field)),
            );
        }
    }

    fn finish(&self) -> String {
        let label_width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for (_, cells) in &self.rows {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, label: &str, cells: &[String]| {
            let _ = write!(out, "  {label:<label_width$}");
            for (cell, width) in cells.iter().zip(&widths) {
                let _ = write!(out, "  {cell:>width$}");
            }
            out.push('\n');
        };
        line(&mut out, "", &self.header);
        for (label, cells) in &self.rows {
            line(&mut out, label, cells);
        }
        out
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.2}%", part as f64 * 100.0 / whole as f64)
}

fn per_second(n: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        (n as f64 / seconds) as u64
    } else {
        0
    }
}

/// µs → `850 µs`, `1.25 ms`, `2.50 s`.
pub(crate) fn lag(micros: Micros) -> String {
    match micros {
        0..1_000 => format!("{micros} µs"),
        1_000..1_000_000 => format!("{:.2} ms", micros as f64 / 1e3),
        _ => format!("{:.2} s", micros as f64 / 1e6),
    }
}

/// A duration as the flags take it: `2ms`, `1.5s`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let micros = micros(duration);
    if micros.is_multiple_of(1_000_000) {
        format!("{}s", micros / 1_000_000)
    } else if micros >= 1_000_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if micros.is_multiple_of(1_000) {
        format!("{}ms", micros / 1_000)
    } else {
        format!("{micros}us")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn instance(index: usize, stale_reads: u64) -> InstanceReport {
        InstanceReport {
            index,
            writer: index == 0,
            totals: Tally {
                requests: 1_000_000,
                db_queries: 1_000,
                writes: if index == 0 { 50 } else { 0 },
                invalidations_received: if index == 0 { 0 } else { 100 },
                stale_reads,
                ..Tally::default()
            },
            hits: 999_000,
            misses: 1_000,
            loads: 990,
            collapsed: 10,
            invalidations_sent: if index == 0 { 100 } else { 0 },
            lag_samples: if index == 0 { 0 } else { 50 },
            lag_p50: 120 + index as u64,
            lag_p99: 1_500,
            worst_stale: stale_reads * 2_000_000,
            ..InstanceReport::default()
        }
    }

    fn summary(stale: u64) -> Summary {
        Summary {
            title: "demo".into(),
            bound: Duration::from_secs(1),
            elapsed: Duration::from_secs(10),
            instances: vec![instance(0, 0), instance(1, stale), instance(2, 0)],
            timeline: Timeline::default(),
            faults: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_every_number_the_issue_asks_for() {
        let text = summary(0).render();
        for expected in [
            "requests",
            "3,000,000",
            "database queries, with nearcache",
            "3,000",
            "database queries, without a cache",
            "hit ratio",
            "99.90%",
            "loads collapsed by single flight",
            "invalidations sent",
            "invalidations received",
            "200",
            "propagation latency p50",
            "122 µs",
            "1.50 ms",
            "loss clears",
            "loss repairs (from the replay log)",
            "keys replayed by repairs",
            "database errors (tried again)",
            "stale reads",
            "#0 (writer)",
            "1000x fewer",
            "OK: 0 stale reads",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(summary(0).passed());
    }

    #[test]
    fn stale_reads_fail_the_run() {
        let failed = summary(3);
        assert!(!failed.passed());
        let text = failed.render();
        assert!(text.contains("FAILED: 3 stale reads"), "{text}");
        assert!(text.contains("6.00 s after"), "{text}");
        let mut unchecked = summary(0);
        unchecked.instances[2].unchecked_reads = 1;
        assert!(!unchecked.passed());
        assert!(unchecked.render().contains("could not be checked"));
    }

    #[test]
    fn reports_travel_as_json() {
        let report = instance(1, 2);
        let line = serde_json::to_string(&report).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<InstanceReport>(&line).unwrap(),
            report
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(lag(850), "850 µs");
        assert_eq!(lag(1_250), "1.25 ms");
        assert_eq!(lag(2_500_000), "2.50 s");
        assert_eq!(human_duration(Duration::from_secs(10)), "10s");
        assert_eq!(human_duration(Duration::from_millis(2)), "2ms");
        assert_eq!(human_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(human_duration(Duration::from_micros(250)), "250us");
    }
}
