//! [`CacheEvent`]: what the propagation layer did, for tests, dashboards and anyone who must
//! await an invalidation instead of sleeping and hoping it arrived.

use nearcache_backplane::wire::InstanceId;
use nearcache_store::Source;

/// Why this instance cleared its own cache (or, with a replay log, repaired it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClearCause {
    /// The backplane subscription was re-established; messages sent meanwhile were missed.
    Reconnect,
    /// The backplane dropped messages before this instance read them.
    Lagged,
    /// A peer's sequence numbers (or heartbeat) showed that its messages were lost.
    PeerGap,
    /// This instance's own outbox overflowed while the backplane was unreachable.
    OutboxOverflow,
    /// The backplane ended the subscription; a new one was made (messages sent in between
    /// were missed).
    SubscriptionEnded,
    /// This instance's own publishes stopped coming back through the channel (the
    /// subscription was dead though the connection looked alive); a new one was made.
    EchoLost,
}

/// Something the propagation layer (or, for [`ExpiredServed`](Self::ExpiredServed), a load)
/// did. Receive them with [`Cache::events`](crate::Cache::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A peer's message was applied to the local cache.
    Applied {
        /// The peer that sent it.
        origin: InstanceId,
        /// Its sequence number.
        seq: u64,
        /// How many invalidations (keys, region expiries, clears) it carried.
        invalidations: u64,
    },
    /// This instance cleared itself because it may have missed invalidations.
    LossCleared {
        /// Why.
        cause: ClearCause,
        /// `false` when the loss policy is `none` (only counted).
        cleared: bool,
    },
    /// This instance may have missed invalidations and repaired itself from the backplane's
    /// replay log instead of clearing: it applied every message it had missed.
    LossRepaired {
        /// What revealed the loss.
        cause: ClearCause,
        /// Messages read back from the log and applied (peers' only; our own are skipped).
        messages: u64,
        /// Invalidations they carried (keys, region expiries, clears), all applied.
        keys: u64,
    },
    /// A message on the channel was not a valid invalidation and was dropped.
    Rejected,
    /// A peer shut down cleanly (it said goodbye, and everything it sent had arrived) and
    /// was forgotten.
    PeerLeft {
        /// The peer that left.
        origin: InstanceId,
    },
    /// The subscription is live: the first time, or after a reconnect — then it comes after
    /// the reconnect's `LossCleared`, once reads are served from the store again.
    Connected,
    /// The subscription was lost.
    Disconnected,
    /// The backplane has been down past `max_staleness`: reads bypass the local cache.
    BypassStarted,
    /// A publish failed or timed out. Its invalidations stay queued and are retried (with
    /// backoff, and at once when the subscription comes back).
    PublishFailed,
    /// A key's expired value (kept for fail-safe) was handed out in place of a load's:
    /// once per caller given it, and once per background load (an eager refresh, a detached
    /// load its callers left) that failed and re-armed it. Never a value that was
    /// invalidated. The key is not named (keys may hold personal data; the `warn` log
    /// event names it by hash, or as it is with `log_keys`).
    ExpiredServed {
        /// [`Source::FailSafe`] (the load failed or ran past the hard timeout) or
        /// [`Source::SoftTimeout`] (the load was still running at the soft timeout).
        source: Source,
    },
}
