//! Primitives that are shuttle's inside a shuttle execution and the real ones outside it.
//!
//! With `--features shuttle` this crate's unit-test binary holds both the shuttle tests and
//! every ordinary test. A primitive picks its kind when it is created: inside a shuttle
//! execution (a store built by a shuttle test) it is shuttle's, so the model checker decides
//! every interleaving; anywhere else it is the real one, so the ordinary tests run as always.
//! `event_listener` blocks the OS thread, which would stall shuttle (it runs every modelled
//! thread on one OS thread), so the modelled [`Event`] is built from shuttle's `Mutex` and
//! `Condvar`, and from wakers for async waiters.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

/// Whether the caller runs inside a shuttle execution.
fn modelled() -> bool {
    shuttle::current::try_get_current_task().is_some()
}

/// A thread's identity: shuttle's task id inside an execution, the OS thread's outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadToken {
    Real(std::thread::ThreadId),
    Model(usize),
}

/// The running thread's (or modelled task's) [`ThreadToken`].
pub(crate) fn current_thread() -> ThreadToken {
    if modelled() {
        ThreadToken::Model(usize::from(shuttle::thread::current().id()))
    } else {
        ThreadToken::Real(std::thread::current().id())
    }
}

/// `parking_lot::Mutex`, or shuttle's inside an execution.
pub(crate) enum Mutex<T> {
    Real(parking_lot::Mutex<T>),
    Model(shuttle::sync::Mutex<T>),
}

/// The guard of a [`Mutex`].
pub(crate) enum MutexGuard<'a, T> {
    Real(parking_lot::MutexGuard<'a, T>),
    Model(shuttle::sync::MutexGuard<'a, T>),
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        if modelled() {
            Mutex::Model(shuttle::sync::Mutex::new(value))
        } else {
            Mutex::Real(parking_lot::Mutex::new(value))
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        match self {
            Mutex::Real(mutex) => MutexGuard::Real(mutex.lock()),
            Mutex::Model(mutex) => {
                MutexGuard::Model(mutex.lock().unwrap_or_else(PoisonError::into_inner))
            }
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            MutexGuard::Real(guard) => guard,
            MutexGuard::Model(guard) => guard,
        }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            MutexGuard::Real(guard) => guard,
            MutexGuard::Model(guard) => guard,
        }
    }
}

/// `AtomicBool`, or shuttle's inside an execution.
pub(crate) enum AtomicBool {
    Real(std::sync::atomic::AtomicBool),
    Model(shuttle::sync::atomic::AtomicBool),
}

impl AtomicBool {
    pub(crate) fn new(value: bool) -> Self {
        if modelled() {
            AtomicBool::Model(shuttle::sync::atomic::AtomicBool::new(value))
        } else {
            AtomicBool::Real(std::sync::atomic::AtomicBool::new(value))
        }
    }

    pub(crate) fn load(&self, order: Ordering) -> bool {
        match self {
            AtomicBool::Real(atomic) => atomic.load(order),
            AtomicBool::Model(atomic) => atomic.load(order),
        }
    }

    pub(crate) fn store(&self, value: bool, order: Ordering) {
        match self {
            AtomicBool::Real(atomic) => atomic.store(value, order),
            AtomicBool::Model(atomic) => atomic.store(value, order),
        }
    }
}

/// `AtomicUsize`, or shuttle's inside an execution.
pub(crate) enum AtomicUsize {
    Real(std::sync::atomic::AtomicUsize),
    Model(shuttle::sync::atomic::AtomicUsize),
}

impl AtomicUsize {
    pub(crate) fn new(value: usize) -> Self {
        if modelled() {
            AtomicUsize::Model(shuttle::sync::atomic::AtomicUsize::new(value))
        } else {
            AtomicUsize::Real(std::sync::atomic::AtomicUsize::new(value))
        }
    }

    pub(crate) fn load(&self, order: Ordering) -> usize {
        match self {
            AtomicUsize::Real(atomic) => atomic.load(order),
            AtomicUsize::Model(atomic) => atomic.load(order),
        }
    }

    pub(crate) fn fetch_add(&self, value: usize, order: Ordering) -> usize {
        match self {
            AtomicUsize::Real(atomic) => atomic.fetch_add(value, order),
            AtomicUsize::Model(atomic) => atomic.fetch_add(value, order),
        }
    }
}

/// `event_listener::Event`, or a shuttle-controlled one inside an execution.
pub(crate) enum Event {
    Real(event_listener::Event),
    Model(Box<ModelEvent>),
}

/// A waiter registered with an [`Event`]: `.await` it, or [`Listener::wait`] on it.
pub(crate) enum EventListener<'a> {
    Real(event_listener::EventListener),
    Model {
        event: &'a ModelEvent,
        generation: u64,
    },
}

/// The blocking wait of an [`EventListener`] (the name `event_listener` gives it).
pub(crate) trait Listener {
    /// Blocks the thread until the event is notified after this listener was made.
    fn wait(self);
}

impl Event {
    pub(crate) fn new() -> Self {
        if modelled() {
            Event::Model(Box::new(ModelEvent {
                state: shuttle::sync::Mutex::new(ModelState {
                    generation: 0,
                    wakers: Vec::new(),
                }),
                changed: shuttle::sync::Condvar::new(),
            }))
        } else {
            Event::Real(event_listener::Event::new())
        }
    }

    pub(crate) fn listen(&self) -> EventListener<'_> {
        match self {
            Event::Real(event) => EventListener::Real(event.listen()),
            Event::Model(event) => EventListener::Model {
                event,
                generation: event.lock().generation,
            },
        }
    }

    /// Wakes every listener made before this call (the flights always notify them all).
    pub(crate) fn notify(&self, _count: usize) {
        match self {
            Event::Real(event) => {
                event.notify(usize::MAX);
            }
            Event::Model(event) => event.notify_all(),
        }
    }
}

/// The modelled event: a generation number bumped by each notify.
pub(crate) struct ModelEvent {
    state: shuttle::sync::Mutex<ModelState>,
    changed: shuttle::sync::Condvar,
}

struct ModelState {
    generation: u64,
    wakers: Vec<Waker>,
}

impl ModelEvent {
    fn lock(&self) -> shuttle::sync::MutexGuard<'_, ModelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_all(&self) {
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
}

impl Listener for EventListener<'_> {
    fn wait(self) {
        match self {
            EventListener::Real(listener) => event_listener::Listener::wait(listener),
            EventListener::Model { event, generation } => {
                let mut state = event.lock();
                while state.generation == generation {
                    state = event
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

impl Future for EventListener<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            EventListener::Real(listener) => Pin::new(listener).poll(cx),
            EventListener::Model { event, generation } => {
                let mut state = event.lock();
                if state.generation != *generation {
                    return Poll::Ready(());
                }
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
