//! The synchronisation primitives the flight table is built from, named in one place.
//!
//! Single flight is the subtle part of the store. Routing its primitives through this module
//! (as quick_cache's `shim.rs` and tokio's `loom` module do) lets the `shuttle` model checker
//! take them over in a build with `--cfg shuttle` (see `shuttle_tests`), without touching the
//! flight logic.
//!
//! Only this crate's unit-test build changes, and only through `RUSTFLAGS`: no feature selects
//! the modelled primitives, so no crate that depends on the store can turn them on, and the
//! library other crates link is built from the real primitives even under `--cfg shuttle`.

#[cfg(not(all(test, shuttle)))]
pub(crate) use event_listener::{Event, Listener};
#[cfg(not(all(test, shuttle)))]
pub(crate) use parking_lot::{Mutex, MutexGuard};
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize};

#[cfg(all(test, shuttle))]
mod model;
#[cfg(all(test, shuttle))]
pub(crate) use model::{AtomicBool, AtomicUsize, Event, Listener, Mutex, MutexGuard};

// Like quick_cache under shuttle, `OnceLock` stays std's: the flights only `set` and `get` it
// and never block on it (they block on the `Event` next to it, which shuttle controls).
pub(crate) use std::sync::OnceLock;
pub(crate) use std::sync::atomic::Ordering;

/// Names the thread (or, under shuttle, the modelled thread or task) running now: a flight
/// remembers its async leader's, so a blocking caller on that same thread can refuse to wait
/// for a load only that thread could finish.
#[cfg(not(all(test, shuttle)))]
pub(crate) type ThreadToken = std::thread::ThreadId;

/// The current [`ThreadToken`].
#[cfg(not(all(test, shuttle)))]
pub(crate) fn current_thread() -> ThreadToken {
    std::thread::current().id()
}

/// Under shuttle every modelled thread and task runs on one OS thread: they are told apart by
/// shuttle's own ids.
#[cfg(all(test, shuttle))]
pub(crate) use model::{ThreadToken, current_thread};
