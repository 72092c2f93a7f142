//! The background purger: dead entries stop holding memory and capacity without anyone
//! touching their keys.
//!
//! Expiring a region only flips a token, so its entries stay in the cache until something
//! removes them. Each store runs one purger thread that sweeps the cache and then drops
//! unused region tokens. It wakes when a token is expired (region expiry, clear) and every
//! `purge_interval` for entries that expired by time. It holds only a `Weak` reference to the
//! store, so dropping the store stops it.
//!
//! It never competes with the threads it serves:
//! - **Deferred.** Woken by a request, it first sleeps [`MIN_DEFER`] (or four times its last
//!   pass, if longer) before it starts. The caller that woke it, even on the same and only
//!   CPU, gets that CPU back at once, and a burst of expiries coalesces into one pass.
//! - **Rate-bounded.** That sleep keeps the purger's share of a core at about a fifth while
//!   expiries keep coming, however long a pass over a big cache takes.
//! - **Skipped when pointless.** A requested pass whose expiries killed no entry (the tokens
//!   had no holders: see `Regions::held_expiries`) only collects unused tokens.
//! - **Incremental.** A sweep holds a shard's write lock for one small batch of removals at a
//!   time (see `Backend::sweep`).

use std::io;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Where the background purger is: requests made, requests served, passes run.
///
/// A pass *serves* every request made before it started, so after
/// [`expire_region`](crate::Store::expire_region) (which requests a pass),
/// `served >= requested` read afterwards means the expired entries are gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeProgress {
    /// Purge requests made so far (each token expiry makes one).
    pub requested: u64,
    /// The highest request number a finished pass started after.
    pub served: u64,
    /// Passes finished, requested or periodic (`purge_now` included).
    pub passes: u64,
}

#[derive(Default)]
struct State {
    progress: PurgeProgress,
    shutdown: bool,
}

/// Shared between a store and its purger thread.
#[derive(Default)]
pub(crate) struct PurgeSignal {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

/// Why the purger woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A request (a token expiry): a sweep is needed only if the expiry killed entries.
    Requested,
    /// The interval passed: entries may have expired by time, so sweep.
    Interval,
    /// The store is gone.
    Shutdown,
}

/// The shortest deferral of a requested pass.
pub(crate) const MIN_DEFER: Duration = Duration::from_millis(1);

impl PurgeSignal {
    /// Asks for a pass soon.
    pub(crate) fn request(&self) {
        self.state.lock().progress.requested += 1;
        self.wake.notify_one();
    }

    /// Tells the purger to exit.
    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_one();
    }

    /// Called as a pass starts: the requests it will serve.
    pub(crate) fn begin_pass(&self) -> u64 {
        self.state.lock().progress.requested
    }

    /// Called as a pass ends.
    pub(crate) fn end_pass(&self, served: u64) {
        {
            let mut state = self.state.lock();
            state.progress.served = state.progress.served.max(served);
            state.progress.passes += 1;
        }
        self.done.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn is_shut_down(&self) -> bool {
        self.state.lock().shutdown
    }

    pub(crate) fn progress(&self) -> PurgeProgress {
        self.state.lock().progress
    }

    /// Blocks until `until(progress)` holds or `timeout` passes; returns whether it holds.
    pub(crate) fn wait_until(
        &self,
        until: impl Fn(&PurgeProgress) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.state.lock();
        loop {
            if until(&state.progress) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if self.done.wait_until(&mut state, deadline).timed_out() {
                        return until(&state.progress);
                    }
                }
                None => self.done.wait(&mut state),
            }
        }
    }

    /// The purger's sleep: until a request is pending, `interval` passes, or shutdown.
    fn wait_for_work(&self, interval: Duration) -> Wake {
        let deadline = Instant::now().checked_add(interval);
        let mut state = self.state.lock();
        loop {
            if state.shutdown {
                return Wake::Shutdown;
            }
            if state.progress.requested > state.progress.served {
                return Wake::Requested;
            }
            match deadline {
                Some(deadline) => {
                    if self.wake.wait_until(&mut state, deadline).timed_out() {
                        return if state.shutdown {
                            Wake::Shutdown
                        } else {
                            Wake::Interval
                        };
                    }
                }
                None => self.wake.wait(&mut state),
            }
        }
    }

    /// Sleeps `pause` unless shutdown comes first; returns whether it did not.
    fn pause(&self, pause: Duration) -> bool {
        let Some(deadline) = Instant::now().checked_add(pause) else {
            return true;
        };
        let mut state = self.state.lock();
        while !state.shutdown {
            if self.wake.wait_until(&mut state, deadline).timed_out() {
                return !state.shutdown;
            }
        }
        false
    }
}

/// Starts the purger thread of `target`: it runs `purge` on each wake-up while `target` lives,
/// telling it why it woke. A requested pass is deferred (module docs). The handle may be
/// dropped (the thread then runs detached).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    target: Weak<T>,
    signal: Arc<PurgeSignal>,
    interval: Duration,
    purge: fn(&T, Wake),
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(String::from("nearcache-purge"))
        .spawn(move || {
            let mut last_pass = Duration::ZERO;
            loop {
                let wake = signal.wait_for_work(interval);
                if wake == Wake::Shutdown {
                    break;
                }
                if wake == Wake::Requested
                    && !signal.pause(MIN_DEFER.max(last_pass.saturating_mul(4)).min(interval))
                {
                    break;
                }
                // Strong only for the pass, so the store can be dropped while we sleep.
                let Some(target) = target.upgrade() else {
                    break;
                };
                let started = Instant::now();
                purge(&target, wake);
                last_pass = started.elapsed();
            }
            tracing::trace!("nearcache purger stopped");
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Target {
        passes: AtomicUsize,
        signal: Arc<PurgeSignal>,
    }

    fn pass(target: &Target, _: Wake) {
        let served = target.signal.begin_pass();
        target.passes.fetch_add(1, Ordering::SeqCst);
        target.signal.end_pass(served);
    }

    fn start(interval: Duration) -> (Arc<Target>, Arc<PurgeSignal>, JoinHandle<()>) {
        let signal = Arc::new(PurgeSignal::default());
        let target = Arc::new(Target {
            passes: AtomicUsize::new(0),
            signal: Arc::clone(&signal),
        });
        let handle = spawn(Arc::downgrade(&target), Arc::clone(&signal), interval, pass).unwrap();
        (target, signal, handle)
    }

    #[test]
    fn passes_serve_requests_made_before_they_start() {
        let (target, signal, handle) = start(Duration::from_secs(3600));
        for round in 1..=5 {
            signal.request();
            let requested = signal.progress().requested;
            assert!(signal.wait_until(|p| p.served >= requested, Duration::from_secs(10)));
            assert!(target.passes.load(Ordering::SeqCst) >= round);
        }
        signal.shutdown();
        handle.join().unwrap();
    }

    #[test]
    fn the_interval_alone_runs_passes() {
        let (target, signal, handle) = start(Duration::from_millis(5));
        assert!(signal.wait_until(|p| p.passes >= 3, Duration::from_secs(10)));
        assert_eq!(signal.progress().requested, 0);
        assert!(target.passes.load(Ordering::SeqCst) >= 3);
        signal.shutdown();
        handle.join().unwrap();
    }

    #[test]
    fn a_requested_pass_waits_its_deferral_and_coalesces_a_burst() {
        let (target, signal, handle) = start(Duration::from_secs(3600));
        let asked = Instant::now();
        for _ in 0..100 {
            signal.request();
        }
        assert!(signal.wait_until(|p| p.served >= 100, Duration::from_secs(10)));
        assert!(
            asked.elapsed() >= MIN_DEFER,
            "the pass started no sooner than its deferral"
        );
        assert!(
            target.passes.load(Ordering::SeqCst) < 100,
            "a burst of requests made during the deferral shares passes"
        );
        signal.shutdown();
        handle.join().unwrap();
    }

    #[test]
    fn shutdown_interrupts_a_deferral() {
        let signal = PurgeSignal::default();
        signal.shutdown();
        assert!(!signal.pause(Duration::from_secs(3600)), "returns at once");
    }

    #[test]
    fn the_thread_exits_once_its_target_is_dropped() {
        let (target, signal, handle) = start(Duration::from_secs(3600));
        drop(target);
        signal.request();
        handle.join().unwrap();
        assert_eq!(signal.progress().passes, 0, "no pass ran without a target");
    }

    #[test]
    fn waiting_for_progress_times_out_when_none_comes() {
        let signal = PurgeSignal::default();
        assert!(!signal.wait_until(|p| p.passes > 0, Duration::from_millis(1)));
        assert!(signal.wait_until(|p| p.passes == 0, Duration::MAX));
    }
}
