//! The background purger: dead entries stop holding memory and capacity without anyone
//! touching their keys.
//!
//! Expiring a region only flips a token, so its entries stay in the cache until something
//! removes them. Each store runs one purger thread that sweeps the cache and then drops
//! unused region tokens. It looks for requests (a token expiry: region expiry, clear) every
//! [`POLL`], and sweeps every `purge_interval` for entries that expired by time; idle, it costs
//! 20 wake-ups a second. It holds only a `Weak` reference to the store, so dropping the store
//! stops it.
//!
//! It never competes with the threads it serves:
//! - **Never woken by a caller.** A request (a token expiry) only bumps a counter; the purger
//!   notices it at its next tick, at most [`POLL`] later. Waking a sleeping thread would let
//!   the scheduler hand it the caller's CPU at once (a freshly woken thread is favoured): on
//!   a machine with one free CPU or none, the caller of `expire_region` then waited for the
//!   whole pass, or for another process's time slice. A burst of expiries coalesces into one
//!   pass.
//! - **Rate-bounded.** After a pass that took `d`, the next one waits at least `9 × d`:
//!   the purger uses at most a tenth of a core while expiries keep coming, however long a
//!   pass over a big cache takes (dead entries then linger a little longer; reads never
//!   return them).
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
}

/// How often an idle purger looks for requests (its longest delay before a requested pass).
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// A pass that took `d` is followed by at least `PAUSE_FACTOR × d` of sleep.
const PAUSE_FACTOR: u32 = 9;

impl PurgeSignal {
    /// Asks for a pass soon (within [`POLL`], or the rate bound). Does not wake the purger:
    /// see the module docs.
    pub(crate) fn request(&self) {
        self.state.lock().progress.requested += 1;
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

    #[cfg(all(test, not(shuttle)))]
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

    /// Whether a request is waiting for a pass.
    fn pending(&self) -> bool {
        let state = self.state.lock();
        state.progress.requested > state.progress.served
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

/// Starts the purger thread of `target`: every [`POLL`] (or `interval`, if shorter) it runs
/// `purge` if a request is pending or `interval` has passed since the last timed pass,
/// telling it why; never sooner than the rate bound allows. The handle may be dropped (the
/// thread then runs detached).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    target: Weak<T>,
    signal: Arc<PurgeSignal>,
    interval: Duration,
    purge: fn(&T, Wake),
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(String::from("nearcache-purge"))
        .spawn(move || {
            let tick = POLL.min(interval);
            let mut pause = tick;
            let mut last_timed = Instant::now();
            loop {
                if !signal.pause(pause) {
                    break;
                }
                let wake = if last_timed.elapsed() >= interval {
                    Wake::Interval
                } else if signal.pending() {
                    Wake::Requested
                } else {
                    pause = tick;
                    continue;
                };
                // Strong only for the pass, so the store can be dropped while we sleep.
                let Some(target) = target.upgrade() else {
                    break;
                };
                let started = Instant::now();
                if wake == Wake::Interval {
                    last_timed = started;
                }
                purge(&target, wake);
                pause = tick.max(started.elapsed().saturating_mul(PAUSE_FACTOR));
            }
            tracing::trace!("nearcache purger stopped");
        })
}

#[cfg(all(test, not(shuttle)))]
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
    fn a_burst_of_requests_shares_passes() {
        let (target, signal, handle) = start(Duration::from_secs(3600));
        for _ in 0..100 {
            signal.request();
        }
        assert!(signal.wait_until(|p| p.served >= 100, Duration::from_secs(10)));
        assert!(
            target.passes.load(Ordering::SeqCst) < 100,
            "requests made between two ticks share a pass"
        );
        signal.shutdown();
        handle.join().unwrap();
    }

    #[test]
    fn shutdown_interrupts_the_purgers_sleep() {
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
