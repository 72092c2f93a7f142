//! `--faults`: the demo breaks its own Redis during the run, on a schedule, and then says
//! what each fault cost.
//!
//! On one redis-server (`--redis auto`) the schedule ([`schedule`]) kills the subscribers'
//! connections (`CLIENT KILL TYPE pubsub`) at 30 % of the run, stops Redis at 50 % and starts
//! it again (empty) up to 2 s later, and kills the subscribers once more at 80 %. On a cluster
//! (`--redis auto-cluster`, [`cluster_schedule`]) it fails the channel's primary over to its
//! replica (`CLUSTER FAILOVER`) at 30 %, and, in a run of [`KILL_FITS_FROM`] or more, kills
//! the new primary (SIGKILL) at 60 %: the cluster promotes its replica after a few node
//! timeouts, and the killed node stays down. Each fault is printed when it happens. Its cost
//! ([`costs`]) is read off the run's [`Timeline`] between it and the next fault: how long each
//! instance was disconnected and bypassed its cache, the loss clears, and the database
//! queries above the rate of the calm period before the first fault.

use std::fmt::Write as _;
use std::io;
use std::io::Write as _;
use std::time::{Duration, Instant};

use nearcache_testkit::{RedisCluster, RedisServer};

use crate::own_redis::OwnRedis;
use crate::report::{count, human_duration, lag};
use crate::timeline::{Tally, Timeline};

/// One thing the demo does to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// `CLIENT KILL TYPE pubsub`: every subscriber's connection is dropped, Redis stays up.
    KillSubscribers,
    /// Redis is stopped (SIGKILL) and started again, empty, after `down`.
    RestartRedis {
        /// How long Redis stays down.
        down: Duration,
    },
    /// `CLUSTER FAILOVER` on the replica of the channel's primary: the replica takes over
    /// the channel's slot, the old primary becomes its replica.
    ClusterFailover,
    /// The channel's primary is killed (SIGKILL); the cluster promotes its replica.
    KillPrimary,
}

/// A fault and when, after the run's start, it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    /// When, from the start of the run.
    pub(crate) at: Duration,
    /// What.
    pub(crate) kind: FaultKind,
}

/// A fault as it happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FaultRecord {
    /// When it started, in seconds from the start of the run.
    pub(crate) at: f64,
    /// What was planned.
    pub(crate) kind: FaultKind,
    /// What happened, in words ("3 subscriber connections killed", or the error).
    pub(crate) outcome: String,
}

impl FaultRecord {
    /// A short label for the plot and the summary.
    pub(crate) fn label(&self) -> String {
        match self.kind {
            FaultKind::KillSubscribers => "CLIENT KILL TYPE pubsub".to_owned(),
            FaultKind::RestartRedis { down } => {
                format!("Redis down {}", human_duration(down))
            }
            FaultKind::ClusterFailover => "CLUSTER FAILOVER".to_owned(),
            FaultKind::KillPrimary => "primary killed (SIGKILL)".to_owned(),
        }
    }
}

/// The faults of a run of `duration`.
pub(crate) fn schedule(duration: Duration) -> Vec<Fault> {
    let down = (duration / 10).min(Duration::from_secs(2));
    vec![
        Fault {
            at: duration.mul_f64(0.3),
            kind: FaultKind::KillSubscribers,
        },
        Fault {
            at: duration.mul_f64(0.5),
            kind: FaultKind::RestartRedis { down },
        },
        Fault {
            at: duration.mul_f64(0.8),
            kind: FaultKind::KillSubscribers,
        },
    ]
}

/// How long a cluster run must be for its schedule to kill the channel's primary too: the
/// automatic failover takes a few node timeouts (1 s each), then the instances resubscribe on
/// the new primary, and the run should go on calmly for a while after that.
pub(crate) const KILL_FITS_FROM: Duration = Duration::from_secs(10);

/// The faults of a run of `duration` on a cluster.
pub(crate) fn cluster_schedule(duration: Duration) -> Vec<Fault> {
    let mut faults = vec![Fault {
        at: duration.mul_f64(0.3),
        kind: FaultKind::ClusterFailover,
    }];
    if duration >= KILL_FITS_FROM {
        faults.push(Fault {
            at: duration.mul_f64(0.6),
            kind: FaultKind::KillPrimary,
        });
    }
    faults
}

/// The demo's own Redis and the faults to inflict on it.
#[derive(Debug)]
pub(crate) struct Injector {
    redis: OwnRedis,
    faults: Vec<Fault>,
}

impl Injector {
    /// Faults for `redis` on the schedule of a run of `duration` ([`schedule`] for one
    /// server, [`cluster_schedule`] for a cluster).
    pub(crate) fn new(redis: OwnRedis, duration: Duration) -> Injector {
        let faults = match &redis {
            OwnRedis::Server(_) => schedule(duration),
            OwnRedis::Cluster(_) => cluster_schedule(duration),
        };
        Injector { redis, faults }
    }

    /// Runs the schedule from `started` on a blocking thread (Redis's controls block);
    /// `channel` is the run's channel, whose primary a cluster's faults aim at. The handle
    /// gives back the Redis (to keep it running until the instances are done) and what
    /// happened.
    pub(crate) fn spawn(
        self,
        started: Instant,
        channel: String,
    ) -> tokio::task::JoinHandle<(OwnRedis, Vec<FaultRecord>)> {
        tokio::task::spawn_blocking(move || self.run(started, &channel))
    }

    fn run(mut self, started: Instant, channel: &str) -> (OwnRedis, Vec<FaultRecord>) {
        let mut records = Vec::with_capacity(self.faults.len());
        for fault in std::mem::take(&mut self.faults) {
            std::thread::sleep((started + fault.at).saturating_duration_since(Instant::now()));
            let at = started.elapsed().as_secs_f64();
            let outcome = match (&mut self.redis, fault.kind) {
                (OwnRedis::Server(server), FaultKind::KillSubscribers) => {
                    match server.client_kill_pubsub() {
                        Ok(killed) => format!("{killed} subscriber connections killed"),
                        Err(error) => format!("CLIENT KILL failed: {error}"),
                    }
                }
                (OwnRedis::Server(server), FaultKind::RestartRedis { down }) => {
                    restart(server, started, down)
                }
                (OwnRedis::Cluster(cluster), FaultKind::ClusterFailover) => {
                    cluster_failover(cluster, channel, started)
                        .unwrap_or_else(|error| format!("CLUSTER FAILOVER failed: {error}"))
                }
                (OwnRedis::Cluster(cluster), FaultKind::KillPrimary) => {
                    kill_primary(cluster, channel, started)
                        .unwrap_or_else(|error| format!("killing the primary failed: {error}"))
                }
                (_, kind) => format!("{kind:?} does not apply to this Redis"),
            };
            let record = FaultRecord {
                at,
                kind: fault.kind,
                outcome,
            };
            say(&format!(
                "[{at:>5.1}s] fault: {}: {}",
                record.label(),
                record.outcome
            ));
            records.push(record);
        }
        (self.redis, records)
    }
}

fn restart(server: &mut RedisServer, started: Instant, down: Duration) -> String {
    if let Err(error) = server.kill() {
        return format!("could not stop Redis: {error}");
    }
    say(&format!(
        "[{:>5.1}s] fault: Redis stopped (SIGKILL)",
        started.elapsed().as_secs_f64()
    ));
    std::thread::sleep(down);
    match server.restart() {
        Ok(()) => format!(
            "stopped, started again (empty) at {:.1}s",
            started.elapsed().as_secs_f64()
        ),
        Err(error) => format!("stopped, could not start it again: {error}"),
    }
}

/// The channel's slot, the node serving it, and that node's replica.
fn shard_of(cluster: &RedisCluster, channel: &str) -> io::Result<(u16, usize, usize)> {
    let slot = cluster.slot_of(channel)?;
    let owner = cluster.owner_of_slot(slot)?;
    let replica = cluster
        .replicas_of(owner)?
        .first()
        .copied()
        .ok_or_else(|| io::Error::other(format!("node {owner} has no replica")))?;
    Ok((slot, owner, replica))
}

/// `CLUSTER FAILOVER` on the replica of `channel`'s primary; returns once every node agrees
/// that the replica serves the slot.
fn cluster_failover(cluster: &RedisCluster, channel: &str, started: Instant) -> io::Result<String> {
    let (slot, owner, replica) = shard_of(cluster, channel)?;
    cluster.failover(replica, slot)?;
    Ok(format!(
        "node {replica} took over slot {slot} from node {owner} at {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

/// Kills `channel`'s primary; returns once every running node agrees that its replica
/// serves the slot. The killed node stays down.
fn kill_primary(cluster: &mut RedisCluster, channel: &str, started: Instant) -> io::Result<String> {
    let (slot, owner, replica) = shard_of(cluster, channel)?;
    cluster.node_mut(owner).kill()?;
    say(&format!(
        "[{:>5.1}s] fault: node {owner}, the primary of slot {slot}, killed (SIGKILL)",
        started.elapsed().as_secs_f64()
    ));
    cluster.wait_for_owner(slot, replica)?;
    Ok(format!(
        "node {owner} killed, node {replica} promoted and serving slot {slot} at {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What one fault cost, over the window from it to the next fault (or the end of the run).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FaultCost {
    /// The fault.
    pub(crate) fault: FaultRecord,
    /// The window's length, in seconds.
    pub(crate) window: f64,
    /// Per instance: time disconnected from Redis, µs.
    pub(crate) disconnected: Vec<u64>,
    /// Per instance: time its reads bypassed the cache, µs.
    pub(crate) bypassing: Vec<u64>,
    /// Loss clears, all instances.
    pub(crate) loss_clears: u64,
    /// Losses repaired from the replay log, all instances.
    pub(crate) loss_repairs: u64,
    /// Invalidations those repairs applied, all instances.
    pub(crate) keys_replayed: u64,
    /// Publish attempts that failed or timed out, all instances.
    pub(crate) publish_failures: u64,
    /// Database queries in the window, all instances.
    pub(crate) db_queries: u64,
    /// Queries above the calm rate (negative: fewer), all instances.
    pub(crate) extra_queries: i64,
}

/// The cost of each of `faults`, read off `timeline`.
pub(crate) fn costs(timeline: &Timeline, faults: &[FaultRecord]) -> Vec<FaultCost> {
    let Some(end) = timeline.end() else {
        return Vec::new();
    };
    let calm_rate = faults.first().map_or(0.0, |first| {
        // The second half of the time before the first fault: caches warm, nothing broken.
        let (from, to) = (first.at / 2.0, first.at);
        let queries = timeline.total_between(from, to, |t| t.db_queries);
        if to > from {
            queries as f64 / (to - from)
        } else {
            0.0
        }
    });
    faults
        .iter()
        .enumerate()
        .map(|(i, fault)| {
            let from = fault.at;
            let to = faults.get(i + 1).map_or(end, |next| next.at).max(from);
            let delta = |field: fn(&Tally) -> u64| timeline.deltas_between(from, to, field);
            let db_queries = timeline.total_between(from, to, |t| t.db_queries);
            let expected = calm_rate * (to - from);
            FaultCost {
                fault: fault.clone(),
                window: to - from,
                disconnected: delta(|t| t.disconnected_us),
                bypassing: delta(|t| t.bypass_us),
                loss_clears: timeline.total_between(from, to, |t| t.loss_clears),
                loss_repairs: timeline.total_between(from, to, |t| t.loss_repairs),
                keys_replayed: timeline.total_between(from, to, |t| t.keys_replayed),
                publish_failures: timeline.total_between(from, to, |t| t.publish_failures),
                db_queries,
                extra_queries: (db_queries as f64 - expected).round() as i64,
            }
        })
        .collect()
}

/// The faults section of the summary.
pub(crate) fn render(costs: &[FaultCost]) -> String {
    let mut out = String::new();
    if costs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "Faults (--faults), each measured until the next one or the end of the run:"
    );
    for cost in costs {
        let per_instance = |values: &[u64]| {
            values
                .iter()
                .enumerate()
                .map(|(i, us)| format!("#{i} {}", lag(*us)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let extra = if cost.extra_queries >= 0 {
            format!("+{}", count(cost.extra_queries.unsigned_abs()))
        } else {
            format!("-{}", count(cost.extra_queries.unsigned_abs()))
        };
        let _ = writeln!(
            out,
            "  [{:>5.1}s] {}: {}\n           disconnected: {}\n           bypassing the cache: {}\n           \
             loss clears {}, loss repairs {} ({} keys replayed), failed publishes {}, database queries {} ({extra} over the calm rate, in {:.1}s)",
            cost.fault.at,
            cost.fault.label(),
            cost.fault.outcome,
            per_instance(&cost.disconnected),
            per_instance(&cost.bypassing),
            count(cost.loss_clears),
            count(cost.loss_repairs),
            count(cost.keys_replayed),
            count(cost.publish_failures),
            count(cost.db_queries),
            cost.window,
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_three_faults_over_the_run() {
        let faults = schedule(Duration::from_secs(20));
        assert_eq!(
            faults,
            [
                Fault {
                    at: Duration::from_secs(6),
                    kind: FaultKind::KillSubscribers
                },
                Fault {
                    at: Duration::from_secs(10),
                    kind: FaultKind::RestartRedis {
                        down: Duration::from_secs(2)
                    }
                },
                Fault {
                    at: Duration::from_secs(16),
                    kind: FaultKind::KillSubscribers
                },
            ]
        );
        // A short run keeps Redis down for a tenth of it.
        assert_eq!(
            schedule(Duration::from_secs(4))[1].kind,
            FaultKind::RestartRedis {
                down: Duration::from_millis(400)
            }
        );
    }

    #[test]
    fn a_cluster_fails_over_and_loses_its_primary_when_the_run_is_long_enough() {
        assert_eq!(
            cluster_schedule(Duration::from_secs(20)),
            [
                Fault {
                    at: Duration::from_secs(6),
                    kind: FaultKind::ClusterFailover
                },
                Fault {
                    at: Duration::from_secs(12),
                    kind: FaultKind::KillPrimary
                },
            ]
        );
        assert_eq!(cluster_schedule(KILL_FITS_FROM).len(), 2);
        // A short run only fails over: the automatic failover after a kill would not fit.
        assert_eq!(
            cluster_schedule(Duration::from_secs(4)),
            [Fault {
                at: Duration::from_millis(1_200),
                kind: FaultKind::ClusterFailover
            }]
        );
    }

    fn tally(t: f64, disconnected_us: u64) -> Tally {
        Tally {
            // 100 queries a second, and 500 more in the second after the fault at 4 s.
            db_queries: (t * 100.0) as u64 + if t >= 5.0 { 500 } else { 0 },
            disconnected_us,
            loss_clears: u64::from(t >= 5.0),
            loss_repairs: u64::from(t >= 4.5),
            keys_replayed: if t >= 4.5 { 3 } else { 0 },
            ..Tally::default()
        }
    }

    #[test]
    fn a_faults_cost_is_what_changed_until_the_next_one() {
        let mut timeline = Timeline::default();
        for step in 0..=16 {
            let t = f64::from(step) * 0.5;
            let down = if t >= 4.5 { 300_000 } else { 0 };
            timeline.push(t, vec![tally(t, down), tally(t, down / 3)]);
        }
        let faults = [
            FaultRecord {
                at: 4.0,
                kind: FaultKind::KillSubscribers,
                outcome: "2 subscriber connections killed".into(),
            },
            FaultRecord {
                at: 6.0,
                kind: FaultKind::RestartRedis {
                    down: Duration::from_secs(1),
                },
                outcome: "stopped, started again".into(),
            },
        ];
        let costs = costs(&timeline, &faults);
        assert_eq!(costs.len(), 2);
        let first = &costs[0];
        assert!((first.window - 2.0).abs() < 1e-9);
        assert_eq!(first.disconnected, [300_000, 100_000]);
        assert_eq!(first.loss_clears, 2);
        assert_eq!((first.loss_repairs, first.keys_replayed), (2, 6));
        // 2 s at 100/s on two instances is 400 calm queries; 2 × 500 more.
        assert_eq!(first.db_queries, 1_400);
        assert_eq!(first.extra_queries, 1_000);
        let second = &costs[1];
        assert!((second.window - 2.0).abs() < 1e-9);
        assert_eq!(second.disconnected, [0, 0]);
        assert_eq!(second.extra_queries, 0);
        let text = render(&costs);
        for expected in [
            "[  4.0s] CLIENT KILL TYPE pubsub: 2 subscriber connections killed",
            "disconnected: #0 300.00 ms, #1 100.00 ms",
            "loss clears 2, loss repairs 2 (6 keys replayed)",
            "+1,000 over the calm rate",
            "Redis down 1s",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
