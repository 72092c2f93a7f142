//! The fault injector: at random intervals it makes the deployment suffer one of its faults
//! (see [`crate::deployment`]: a killed and restarted Redis, `CLIENT KILL`ed subscribers, a
//! failover, a slot migration), then waits until every instance is connected again, with its
//! outbox empty and a publish through since the fault, and notes how long that took. Reads
//! count as "during a fault" from the fault until then.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nearcache::Cache;
use rand::Rng;

use crate::deployment::Deployment;

/// A fault a deployment can suffer (which ones, and how, is [`Deployment::fault`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A `redis-server` (the single one, or the channel's primary) killed and restarted.
    RedisKill,
    /// The subscriber connections dropped with `CLIENT KILL TYPE pubsub`.
    SubscriberKill,
    /// A manual failover (`CLUSTER FAILOVER`, `SENTINEL FAILOVER`).
    Failover,
    /// The channel's cluster slot migrated to another primary.
    Migration,
}

impl Fault {
    /// Every fault, in the report's order.
    pub(crate) const ALL: [Fault; 4] = [
        Fault::RedisKill,
        Fault::SubscriberKill,
        Fault::Failover,
        Fault::Migration,
    ];
}

/// What the injector did.
#[derive(Default)]
pub(crate) struct FaultCounts {
    /// Faults injected, by [`Fault`] (its discriminant is the index).
    injected: [AtomicU64; Fault::ALL.len()],
    /// Longest time from the end of a fault until every instance was connected, in ms.
    pub(crate) max_recovery_ms: AtomicU64,
    /// Faults after which the instances did not reconnect within the patience.
    pub(crate) unrecovered: AtomicU64,
}

impl FaultCounts {
    /// Counts one `fault` (before it is injected: one that fails still counts).
    pub(crate) fn note(&self, fault: Fault) {
        self.injected[fault as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many times `fault` was injected.
    pub(crate) fn of(&self, fault: Fault) -> u64 {
        self.injected[fault as usize].load(Ordering::Relaxed)
    }

    /// Every fault injected.
    pub(crate) fn total(&self) -> u64 {
        Fault::ALL.into_iter().map(|fault| self.of(fault)).sum()
    }
}

/// Whether every instance is connected now (read by the workers to tell healthy reads from
/// reads during a fault).
pub(crate) fn all_connected(caches: &[Cache]) -> bool {
    caches
        .iter()
        .all(|c| c.stats().propagation.is_some_and(|p| p.connected))
}

/// Publishes (messages, heartbeats and answers to hellos) each instance has made so far.
fn sent(caches: &[Cache]) -> Vec<u64> {
    caches
        .iter()
        .map(|c| {
            c.stats()
                .propagation
                .map_or(0, |p| p.messages_sent + p.heartbeats_sent + p.answers_sent)
        })
        .collect()
}

/// Recovered from a fault: every instance is subscribed again, has published something
/// since the fault ended (its publisher reconnects on its own schedule, maybe after its
/// subscriber; until then its peers may serve what it invalidated), and has been seen with
/// nothing queued since then — each on its own: under the workers' writes the three
/// outboxes are seldom empty at one instant, though each drains every few milliseconds.
/// `drained` remembers which instances were seen empty.
fn recovered(caches: &[Cache], sent_at_heal: &[u64], drained: &mut [bool]) -> bool {
    let mut back = true;
    for ((cache, then), drained) in caches.iter().zip(sent_at_heal).zip(drained.iter_mut()) {
        let Some(p) = cache.stats().propagation else {
            return false;
        };
        let sent = p.messages_sent + p.heartbeats_sent + p.answers_sent;
        *drained |= p.connected && p.outbox_len == 0;
        back &= p.connected && *drained && sent > *then;
    }
    back
}

/// Runs until `stop`: one fault every 2–6 s after a quiet `warm_up`.
pub(crate) fn inject(
    deployment: &Mutex<Deployment>,
    caches: &[Cache],
    counts: &FaultCounts,
    faulting: &AtomicBool,
    stop: &AtomicBool,
    warm_up: Duration,
) {
    let mut rng = rand::rng();
    if !pause(stop, warm_up) {
        return;
    }
    while pause(stop, Duration::from_millis(rng.random_range(2_000..6_000))) {
        faulting.store(true, Ordering::Relaxed);
        let mut deployment = deployment
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = deployment.fault(&mut rng, counts) {
            tracing::error!(%error, "the fault could not be injected or healed");
        }
        drop(deployment);
        let healed = Instant::now();
        let sent_at_heal = sent(caches);
        let patience = Duration::from_secs(20);
        let mut drained = vec![false; caches.len()];
        let mut back = recovered(caches, &sent_at_heal, &mut drained);
        while !back && healed.elapsed() < patience && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            back = recovered(caches, &sent_at_heal, &mut drained);
        }
        if back {
            let ms = u64::try_from(healed.elapsed().as_millis()).unwrap_or(u64::MAX);
            counts.max_recovery_ms.fetch_max(ms, Ordering::Relaxed);
        } else if !stop.load(Ordering::Relaxed) {
            counts.unrecovered.fetch_add(1, Ordering::Relaxed);
        }
        faulting.store(false, Ordering::Relaxed);
    }
}

/// Sleeps `duration` in short steps; `false` as soon as `stop` is set.
fn pause(stop: &AtomicBool, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_is_counted_under_its_own_kind() {
        let counts = FaultCounts::default();
        for (n, fault) in Fault::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                counts.note(fault);
            }
        }
        let by_kind = Fault::ALL.map(|fault| counts.of(fault));
        assert_eq!(by_kind, [1, 2, 3, 4]);
        assert_eq!(counts.total(), 10);
    }
}
