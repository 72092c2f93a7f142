//! Detached loads: a detached loader's factory runs on the store's runtime, so its caller
//! can stop waiting at the soft or hard timeout while the load goes on.
//!
//! When a detached loader (`Send + 'static` factory) leads a load and a timeout could apply
//! (a hard timeout is set, or the key's expired value is kept with a soft timeout), it hands
//! its leadership and its factory to a *runner* on the blocking pool of the runtime the
//! store was built in, and waits for the flight like any other caller (see `timeout`): it
//! may take the kept value at the soft timeout, or the kept value or the timeout error at
//! the hard timeout. The runner finishes the load whatever its caller did, and its value is
//! stored under the no-stale-insert rule of every load (an invalidation that overlapped it
//! keeps it out). At the hard timeout the runner cancels an async factory
//! (`OnHardTimeout::Cancel`: its future is dropped, the flight ends with the fail-safe value
//! or the timeout) or lets it finish (`Background`); a blocking factory cannot be stopped and
//! always finishes.
//!
//! The caller and its runner share a [`Handoff`]: the factory (taken by the runner when it
//! starts; still there if the runner never ran, as when the runtime shut down, and then the
//! caller runs it in place) and the panic of a factory that panicked with no fail-safe value
//! to stand in (the caller resumes it, as a caller running its factory in place would
//! panic). The runner records the panic before its flight is abandoned, under the handoff's
//! lock, so the caller that sees the flight abandoned finds it. A panic of the runner outside
//! the factory (the runtime's timers panic once the runtime has shut down) counts as the
//! factory's: the fail-safe value stands in, or the caller resumes it.
//!
//! Without a runtime (a store built outside one) the detached loaders run their factory in
//! place, as the other loaders do; the first time a timeout could not be honoured that way
//! is logged.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nearcache_keys::Key;
use parking_lot::Mutex;

use crate::entry::EntryOptions;
use crate::error::LoadError;
use crate::flight::Flight;
use crate::load::{CatchUnwind, DetachedLeader, Failed, Leader, Turn, run_blocking};
use crate::source::Source;
use crate::store::{Store, StoreInner};
use crate::timeout::Waited;
use crate::value::Shape;

/// What a detached caller and its runner share.
struct Handoff<F> {
    state: Mutex<HandoffState<F>>,
}

struct HandoffState<F> {
    /// The factory, until the runner takes it.
    factory: Option<F>,
    /// The factory's panic, when nothing stood in for it.
    panic: Option<Box<dyn Any + Send>>,
    /// Whether the caller stopped waiting without the flight's outcome (it answered at a
    /// timeout, or was dropped): a fail-safe value the runner then finds is announced by
    /// the runner, since no caller announces it.
    left: bool,
}

impl<F> Handoff<F> {
    fn new(factory: F) -> Self {
        Handoff {
            state: Mutex::new(HandoffState {
                factory: Some(factory),
                panic: None,
                left: false,
            }),
        }
    }

    fn take_factory(&self) -> Option<F> {
        self.state.lock().factory.take()
    }
}

/// The leading caller's wait for its runner's flight: dropped before it took the flight's
/// outcome (it answered at a timeout, or its future was dropped), it records that the caller
/// left. Under the handoff's lock, against the runner's end: if fail-safe already stood in
/// for the runner's factory, nobody announced it, so this does (one `ExpiredServed` per
/// background load that fell back on the expired value, none for the runner of a caller
/// that takes the outcome and announces its own).
struct Waiting<'a, F> {
    handoff: &'a Handoff<F>,
    flight: &'a Flight,
    inner: &'a StoreInner,
    took_outcome: bool,
}

impl<F> Waiting<'_, F> {
    /// What the caller gets from its wait: the answer it was given at a timeout, or the
    /// flight's outcome resolved as any waiter's. `None`: ask the handoff how to go on.
    fn settle<S: Shape, E: Send + Sync + 'static>(
        mut self,
        waited: Waited<'_, S, E>,
        joined_at: u64,
        key: &Key,
    ) -> Option<Result<S, LoadError<E>>> {
        match waited {
            Waited::Answered(answer) => Some(answer),
            Waited::Outcome(outcome) => {
                self.took_outcome = true;
                self.inner
                    .resolve_marked(outcome, self.flight, joined_at, key)
            }
        }
    }
}

impl<F> Drop for Waiting<'_, F> {
    fn drop(&mut self) {
        if self.took_outcome {
            return;
        }
        let mut state = self.handoff.state.lock();
        state.left = true;
        if self.flight.ended_fail_safe() {
            self.inner.announce_expired(Source::FailSafe);
        }
    }
}

/// How a detached caller goes on after its runner's flight ended without an answer.
enum AfterRunner<F> {
    /// The runner never ran: the factory is back, to run in place.
    InPlace(F),
    /// Go through the table again (join a newer load, or get a hit).
    Again,
}

impl Store {
    /// The runtime a detached load of `key` runs on, if it needs one: a timeout could apply
    /// and the store has a runtime (else it runs in place, logged once).
    fn detach_runtime(&self, key: &Key) -> Option<tokio::runtime::Handle> {
        let inner = &self.inner;
        if !inner.enabled
            || (inner.hard_timeout.is_none() && inner.soft_timeout_for(key, false).is_none())
        {
            return None;
        }
        let runtime = inner.runtime.clone();
        if runtime.is_none() && !inner.no_runtime_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key = %inner.shown(key),
                "a timeout applies to a detached load but the store was built outside a tokio \
                 runtime: its factory runs in place, so its caller waits for it (up to the \
                 hard timeout for async callers, which cancels it)"
            );
        }
        runtime
    }

    /// The detached async get-or-create (see the module docs).
    pub(crate) async fn load_detached_async<S, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<S, LoadError<E>>
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        let Some(runtime) = self.detach_runtime(key) else {
            return self.inner.load_async::<S, E, F>(key, factory).await;
        };
        let inner = &*self.inner;
        let bypass = inner.read_bypass();
        let handoff = Arc::new(Handoff::new(factory));
        let mut counted = false;
        loop {
            let leader = match inner
                .lead_or_answer_async::<S, E>(key, bypass, &mut counted)
                .await
            {
                Turn::Lead(leader) => leader,
                Turn::Answer(answer) => return answer,
            };
            let flight = Arc::clone(leader.flight());
            let joined_at = flight.start_epoch();
            let detached = leader.detach(Arc::clone(&self.inner));
            let (runner_handoff, runner_runtime) = (Arc::clone(&handoff), runtime.clone());
            drop(runtime.spawn_blocking(move || {
                run_async::<S, E, F>(detached, &runner_runtime, &runner_handoff);
            }));
            let waiting = Waiting {
                handoff: &handoff,
                flight: &flight,
                inner,
                took_outcome: false,
            };
            let waited = inner.wait_timed::<S, E>(&flight, key, bypass).await;
            if let Some(result) = waiting.settle(waited, joined_at, key) {
                return result;
            }
            match after_runner(&handoff) {
                AfterRunner::Again => {}
                AfterRunner::InPlace(factory) => {
                    return inner.load_async::<S, E, F>(key, factory).await;
                }
            }
        }
    }

    /// The detached blocking get-or-create (see the module docs).
    pub(crate) fn load_detached_sync<S, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<S, LoadError<E>>
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        let Some(runtime) = self.detach_runtime(key) else {
            return self.inner.load_sync::<S, E, F>(key, factory);
        };
        let inner = &*self.inner;
        let bypass = inner.read_bypass();
        let handoff = Arc::new(Handoff::new(factory));
        let mut counted = false;
        loop {
            let leader = match inner.lead_or_answer_sync::<S, E>(key, bypass, &mut counted) {
                Turn::Lead(leader) => leader,
                Turn::Answer(answer) => return answer,
            };
            let flight = Arc::clone(leader.flight());
            let joined_at = flight.start_epoch();
            let detached = leader.detach(Arc::clone(&self.inner));
            let runner_handoff = Arc::clone(&handoff);
            drop(runtime.spawn_blocking(move || {
                run_sync::<S, E, F>(detached, &runner_handoff);
            }));
            let waiting = Waiting {
                handoff: &handoff,
                flight: &flight,
                inner,
                took_outcome: false,
            };
            let waited = inner.wait_sync_waited::<S, E>(&flight, key, bypass);
            if let Some(result) = waiting.settle(waited, joined_at, key) {
                return result;
            }
            match after_runner(&handoff) {
                AfterRunner::Again => {}
                AfterRunner::InPlace(factory) => {
                    return inner.load_sync::<S, E, F>(key, factory);
                }
            }
        }
    }
}

/// What a detached caller does once its runner's flight ended with no answer for it (it was
/// abandoned): resume the factory's panic, take the factory back if the runner never ran,
/// or go again.
fn after_runner<F>(handoff: &Handoff<F>) -> AfterRunner<F> {
    let mut state = handoff.state.lock();
    if let Some(panic) = state.panic.take() {
        drop(state);
        resume_unwind(panic);
    }
    match state.factory.take() {
        Some(factory) => AfterRunner::InPlace(factory),
        None => AfterRunner::Again,
    }
}

/// Ends the runner's load with `result`, under the handoff's lock: a panic that nothing
/// stood in for is recorded there before the flight is abandoned.
fn finish<S, E, F>(
    inner: &StoreInner,
    leader: Leader<'_>,
    entry: EntryOptions,
    result: Result<S::Loaded, Failed<E>>,
    handoff: &Handoff<F>,
) where
    S: Shape,
    E: Send + Sync + 'static,
{
    let key = leader.key().clone();
    let mut state = handoff.state.lock();
    let finished = catch_unwind(AssertUnwindSafe(|| {
        leader.finish_unannounced::<S, E>(entry, result)
    }));
    match finished {
        // Fail-safe stood in: announced here only if the caller left (see `Waiting`).
        Ok((_, true)) if state.left => inner.announce_expired(Source::FailSafe),
        Ok(_) => {}
        Err(panic) => {
            state.panic = Some(panic);
            drop(state);
            tracing::debug!(key = %inner.shown(&key), "a detached factory panicked: its caller resumes the panic, if it still waits");
        }
    }
}

/// The runner of a detached async load: drives the factory on this blocking-pool thread
/// with `runtime`'s handle, under the hard timeout and its action.
fn run_async<S, E, F>(
    detached: DetachedLeader,
    runtime: &tokio::runtime::Handle,
    handoff: &Handoff<F>,
) where
    S: Shape,
    E: Send + Sync + 'static,
    F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
{
    let Some(factory) = handoff.take_factory() else {
        return; // dropping `detached` abandons the flight
    };
    let inner = Arc::clone(detached.inner_arc());
    detached.run(|leader| {
        let mut entry = leader.entry();
        // A panic outside the factory (the runtime's timers panic once it has shut down)
        // ends the load as the factory's own would: the leader is still held here, so the
        // caller finds the panic (or the fail-safe value) instead of an abandoned flight
        // and a factory gone.
        let result = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async {
                let run = CatchUnwind(std::pin::pin!(factory(&mut entry)));
                inner.run_detached(&leader, run).await
            })
        }))
        .unwrap_or_else(|panic| Err(Failed::Panic(panic)));
        finish::<S, E, F>(&inner, leader, entry, result, handoff);
    });
}

/// The runner of a detached blocking load: runs the factory on this blocking-pool thread
/// (to the end: a blocking function cannot be stopped).
fn run_sync<S, E, F>(detached: DetachedLeader, handoff: &Handoff<F>)
where
    S: Shape,
    E: Send + Sync + 'static,
    F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
{
    let Some(factory) = handoff.take_factory() else {
        return;
    };
    let inner = Arc::clone(detached.inner_arc());
    detached.run(|leader| {
        let mut entry = leader.entry();
        let result = run_blocking(factory, &mut entry);
        finish::<S, E, F>(&inner, leader, entry, result, handoff);
    });
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::convert::Infallible;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::mpsc;
    use std::time::Duration;

    use nearcache_keys::Key;

    use crate::{Store, StoreOptions};

    const WAIT: Duration = Duration::from_secs(10);
    const SECOND: Duration = Duration::from_secs(1);

    /// A runtime for a store to be built in: one worker, and the blocking pool that its
    /// detached loads run on.
    fn one_worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A detached load whose factory fails while its caller still waits hands that caller
    /// the kept value: one caller, one `ExpiredServed` (the runner, which hands the value
    /// to nobody, raises none). Once the caller has left (its soft timeout), the failed
    /// background load that re-arms the value raises its own. Every runner has ended when
    /// the events are counted: the runtime's shutdown waits for its blocking pool.
    #[test]
    fn a_detached_load_raises_expired_served_once_per_caller_handed_the_value() {
        for caller_leaves in [false, true] {
            let runtime = one_worker_runtime();
            let (clock, mock) = quanta::Clock::mock();
            let store = {
                let _in = runtime.enter();
                Store::with_clock(
                    StoreOptions {
                        fail_safe_max_duration: Some(600 * SECOND),
                        soft_timeout: caller_leaves.then_some(Duration::from_millis(1)),
                        hard_timeout: Some(600 * SECOND),
                        ..StoreOptions::default()
                    },
                    clock,
                )
                .unwrap()
            };
            let (served, events) = mpsc::channel();
            assert!(store.on_expired_served(move |source| served.send(source).unwrap()));
            let k = Key::from_text("k");
            runtime.block_on(async {
                store
                    .get_or_create_detached(&k, async |entry| {
                        entry.time_to_live(10 * SECOND);
                        Ok::<_, Infallible>(1_u64)
                    })
                    .await
                    .unwrap();
                mock.increment(11 * SECOND);
                let (release, released) = tokio::sync::oneshot::channel::<()>();
                let mut release = Some(release);
                let load = store.get_or_create_detached_with_source(&k, async move |_| {
                    let _ = released.await;
                    Err::<u64, _>("down")
                });
                if !caller_leaves {
                    release.take().unwrap().send(()).unwrap();
                }
                let got = load.await.unwrap();
                assert_eq!(*got.value, 1, "caller leaves {caller_leaves}");
                if caller_leaves {
                    release.take().unwrap().send(()).unwrap();
                }
            });
            runtime.shutdown_timeout(WAIT);
            let expected = if caller_leaves {
                vec![crate::Source::SoftTimeout, crate::Source::FailSafe]
            } else {
                vec![crate::Source::FailSafe]
            };
            assert_eq!(
                events.try_iter().collect::<Vec<_>>(),
                expected,
                "caller leaves {caller_leaves}"
            );
        }
    }

    /// The runtime a detached load runs on shuts down under it (its timers end with a
    /// panic in the runner, outside the factory): the caller, on another runtime, ends —
    /// with that panic, as a load in place would — instead of leading again and again
    /// without a factory, never yielding.
    #[test]
    fn a_detached_caller_ends_when_its_runners_runtime_shuts_down_under_it() {
        let store_runtime = one_worker_runtime();
        let store = {
            let _in = store_runtime.enter();
            Store::new(StoreOptions {
                hard_timeout: Some(Duration::from_secs(600)),
                ..StoreOptions::default()
            })
            .unwrap()
        };
        let (started, factory_started) = mpsc::channel();
        let (done, caller_done) = mpsc::channel();
        let caller = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let k = Key::from_text("k");
            let ended = catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(store.get_or_create_detached(&k, async move |_| {
                    started.send(()).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(1_u64)
                }))
            }));
            done.send(ended.is_err()).unwrap();
        });
        factory_started
            .recv_timeout(WAIT)
            .expect("the runner started the factory");
        store_runtime.shutdown_background();
        let panicked = caller_done
            .recv_timeout(WAIT)
            .expect("the caller ended after the runtime shut down");
        assert!(panicked, "the caller resumed the runner's panic");
        caller.join().unwrap();
    }
}
