//! The flight table's primitives in the unit-test build with `--cfg shuttle`: shuttle's, so
//! the model checker decides every interleaving of the flights (see `shuttle_tests`).
//!
//! `event_listener` blocks the OS thread, which would stall shuttle (it runs every modelled
//! thread on one OS thread), so the modelled [`Event`] is built from shuttle's `Mutex` and
//! `Condvar`, and from wakers for async waiters.

use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

pub(crate) use shuttle::sync::MutexGuard;
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicUsize};

/// A modelled thread's or task's identity: every one of them runs on the same OS thread.
pub(crate) type ThreadToken = shuttle::thread::ThreadId;

/// The running modelled thread's or task's [`ThreadToken`].
pub(crate) fn current_thread() -> ThreadToken {
    shuttle::thread::current().id()
}

/// shuttle's `Mutex` with `parking_lot`'s signature: `lock` returns the guard (a poisoned
/// lock is still handed out, as `parking_lot` has no poisoning).
pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(shuttle::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `event_listener::Event` for shuttle: a generation number bumped by each notify.
pub(crate) struct Event {
    state: shuttle::sync::Mutex<EventState>,
    changed: shuttle::sync::Condvar,
}

struct EventState {
    generation: u64,
    wakers: Vec<Waker>,
}

/// A waiter registered with an [`Event`]: `.await` it, or [`Listener::wait`] on it.
pub(crate) struct EventListener<'a> {
    event: &'a Event,
    generation: u64,
}

/// The blocking wait of an [`EventListener`] (the name `event_listener` gives it); like
/// `event_listener`'s, a listener is also the future of the same wait.
pub(crate) trait Listener: Future<Output = ()> {
    /// Blocks the thread until the event is notified after this listener was made.
    fn wait(self);

    /// [`wait`](Self::wait) with a deadline in `event_listener`'s signature. shuttle has no
    /// clock, and the scenarios set no timeouts: it waits as `wait` does.
    fn wait_deadline(self, _deadline: std::time::Instant) -> Option<()>
    where
        Self: Sized,
    {
        self.wait();
        Some(())
    }
}

impl Event {
    pub(crate) fn new() -> Self {
        Event {
            state: shuttle::sync::Mutex::new(EventState {
                generation: 0,
                wakers: Vec::new(),
            }),
            changed: shuttle::sync::Condvar::new(),
        }
    }

    pub(crate) fn listen(&self) -> EventListener<'_> {
        EventListener {
            event: self,
            generation: self.lock().generation,
        }
    }

    /// Wakes every listener made before this call (the flights always notify them all).
    pub(crate) fn notify(&self, _count: usize) {
        let wakers = {
            let mut state = self.lock();
            state.generation += 1;
            std::mem::take(&mut state.wakers)
        };
        self.changed.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    fn lock(&self) -> shuttle::sync::MutexGuard<'_, EventState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Listener for EventListener<'_> {
    fn wait(self) {
        let mut state = self.event.lock();
        while state.generation == self.generation {
            state = self
                .event
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Future for EventListener<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.event.lock();
        if state.generation != self.generation {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
