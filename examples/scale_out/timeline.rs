//! The run over time: each instance's running totals ([`Tally`]), sampled a few times a
//! second ([`Timeline`]). The progress line shows the latest; the fault costs and the plot
//! are read off the whole of it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nearcache::CacheStats;
use serde::{Deserialize, Serialize};

use crate::workload::Counters;

/// How often the timeline is sampled (and instance processes send their totals).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One instance's running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// Reads served.
    pub(crate) requests: u64,
    /// Database queries made by reads.
    pub(crate) db_queries: u64,
    /// Writes.
    pub(crate) writes: u64,
    /// Stale reads.
    pub(crate) stale_reads: u64,
    /// Invalidations received from peers.
    pub(crate) invalidations_received: u64,
    /// Loss clears (all causes).
    pub(crate) loss_clears: u64,
    /// Losses repaired from the replay log.
    pub(crate) loss_repairs: u64,
    /// Invalidations read back from the replay log by repairs.
    pub(crate) keys_replayed: u64,
    /// Publish attempts that failed or timed out.
    pub(crate) publish_failures: u64,
    /// Database calls that failed and were tried again.
    pub(crate) db_errors: u64,
    /// Time disconnected from the backplane, µs.
    pub(crate) disconnected_us: u64,
    /// Time its reads bypassed the cache, µs.
    pub(crate) bypass_us: u64,
}

impl Tally {
    /// A snapshot of an instance's `counters` and its cache's `stats`.
    pub(crate) fn of(counters: &Counters, stats: &CacheStats) -> Tally {
        let propagation = stats.propagation.as_ref();
        Tally {
            requests: counters.requests.load(Ordering::Relaxed),
            db_queries: counters.db_queries.load(Ordering::Relaxed),
            writes: counters.writes.load(Ordering::Relaxed),
            stale_reads: counters.stale_reads.load(Ordering::Relaxed),
            invalidations_received: propagation.map_or(0, |p| p.invalidations_received),
            loss_clears: propagation.map_or(0, |p| p.loss_clears.total()),
            loss_repairs: propagation.map_or(0, |p| p.loss_repairs.repairs),
            keys_replayed: propagation.map_or(0, |p| p.loss_repairs.keys_replayed),
            publish_failures: propagation.map_or(0, |p| p.publish_failures),
            db_errors: counters.db_errors.load(Ordering::Relaxed),
            disconnected_us: counters.disconnected_us.load(Ordering::Relaxed),
            bypass_us: counters.bypass_us.load(Ordering::Relaxed),
        }
    }

    /// The sum of `tallies`.
    pub(crate) fn sum<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Tally {
        tallies.into_iter().fold(Tally::default(), |a, b| Tally {
            requests: a.requests + b.requests,
            db_queries: a.db_queries + b.db_queries,
            writes: a.writes + b.writes,
            stale_reads: a.stale_reads + b.stale_reads,
            invalidations_received: a.invalidations_received + b.invalidations_received,
            loss_clears: a.loss_clears + b.loss_clears,
            loss_repairs: a.loss_repairs + b.loss_repairs,
            keys_replayed: a.keys_replayed + b.keys_replayed,
            publish_failures: a.publish_failures + b.publish_failures,
            db_errors: a.db_errors + b.db_errors,
            disconnected_us: a.disconnected_us + b.disconnected_us,
            bypass_us: a.bypass_us + b.bypass_us,
        })
    }
}

/// Each instance's totals over time: `(seconds since the run started, totals)` in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Timeline {
    instances: Vec<Vec<(f64, Tally)>>,
}

impl Timeline {
    /// Adds every instance's totals at `at` seconds, by index.
    pub(crate) fn push(&mut self, at: f64, tallies: Vec<Tally>) {
        for (instance, tally) in tallies.into_iter().enumerate() {
            self.push_one(instance, at, tally);
        }
    }

    /// Adds `instance`'s totals at `at` seconds (after its earlier ones).
    pub(crate) fn push_one(&mut self, instance: usize, at: f64, tally: Tally) {
        if self.instances.len() <= instance {
            self.instances.resize_with(instance + 1, Vec::new);
        }
        self.instances[instance].push((at, tally));
    }

    /// When the last sample was taken.
    pub(crate) fn end(&self) -> Option<f64> {
        self.instances
            .iter()
            .filter_map(|samples| samples.last().map(|&(at, _)| at))
            .reduce(f64::max)
    }

    /// Instances in the samples.
    pub(crate) fn instances(&self) -> usize {
        self.instances.len()
    }

    /// `field` of `instance` at its last sample at or before `at` (0 before the first).
    fn value_at(&self, at: f64, instance: usize, field: fn(&Tally) -> u64) -> u64 {
        let Some(samples) = self.instances.get(instance) else {
            return 0;
        };
        let taken = samples.partition_point(|&(t, _)| t <= at);
        taken.checked_sub(1).map_or(0, |i| field(&samples[i].1))
    }

    /// Per instance, how much `field` grew from `from` to `to` seconds.
    pub(crate) fn deltas_between(&self, from: f64, to: f64, field: fn(&Tally) -> u64) -> Vec<u64> {
        (0..self.instances())
            .map(|i| {
                self.value_at(to, i, field)
                    .saturating_sub(self.value_at(from, i, field))
            })
            .collect()
    }

    /// How much `field` grew from `from` to `to` seconds, all instances together.
    pub(crate) fn total_between(&self, from: f64, to: f64, field: fn(&Tally) -> u64) -> u64 {
        self.deltas_between(from, to, field).iter().sum()
    }

    /// `(seconds, value)` of `field` of `instance` at each of its samples.
    pub(crate) fn values(&self, instance: usize, field: fn(&Tally) -> u64) -> Vec<(f64, f64)> {
        self.instances
            .get(instance)
            .map_or_else(Vec::new, |samples| {
                samples
                    .iter()
                    .map(|(at, tally)| (*at, field(tally) as f64))
                    .collect()
            })
    }

    /// `(seconds, per second)` of `field` of `instance` between its samples, placed at the
    /// end of each interval. A sample closer than half of [`SAMPLE_EVERY`] to the previous
    /// point is merged into the next interval (the last totals of a run come right after a
    /// regular sample, and a rate over a few milliseconds is noise).
    pub(crate) fn rates(&self, instance: usize, field: fn(&Tally) -> u64) -> Vec<(f64, f64)> {
        let shortest = SAMPLE_EVERY.as_secs_f64() / 2.0;
        let mut rates = Vec::new();
        let mut last: Option<(f64, f64)> = None;
        for (t1, v1) in self.values(instance, field) {
            match last {
                Some((t0, _)) if t1 - t0 < shortest => {}
                Some((t0, v0)) => {
                    rates.push((t1, (v1 - v0).max(0.0) / (t1 - t0)));
                    last = Some((t1, v1));
                }
                None => last = Some((t1, v1)),
            }
        }
        rates
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up() {
        let a = Tally {
            requests: 1,
            db_queries: 2,
            writes: 3,
            stale_reads: 4,
            disconnected_us: 5,
            ..Tally::default()
        };
        let sum = Tally::sum([&a, &a]);
        assert_eq!(sum.requests, 2);
        assert_eq!(sum.db_queries, 4);
        assert_eq!(sum.writes, 6);
        assert_eq!(sum.stale_reads, 8);
        assert_eq!(sum.disconnected_us, 10);
        let line = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Tally>(&line).unwrap(), a);
    }

    #[test]
    fn rates_and_deltas_come_from_consecutive_samples() {
        let mut timeline = Timeline::default();
        let at = |requests| Tally {
            requests,
            ..Tally::default()
        };
        timeline.push(0.0, vec![at(0), at(0)]);
        timeline.push(0.5, vec![at(100), at(10)]);
        timeline.push(1.0, vec![at(300), at(10)]);
        assert_eq!(timeline.instances(), 2);
        assert_eq!(timeline.end(), Some(1.0));
        assert_eq!(
            timeline.rates(0, |t| t.requests),
            [(0.5, 200.0), (1.0, 400.0)]
        );
        assert_eq!(timeline.rates(1, |t| t.requests), [(0.5, 20.0), (1.0, 0.0)]);
        assert_eq!(timeline.deltas_between(0.5, 1.0, |t| t.requests), [200, 0]);
        // Between samples, the last one before counts.
        assert_eq!(timeline.deltas_between(0.2, 0.9, |t| t.requests), [100, 10]);
        assert_eq!(timeline.total_between(0.0, 1.0, |t| t.requests), 310);
        assert_eq!(timeline.values(0, |t| t.requests).len(), 3);
        // A last sample right after a regular one is merged into the next interval.
        timeline.push(1.01, vec![at(310), at(10)]);
        assert_eq!(timeline.rates(0, |t| t.requests).len(), 2);
        timeline.push(1.5, vec![at(400), at(10)]);
        assert_eq!(timeline.rates(0, |t| t.requests)[2], (1.5, 200.0));
        // Instances sampled at their own times (separate processes) are read the same way.
        let mut apart = Timeline::default();
        apart.push_one(1, 0.1, at(0));
        apart.push_one(0, 0.0, at(0));
        apart.push_one(1, 0.6, at(50));
        apart.push_one(0, 0.5, at(100));
        assert_eq!(apart.instances(), 2);
        assert_eq!(apart.end(), Some(0.6));
        assert_eq!(apart.rates(1, |t| t.requests), [(0.6, 100.0)]);
        assert_eq!(apart.deltas_between(0.0, 0.55, |t| t.requests), [100, 0]);
    }
}
