//! Metrics through the `metrics` facade (feature `metrics`): Prometheus, OpenTelemetry or
//! StatsD, whichever exporter the application installs.
//!
//! Handles are registered once, when the cache is built, with the labels `cache` (its
//! name) and `instance` (its id): nothing is looked up per event. The hit path is not
//! touched: hits, misses and the other counters already kept (striped, for the store) are
//! exported from [`Cache::stats`](crate::Cache::stats) snapshots — every second by a task
//! on the runtime the cache was built in, and whenever
//! [`Cache::export_metrics`](crate::Cache::export_metrics) is called — as absolute values,
//! so nothing is counted twice. Only the two histograms are recorded as things happen:
//! propagation lag (by the receiver, per message) and load duration (per factory run, never
//! on a hit). The names and the alerts to set on them are in docs/operations.md.
//!
//! Without the feature the types here are empty and their methods do nothing.

use std::time::Duration;

#[cfg(feature = "metrics")]
use crate::health::Coherence;
use crate::identity::Identity;

/// A `_seconds` histogram handle (empty without the feature).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seconds {
    #[cfg(feature = "metrics")]
    histogram: Option<metrics::Histogram>,
}

impl Seconds {
    #[cfg(feature = "metrics")]
    fn new(name: &'static str, identity: &Identity) -> Self {
        Seconds {
            histogram: Some(metrics::histogram!(name, &labels(identity))),
        }
    }

    /// Records one observation.
    #[inline]
    pub(crate) fn record(&self, _duration: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(histogram) = &self.histogram {
            histogram.record(_duration.as_secs_f64());
        }
    }
}

/// The propagation-lag histogram handle.
pub(crate) fn propagation_lag(_identity: &Identity) -> Seconds {
    #[cfg(feature = "metrics")]
    return Seconds::new("nearcache_propagation_lag_seconds", _identity);
    #[cfg(not(feature = "metrics"))]
    Seconds::default()
}

/// The load-duration histogram handle.
pub(crate) fn load_duration(_identity: &Identity) -> Seconds {
    #[cfg(feature = "metrics")]
    return Seconds::new("nearcache_load_duration_seconds", _identity);
    #[cfg(not(feature = "metrics"))]
    Seconds::default()
}

#[cfg(feature = "metrics")]
fn labels(identity: &Identity) -> [(&'static str, String); 2] {
    [
        ("cache", identity.name.to_string()),
        ("instance", identity.instance_text.to_string()),
    ]
}

/// The exported counters and gauges of one cache.
#[cfg(feature = "metrics")]
pub(crate) use handles::Handles as Exported;

/// The state label of `state` (`nearcache_coherence{state=…}`).
#[cfg(feature = "metrics")]
fn state_name(state: Coherence) -> &'static str {
    match state {
        Coherence::Coherent => "coherent",
        Coherence::Suspect { .. } => "suspect",
        Coherence::Lost { .. } => "lost",
        Coherence::Bypassing => "bypassing",
    }
}

#[cfg(feature = "metrics")]
mod handles {
    use metrics::{Counter, Gauge, counter, gauge};

    use super::{labels, state_name};
    use crate::health::Health;
    use crate::identity::Identity;
    use crate::stats::CacheStats;

    const KINDS: [&str; 4] = ["key", "region", "region_key", "clear"];
    const STATES: [&str; 4] = ["coherent", "suspect", "lost", "bypassing"];
    const CAUSES: [&str; 6] = [
        "reconnect",
        "lagged",
        "peer_gap",
        "outbox_overflow",
        "subscription_ended",
        "echo_lost",
    ];
    /// Why a repair could not cover a loss (and cleared instead).
    const UNCOVERED: [&str; 3] = ["trimmed", "recreated", "read_failed"];

    /// Every counter and gauge, registered once.
    #[derive(Debug)]
    pub(crate) struct Handles {
        hits: Counter,
        misses: Counter,
        loads: Counter,
        load_errors: Counter,
        loads_not_stored: Counter,
        batch_loads: Counter,
        batch_keys_loaded: Counter,
        fail_safe_activations: Counter,
        hard_timeouts: Counter,
        soft_timeouts: Counter,
        eager_refreshes: Counter,
        evictions: Counter,
        expirations: Counter,
        messages_published: Counter,
        bytes_published: Counter,
        invalidations_sent: [Counter; 4],
        heartbeats_sent: Counter,
        answers_sent: Counter,
        publish_failures: Counter,
        messages_received: Counter,
        bytes_received: Counter,
        invalidations_received: [Counter; 4],
        invalidations_applied: Counter,
        duplicates: Counter,
        rejected_invalid: Counter,
        rejected_unauthenticated: Counter,
        outbox_overflows: Counter,
        loss_clears: [Counter; 6],
        loss_repairs: Counter,
        replayed_messages: Counter,
        replayed_keys: Counter,
        replay_duplicates: Counter,
        replay_uncovered: [Counter; 3],
        entries: Gauge,
        weight: Gauge,
        outbox_depth: Gauge,
        outbox_oldest_age: Gauge,
        peers: Gauge,
        connected: Gauge,
        coherence: [Gauge; 4],
        staleness_bound: Gauge,
    }

    impl Handles {
        /// Registers every series with the recorder installed now.
        pub(crate) fn new(identity: &Identity) -> Self {
            let l = labels(identity);
            let with = |key: &'static str, value: &'static str| {
                let mut all: Vec<(&'static str, String)> = l.to_vec();
                all.push((key, value.to_owned()));
                all
            };
            Handles {
                hits: counter!("nearcache_hits_total", &l),
                misses: counter!("nearcache_misses_total", &l),
                loads: counter!("nearcache_loads_total", &l),
                load_errors: counter!("nearcache_load_errors_total", &l),
                loads_not_stored: counter!("nearcache_loads_not_stored_total", &l),
                batch_loads: counter!("nearcache_batch_loads_total", &l),
                batch_keys_loaded: counter!("nearcache_batch_keys_loaded_total", &l),
                fail_safe_activations: counter!("nearcache_fail_safe_activations_total", &l),
                hard_timeouts: counter!("nearcache_hard_timeouts_total", &l),
                soft_timeouts: counter!("nearcache_soft_timeouts_total", &l),
                eager_refreshes: counter!("nearcache_eager_refreshes_total", &l),
                evictions: counter!("nearcache_evictions_total", &l),
                expirations: counter!("nearcache_expirations_total", &l),
                messages_published: counter!("nearcache_messages_published_total", &l),
                bytes_published: counter!("nearcache_published_bytes_total", &l),
                invalidations_sent: KINDS.map(|kind| {
                    counter!("nearcache_invalidations_sent_total", &with("kind", kind))
                }),
                heartbeats_sent: counter!("nearcache_heartbeats_sent_total", &l),
                answers_sent: counter!("nearcache_hello_answers_total", &l),
                publish_failures: counter!("nearcache_publish_failures_total", &l),
                messages_received: counter!("nearcache_messages_received_total", &l),
                bytes_received: counter!("nearcache_received_bytes_total", &l),
                invalidations_received: KINDS.map(|kind| {
                    counter!(
                        "nearcache_invalidations_received_total",
                        &with("kind", kind)
                    )
                }),
                invalidations_applied: counter!("nearcache_invalidations_applied_total", &l),
                duplicates: counter!("nearcache_duplicates_total", &l),
                rejected_invalid: counter!(
                    "nearcache_messages_rejected_total",
                    &with("reason", "invalid")
                ),
                rejected_unauthenticated: counter!(
                    "nearcache_messages_rejected_total",
                    &with("reason", "unauthenticated")
                ),
                outbox_overflows: counter!("nearcache_outbox_overflows_total", &l),
                loss_clears: CAUSES
                    .map(|cause| counter!("nearcache_loss_clears_total", &with("cause", cause))),
                loss_repairs: counter!("nearcache_loss_repairs_total", &l),
                replayed_messages: counter!("nearcache_replayed_messages_total", &l),
                replayed_keys: counter!("nearcache_replayed_keys_total", &l),
                replay_duplicates: counter!("nearcache_replay_duplicates_total", &l),
                replay_uncovered: UNCOVERED.map(|reason| {
                    counter!("nearcache_replay_uncovered_total", &with("reason", reason))
                }),
                entries: gauge!("nearcache_entries", &l),
                weight: gauge!("nearcache_weight", &l),
                outbox_depth: gauge!("nearcache_outbox_depth", &l),
                outbox_oldest_age: gauge!("nearcache_outbox_oldest_age_seconds", &l),
                peers: gauge!("nearcache_peers", &l),
                connected: gauge!("nearcache_connected", &l),
                coherence: STATES.map(|state| gauge!("nearcache_coherence", &with("state", state))),
                staleness_bound: gauge!("nearcache_staleness_bound_seconds", &l),
            }
        }

        /// Sets every series from a snapshot.
        pub(crate) fn export(
            &self,
            stats: &CacheStats,
            health: &Health,
            entries: usize,
            weight: u64,
        ) {
            let s = &stats.store;
            self.hits.absolute(s.hits);
            self.misses.absolute(s.misses);
            self.loads.absolute(s.loads);
            self.load_errors.absolute(s.load_errors);
            self.loads_not_stored.absolute(s.inserts_rejected_stale);
            self.batch_loads.absolute(s.batch_loads);
            self.batch_keys_loaded.absolute(s.batch_keys_loaded);
            self.fail_safe_activations.absolute(s.fail_safe_activations);
            self.hard_timeouts.absolute(s.hard_timeouts);
            self.soft_timeouts.absolute(s.soft_timeouts);
            self.eager_refreshes.absolute(s.eager_refreshes);
            self.evictions.absolute(s.evictions);
            self.expirations.absolute(s.expirations);
            self.entries.set(entries as f64);
            self.weight.set(weight as f64);
            let state = state_name(health.state);
            for (gauge, name) in self.coherence.iter().zip(STATES) {
                gauge.set(if name == state { 1.0 } else { 0.0 });
            }
            // No bound: shown as +Inf, which any alert threshold catches.
            self.staleness_bound.set(
                health
                    .staleness_bound
                    .map_or(f64::INFINITY, |bound| bound.as_secs_f64()),
            );
            self.outbox_oldest_age.set(
                health
                    .oldest_unpublished
                    .map_or(0.0, |age| age.as_secs_f64()),
            );
            let Some(p) = &stats.propagation else {
                return;
            };
            self.messages_published.absolute(p.messages_sent);
            self.bytes_published.absolute(p.bytes_sent);
            let by_kind = |k: &crate::stats::InvalidationKinds| {
                [k.keys, k.region_expiries, k.region_key_expiries, k.clears]
            };
            for (counter, n) in self
                .invalidations_sent
                .iter()
                .zip(by_kind(&p.invalidations_sent_by_kind))
            {
                counter.absolute(n);
            }
            self.heartbeats_sent.absolute(p.heartbeats_sent);
            self.answers_sent.absolute(p.answers_sent);
            self.publish_failures.absolute(p.publish_failures);
            self.messages_received.absolute(p.messages_received);
            self.bytes_received.absolute(p.bytes_received);
            for (counter, n) in self
                .invalidations_received
                .iter()
                .zip(by_kind(&p.invalidations_received_by_kind))
            {
                counter.absolute(n);
            }
            self.invalidations_applied.absolute(p.invalidations_applied);
            self.duplicates.absolute(p.duplicates_ignored);
            self.rejected_invalid.absolute(p.messages_rejected);
            self.rejected_unauthenticated
                .absolute(p.messages_unauthenticated);
            self.outbox_overflows.absolute(p.outbox_overflows);
            let c = &p.loss_clears;
            let clears = [
                c.reconnect,
                c.lagged,
                c.peer_gap,
                c.outbox_overflow,
                c.subscription_ended,
                c.echo_lost,
            ];
            for (counter, value) in self.loss_clears.iter().zip(clears) {
                counter.absolute(value);
            }
            let r = &p.loss_repairs;
            self.loss_repairs.absolute(r.repairs);
            self.replayed_messages.absolute(r.messages_replayed);
            self.replayed_keys.absolute(r.keys_replayed);
            self.replay_duplicates.absolute(r.replay_duplicates);
            let uncovered = [r.uncovered_trimmed, r.uncovered_recreated, r.read_failed];
            for (counter, value) in self.replay_uncovered.iter().zip(uncovered) {
                counter.absolute(value);
            }
            self.outbox_depth.set(p.outbox_len as f64);
            self.peers.set(p.peers as f64);
            self.connected.set(if p.connected { 1.0 } else { 0.0 });
        }
    }
}
