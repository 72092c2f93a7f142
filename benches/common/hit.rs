//! Row 1's hit paths, measured twice: in wall-clock time beside `quick_cache` and `moka`
//! (`local`) and in instructions under callgrind (`instructions`). Both read the operations,
//! what each row says and its target from here, so the two tables cannot disagree.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::Goal;

/// The raw `quick_cache` hit with the same `Key`: the baseline of every [`HIT_ROWS`] row.
pub(crate) const BASELINE: &str = "quick_cache_key";

/// One of nearcache's hit paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HitRow {
    /// The operation: criterion's bench id in `local`, the child's operation in
    /// `instructions`.
    pub(crate) operation: &'static str,
    /// What the row measures.
    pub(crate) what: &'static str,
    /// Its target against the [`BASELINE`].
    pub(crate) goal: Goal,
}

/// The hit paths of row 1, in the order of the table; `get` (no expiry) comes first.
pub(crate) const HIT_ROWS: [HitRow; 4] = [
    HitRow {
        operation: "nearcache_get",
        what: "hit, get (no expiry)",
        goal: Goal::RatioAtMost(1.25),
    },
    HitRow {
        operation: "nearcache_get_sliding",
        what: "hit, get (sliding expiry)",
        goal: Goal::RatioAtMost(1.5),
    },
    HitRow {
        operation: "nearcache_get_or_create_sync",
        what: "hit, get_or_create_sync",
        goal: Goal::RatioAtMost(1.35),
    },
    HitRow {
        operation: "nearcache_get_or_create_async",
        what: "hit, get_or_create (async)",
        goal: Goal::RatioAtMost(1.35),
    },
];

/// Polls a future that must be ready at once (a hit), without a runtime. Inlined into the
/// measured loops as it was when each bench had its own copy: without the hint, callgrind
/// counted 43 more instructions per async hit.
#[inline]
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a hit must complete without waiting"),
    }
}
