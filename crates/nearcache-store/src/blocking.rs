//! Blocking callers on async runtimes.
//!
//! A blocking get-or-create that must wait for a load led by an async caller on the *same*
//! thread would wait forever on a current-thread runtime: the thread it blocks is the only
//! one that could run the leader. The store refuses that wait with
//! [`LoadError::WouldDeadlock`](crate::LoadError::WouldDeadlock). The same holds for an
//! eager refresh with an async factory started from a current-thread runtime's thread: it
//! runs on the blocking pool, but its timers and I/O are driven only by that thread.
//!
//! On a multi-thread tokio runtime (with this crate's `tokio` feature, which the `nearcache`
//! facade turns on) the wait is made sound instead: it runs inside
//! `tokio::task::block_in_place`, which first hands the worker's other tasks — the leader
//! among them — to another thread. Only waits pay for that; hits and leading callers do not.

/// Runs `wait`, telling it whether this thread's other async work was handed off first (in
/// which case waiting for an async leader that last ran here is sound).
pub(crate) fn wait_blocking<R>(wait: impl FnOnce(bool) -> R) -> R {
    #[cfg(feature = "tokio")]
    if let Ok(runtime) = tokio::runtime::Handle::try_current()
        && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| wait(true));
    }
    wait(false)
}
