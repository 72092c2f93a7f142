//! The removal listener: user code told about each entry that leaves the store, and why.
//!
//! Entries leave under locks (a quick_cache shard's write lock, often inside a key's
//! flight-shard lock). User code must never run there: a listener that calls back into the
//! store would take those locks again and deadlock. So every removal is *collected* under
//! the lock as a [`Removals`] (the key and its cause) and *reported* by
//! [`StoreInner::report`](crate::store::StoreInner) after the locks are released, on the
//! thread that removed it (a caller's, or the purger's).
//!
//! Without a listener nothing is collected: [`Removals`] stays empty (no allocation) and
//! reporting is one branch on an `Option`. The hit path never removes anything, so it never
//! reaches here; a read that finds a dead entry removes it and reports it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use nearcache_keys::Key;

/// Why an entry left the store, as the removal listener is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Its time was up (absolute or sliding expiry); reported when the entry is removed
    /// (by the purger, a read that finds it dead, or a write to its key), not at the instant
    /// it expired.
    Expired,
    /// Evicted to make room (the store's capacity or weight budget).
    Evicted,
    /// Invalidated on this instance: a `remove` of its key, an expiry of a region or sub-key
    /// it is tied to, or a `clear` (including the facade's own clears after a lost message).
    /// Token and `clear` invalidations are O(1): their entries are reported as they are
    /// swept out, shortly after.
    Invalidated,
    /// Removed because a peer invalidated its key (the facade's receiver applied the
    /// peer's message). A peer's region expiry or clear reports [`Invalidated`](Self::Invalidated):
    /// those entries are only found dead later, when who caused it is no longer known.
    PeerInvalidated,
    /// Replaced by a newer value for its key (a `set`, or a load that stored over it).
    Replaced,
}

/// The listener: the key and why it left. Called outside every store lock.
pub(crate) type Listener = Arc<dyn Fn(&Key, RemovalCause) + Send + Sync>;

/// Removals collected under a lock, to be reported once it is released. Empty (and never
/// allocated) when the store has no listener.
#[must_use = "removals are reported once the locks are released"]
#[derive(Default)]
pub(crate) struct Removals(Vec<(Key, RemovalCause)>);

impl Removals {
    /// Records one removal (callers check that someone listens first).
    pub(crate) fn push(&mut self, key: Key, cause: RemovalCause) {
        self.0.push((key, cause));
    }

    /// Adds `other`'s removals to these.
    pub(crate) fn append(&mut self, mut other: Removals) {
        self.0.append(&mut other.0);
    }

    /// Calls `listener` with each removal, in order. A listener that panics is logged and
    /// the rest are still reported: the store's own state is complete before this runs.
    pub(crate) fn report(self, listener: &Listener) {
        for (key, cause) in self.0 {
            if catch_unwind(AssertUnwindSafe(|| listener(&key, cause))).is_err() {
                tracing::warn!(
                    ?cause,
                    "the removal listener panicked; removal reports go on"
                );
            }
        }
    }
}

impl fmt::Debug for Removals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Removals").field(&self.0.len()).finish()
    }
}
