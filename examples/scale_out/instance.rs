//! One instance of the demo's service: its cache, its readers, and (instance 0) the writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nearcache::{BackplaneOptions, Cache, CacheOptions, RedisConfig, StoreOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::DemoError;
use crate::cli::Config;
use crate::report::InstanceReport;
use crate::timeline::Tally;
use crate::workload::{Counters, PendingRead, Workload};

/// One instance: a workload on its own cache.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// Its number; instance 0 runs the writer.
    pub(crate) index: usize,
    /// Its cache, database and counters.
    pub(crate) workload: Workload,
    /// Concurrent readers.
    pub(crate) readers: usize,
    /// Writes per second (instance 0 only).
    pub(crate) write_rate: f64,
}

impl Instance {
    /// Whether this instance runs the writer.
    pub(crate) fn is_writer(&self) -> bool {
        self.index == 0 && self.write_rate > 0.0
    }

    /// Runs the readers (and the writer) until `deadline`. Returns the reads the stale-read
    /// check could not judge yet.
    ///
    /// # Errors
    ///
    /// A reader or the writer panicked.
    pub(crate) async fn run(&self, deadline: Instant) -> Result<Vec<PendingRead>, DemoError> {
        let watcher = tokio::spawn(watch_backplane(
            self.workload.cache.clone(),
            Arc::clone(&self.workload.counters),
        ));
        let mut tasks = JoinSet::new();
        let seed = (self.index as u64) << 32;
        for reader in 0..self.readers {
            let work = self.workload.clone();
            tasks.spawn(work.read(deadline, seed + reader as u64));
        }
        if self.is_writer() {
            let work = self.workload.clone();
            let rate = self.write_rate;
            tasks.spawn(async move {
                work.write(rate, deadline, seed + u64::from(u32::MAX)).await;
                Vec::new()
            });
        }
        let mut pending = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(reads) => pending.extend(reads),
                Err(error) => {
                    watcher.abort();
                    return Err(error.into());
                }
            }
        }
        watcher.abort();
        Ok(pending)
    }

    /// This instance's running totals now.
    pub(crate) fn tally(&self) -> Tally {
        Tally::of(&self.workload.counters, &self.workload.cache.stats())
    }

    /// This instance's numbers now.
    pub(crate) fn report(&self, unchecked_reads: u64) -> InstanceReport {
        InstanceReport::gather(
            self.index,
            self.is_writer(),
            &self.workload.counters,
            &self.workload.cache.stats(),
            unchecked_reads,
        )
    }
}

/// How often the backplane watcher looks at the cache.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// Adds up, until aborted, how long `cache` is disconnected from its backplane and how long
/// its reads bypass it (to [`WATCH_EVERY`]'s precision), and notes the longest its outbox
/// got.
async fn watch_backplane(cache: Cache, counters: Arc<Counters>) {
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let step = u64::try_from((now - last).as_micros()).unwrap_or(u64::MAX);
        last = now;
        if let Some(propagation) = cache.stats().propagation {
            if !propagation.connected {
                counters.disconnected_us.fetch_add(step, Ordering::Relaxed);
            }
            if propagation.bypassing_reads {
                counters.bypass_us.fetch_add(step, Ordering::Relaxed);
            }
            let queued = u64::try_from(propagation.outbox_len).unwrap_or(u64::MAX);
            counters.outbox_peak.fetch_max(queued, Ordering::Relaxed);
        }
    }
}

/// The cache options of every instance of a run: room for every entry, entries that outlive
/// the run (only invalidations make them go), and a backplane whose loss detection fits
/// inside the stale-read bound: heartbeats every quarter of it, reads bypass the cache once
/// the backplane has been down for half of it, and a lost connection is retried at least
/// every quarter of it. The last matters after a Redis restart: the peers' subscriptions are
/// back and they serve from their caches again, but the writer's invalidations wait in its
/// outbox until *its* publisher reconnects — with the default backoff (up to 5 s) that
/// window is longer than a 1 s bound.
pub(crate) fn cache_options(
    config: &Config,
    run_id: &str,
    redis_url: Option<&str>,
) -> CacheOptions {
    let bound = config.bound;
    CacheOptions {
        store: StoreOptions {
            max_capacity: u64::from(config.products) + u64::from(config.catalogs) + 1_024,
            fail_safe_max_duration: config.fail_safe,
            ..StoreOptions::default()
        },
        name: Some("products".to_owned()),
        backplane: BackplaneOptions {
            redis: redis_url.map(|url| RedisConfig {
                app: app(run_id),
                ..RedisConfig::new(url)
            }),
            heartbeat_interval: (bound / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(5)),
            max_staleness: Some(bound / 2),
            replay: !config.no_replay,
            reconnect_initial_delay: (bound / 16)
                .clamp(Duration::from_millis(10), Duration::from_millis(100)),
            reconnect_max_delay: (bound / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(5)),
            ..BackplaneOptions::default()
        },
    }
}

/// The application name of run `run_id`, which names its channel.
fn app(run_id: &str) -> String {
    format!("demo-{run_id}")
}

/// The channel of run `run_id`, Redis or not (the fault injector names it).
pub(crate) fn channel(run_id: &str) -> String {
    RedisConfig::for_app(&app(run_id)).channel_name()
}

/// A run id unique on this host: names the run's Redis keys and channel.
pub(crate) fn new_run_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{}-{micros}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fit_loss_detection_inside_the_bound() {
        let config = Config {
            bound: Duration::from_millis(400),
            ..Config::default()
        };
        let options = cache_options(&config, "r1", Some("redis://127.0.0.1:1"));
        assert_eq!(
            options.backplane.heartbeat_interval,
            Duration::from_millis(100)
        );
        assert_eq!(
            options.backplane.max_staleness,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            options.backplane.reconnect_initial_delay,
            Duration::from_millis(25)
        );
        assert_eq!(
            options.backplane.reconnect_max_delay,
            Duration::from_millis(100)
        );
        assert_eq!(
            options.backplane.redis.map(|redis| redis.channel_name()),
            Some(channel("r1"))
        );
        assert_eq!(channel("r1"), "nearcache:demo-r1:invalidations");
        assert!(options.store.max_capacity > u64::from(config.products + config.catalogs));
        assert_ne!(new_run_id(), "");
    }
}
