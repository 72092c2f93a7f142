//! A run with every instance in this process: the in-process backplane (default), Redis
//! (`--redis`), or none (`--no-backplane`). Each instance opens the run's SQLite database
//! itself, as the instances of a `--processes` run do; they share one mirror of its write
//! log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nearcache::{Cache, InMemoryBackplane};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::DemoError;
use crate::cli::Config;
use crate::clock::Micros;
use crate::db::Database;
use crate::faults::Injector;
use crate::instance::{Instance, cache_options, channel, new_run_id};
use crate::progress::{Progress, TERMINAL_REFRESH};
use crate::report::Summary;
use crate::timeline::{SAMPLE_EVERY, Tally, Timeline};
use crate::workload::{Counters, Popularity, Workload};

/// Runs `config` in this process on the database at `db_path`, with Redis at `redis_url` as
/// the backplane if given, and `faults` injected into it. `show_progress` turns the progress
/// line on.
///
/// # Errors
///
/// [`DemoError`] when a cache cannot be built or connected, or the database cannot be
/// opened.
pub(crate) async fn run(
    config: &Config,
    db_path: &Path,
    redis_url: Option<&str>,
    faults: Option<Injector>,
    show_progress: bool,
) -> Result<Summary, DemoError> {
    let run_id = new_run_id();
    let layout = config.layout();
    let popularity = Popularity::new(config.products, config.zipf).map_err(DemoError::Usage)?;
    let db = Database::open(db_path, layout, config.db_latency)?.with_faults(config.db_faults());
    let mirror = db.kept_mirror(config.products, config.bound).await?;
    let bus = InMemoryBackplane::new();
    let mut instances = Vec::with_capacity(config.instances);
    for index in 0..config.instances {
        let builder = Cache::builder().options(cache_options(config, &run_id, redis_url));
        let cache = if config.no_backplane {
            builder.build()?
        } else if redis_url.is_some() {
            builder.connect().await?
        } else {
            builder.backplane(bus.connection()).build()?
        };
        instances.push(Instance {
            index,
            workload: Workload {
                cache,
                db: db.reopen()?,
                log: Arc::clone(&mirror.log),
                layout,
                popularity,
                bound: micros(config.bound),
                page_every: config.page_every,
                counters: Arc::new(Counters::default()),
                ttl: config.ttl,
            },
            readers: config.readers,
            write_rate: config.write_rate,
        });
    }
    for instance in &instances {
        instance.workload.cache.ready().await;
    }

    let started = Instant::now();
    let deadline = started + config.duration;
    let mut tasks = JoinSet::new();
    for instance in &instances {
        let instance = instance.clone();
        tasks.spawn(async move { (instance.index, instance.run(deadline).await) });
    }
    let channel = channel(&run_id);
    let injector = faults.map(|faults| faults.spawn(started.into_std(), channel));
    let mut progress = show_progress.then(|| Progress::start(config.duration));
    let mut ticks = tokio::time::interval(TERMINAL_REFRESH);
    let mut samples = tokio::time::interval(SAMPLE_EVERY);
    let mut timeline = Timeline::default();
    let mut undecided = vec![Vec::new(); instances.len()];
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => {
                    let (index, pending) = joined?;
                    undecided[index] = pending?;
                }
                None => break,
            },
            _ = ticks.tick() => if let Some(progress) = progress.as_mut() {
                progress.update(Tally::sum(&tallies(&instances)));
            },
            _ = samples.tick() => {
                timeline.push(started.elapsed().as_secs_f64(), tallies(&instances));
            }
        }
    }
    let elapsed = started.elapsed();
    timeline.push(elapsed.as_secs_f64(), tallies(&instances));
    // The server (if the injector had it) stays up until the instances are shut down.
    let (_server, faults) = match injector {
        Some(injector) => {
            let (server, records) = injector.await?;
            (Some(server), records)
        }
        None => (None, Vec::new()),
    };
    if let Some(progress) = progress {
        progress.finish();
    }
    settle(&instances, config.bound).await;

    // Every read started before now: a mirror complete up to now judges them all.
    mirror.complete().await?;
    let reports = instances
        .iter()
        .zip(undecided)
        .map(|(instance, pending)| {
            let still = instance.workload.judge_pending(pending);
            instance.report(still.len() as u64)
        })
        .collect::<Vec<_>>();
    for instance in &instances {
        instance.workload.cache.shutdown().await;
    }
    Ok(Summary {
        title: crate::title(config, elapsed),
        bound: config.bound,
        elapsed,
        instances: reports,
        timeline,
        faults,
    })
}

/// Waits (at most `bound`) until every peer has received every invalidation the writer
/// sent, so the counters in the summary are complete.
async fn settle(instances: &[Instance], bound: Duration) {
    // (sent, received) of each instance with a backplane.
    let counts = |i: &Instance| {
        let propagation = i.workload.cache.stats().propagation?;
        Some((
            propagation.invalidations_sent,
            propagation.invalidations_received,
        ))
    };
    let until = Instant::now() + bound;
    let total_sent: u64 = instances
        .iter()
        .filter_map(counts)
        .map(|(sent, _)| sent)
        .sum();
    while Instant::now() < until {
        let behind = instances
            .iter()
            .filter_map(counts)
            .any(|(sent, received)| received < total_sent.saturating_sub(sent));
        if !behind {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tallies(instances: &[Instance]) -> Vec<Tally> {
    instances.iter().map(Instance::tally).collect()
}

fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::own_redis::OwnRedis;

    fn short(config: Config) -> Config {
        Config {
            duration: Duration::from_millis(400),
            db_latency: Duration::from_micros(200),
            write_rate: 200.0,
            readers: 2,
            ..config
        }
    }

    /// A `--faults` run of `duration` on `redis`: 50 products in 5 catalogs, 100 writes a
    /// second, two readers an instance.
    fn with_faults(redis: crate::cli::RedisTarget, duration: Duration) -> Config {
        Config {
            duration,
            db_latency: Duration::from_micros(200),
            write_rate: 100.0,
            readers: 2,
            products: 50,
            catalogs: 5,
            redis: Some(redis),
            faults: true,
            ..Config::default()
        }
    }

    /// Runs the demo in one process on a fresh database for `config`: on the in-process
    /// bus without `redis_url`, with `faults` injected when given.
    async fn run_on_fresh_db(
        config: &Config,
        redis_url: Option<&str>,
        faults: Option<Injector>,
    ) -> Summary {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::create_database(&dir, config).unwrap();
        run(config, &path, redis_url, faults, false).await.unwrap()
    }

    /// Runs the demo in one process as `--faults` does (`config` made by [`with_faults`]):
    /// on the Redis it starts for itself, its faults injected there. Returns the run, once
    /// seen to have passed, and the URL the instances used.
    async fn passed_on_own_redis(config: &Config) -> (Summary, String) {
        let target = config.redis.clone();
        let redis = tokio::task::spawn_blocking(move || OwnRedis::start(target.as_ref()))
            .await
            .unwrap()
            .unwrap()
            .expect("with_faults asks for a Redis of the demo's own");
        let url = redis.url();
        let injector = Injector::new(redis, config.duration);
        let summary = run_on_fresh_db(config, Some(&url), Some(injector)).await;
        assert!(summary.passed(), "{}", summary.render());
        (summary, url)
    }

    /// The demo's claim, in small: three instances on the in-process bus, a writer, and
    /// not one stale read, while the caches spare the database most queries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_instances_on_the_bus_read_nothing_stale() {
        let config = short(Config {
            products: 50,
            catalogs: 5,
            ..Config::default()
        });
        let summary = run_on_fresh_db(&config, None, None).await;
        assert_eq!(summary.instances.len(), 3);
        assert!(summary.passed(), "{}", summary.render());
        let writer = &summary.instances[0];
        assert!(writer.writer && writer.totals.writes > 10, "{writer:?}");
        // Each write is a key removal and a catalog expiry, batched or not.
        assert!(
            writer.invalidations_sent >= writer.totals.writes,
            "{writer:?}"
        );
        for peer in &summary.instances[1..] {
            assert_eq!(
                peer.totals.invalidations_received, writer.invalidations_sent,
                "{peer:?}"
            );
            assert!(peer.lag_samples > 0, "{peer:?}");
            assert!(
                peer.totals.requests > 5 * peer.totals.db_queries,
                "{peer:?}"
            );
        }
    }

    /// The counterfactual: the same run without a backplane serves stale products, and
    /// the demo says so (the check is not one that cannot fail).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_backplane_the_check_catches_stale_reads() {
        let config = short(Config {
            no_backplane: true,
            products: 5,
            catalogs: 1,
            bound: Duration::from_millis(20),
            ..Config::default()
        });
        let summary = run_on_fresh_db(&config, None, None).await;
        assert!(!summary.passed());
        assert!(summary.stale_reads() > 0);
        assert_eq!(
            summary.instances[0].totals.stale_reads, 0,
            "the writer's own cache is coherent"
        );
        assert!(summary.render().contains("FAILED"));
    }

    /// `--faults` in one process: the demo kills the subscribers and restarts its Redis
    /// during the run; every fault happens, every instance notices the restart (it is
    /// disconnected, and clears itself when it reconnects), and still no read is stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_faults_are_ridden_through_and_costed() {
        let config = with_faults(crate::cli::RedisTarget::Auto, Duration::from_secs(3));
        let (summary, _) = passed_on_own_redis(&config).await;
        assert_eq!(summary.faults.len(), 3, "{:?}", summary.faults);
        assert_eq!(
            summary.faults[0].outcome, "3 subscriber connections killed",
            "{:?}",
            summary.faults
        );
        assert!(
            summary.faults[1]
                .outcome
                .starts_with("stopped, started again"),
            "{:?}",
            summary.faults
        );
        let costs = crate::faults::costs(&summary.timeline, &summary.faults);
        let restart = &costs[1];
        assert!(restart.disconnected.iter().all(|&us| us > 0), "{restart:?}");
        for instance in &summary.instances {
            assert!(instance.totals.loss_clears >= 1, "{instance:?}");
            assert!(instance.totals.disconnected_us > 0, "{instance:?}");
        }
        let text = summary.render();
        assert!(text.contains("Faults (--faults)"), "{text}");
    }

    /// `--redis auto-cluster --faults` in one process, short: the channel's primary fails
    /// over to its replica mid-run; every instance notices (its sharded subscription moves to
    /// the new primary, and the gap is a loss it clears), invalidations reach every peer
    /// again afterwards, and no read is stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_failover_is_ridden_through_and_costed() {
        let config = with_faults(crate::cli::RedisTarget::AutoCluster, Duration::from_secs(6));
        let (summary, url) = passed_on_own_redis(&config).await;
        assert!(url.starts_with("redis+cluster://"), "{url}");
        assert_eq!(summary.faults.len(), 1, "{:?}", summary.faults);
        assert_eq!(
            summary.faults[0].kind,
            crate::faults::FaultKind::ClusterFailover
        );
        assert!(
            summary.faults[0].outcome.contains("took over slot"),
            "{:?}",
            summary.faults
        );
        // Every instance noticed the loss: it repaired from the replay log (which the
        // promoted replica holds too) or cleared.
        for instance in &summary.instances {
            assert!(
                instance.totals.loss_clears + instance.totals.loss_repairs >= 1,
                "{instance:?}"
            );
        }
        // Invalidations flow again: every peer received some in the run's last 1.5 s, well
        // after the failover (at 1.8 s) was over.
        let end = summary.timeline.end().unwrap();
        let late = summary
            .timeline
            .deltas_between(end - 1.5, end, |t| t.invalidations_received);
        assert!(
            late[1..].iter().all(|&n| n > 0),
            "{late:?}\n{}",
            summary.render()
        );
        let text = summary.render();
        assert!(text.contains("CLUSTER FAILOVER"), "{text}");
        assert!(text.contains("Redis Cluster backplane"), "{text}");
    }
}
