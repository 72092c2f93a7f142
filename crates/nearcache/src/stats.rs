//! [`CacheStats`]: a snapshot of the local store's and the propagation layer's counters.

use nearcache_backplane::wire::InstanceId;
pub use nearcache_store::StoreStats;

pub use crate::propagation::lag::LagSummary;

/// A snapshot of a cache's counters. Counters only grow; subtract two snapshots for rates.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// The local store: hits, misses, loads, evictions, expirations, …
    pub store: StoreStats,
    /// The backplane side, or `None` for a cache without one.
    pub propagation: Option<PropagationStats>,
}

/// Counters of the propagation layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PropagationStats {
    /// This instance's id on the channel.
    pub instance: InstanceId,
    /// Whether the subscription is live now.
    pub connected: bool,
    /// Whether reads bypass the local cache now: before the first subscription, while the
    /// backplane has been down past `max_staleness`, and after shutdown.
    pub bypassing_reads: bool,
    /// Invalidations waiting to be published now (queued, or in a publish being retried).
    pub outbox_len: usize,
    /// Peers heard from now: other instances on the channel whose messages or heartbeats
    /// arrived and which have not fallen silent for long enough to be forgotten.
    pub peers: usize,
    /// Peers evicted from the peer table to keep it under its cap (10,000): non-zero means
    /// more origins spoke than any real fleet has — someone is inventing them. An evicted
    /// peer's next message reads as a gap (a clear), never as a hidden loss.
    pub peers_evicted: u64,
    /// Messages published (not counting heartbeats).
    pub messages_sent: u64,
    /// Bytes of messages and heartbeats published (payloads as sent, signature included).
    pub bytes_sent: u64,
    /// Bytes of payloads received from the channel (everything, our own echoes and
    /// rejected ones included).
    pub bytes_received: u64,
    /// Invalidations published (each key, region expiry or clear counts one).
    pub invalidations_sent: u64,
    /// `invalidations_sent` by kind.
    pub invalidations_sent_by_kind: InvalidationKinds,
    /// Heartbeats published (not counting answers).
    pub heartbeats_sent: u64,
    /// Answers published: heartbeats sent at once because a newcomer said hello, so it
    /// learns our position from them (rate-limited; one answers every hello before it).
    pub answers_sent: u64,
    /// Publish attempts of invalidation messages that failed or timed out (each is retried
    /// until it goes out; heartbeats are not counted).
    pub publish_failures: u64,
    /// Messages received from peers and accepted (not counting heartbeats, duplicates or
    /// rejected payloads).
    pub messages_received: u64,
    /// Invalidations carried by those messages (each key, region expiry or clear counts one).
    pub invalidations_received: u64,
    /// `invalidations_received` by kind.
    pub invalidations_received_by_kind: InvalidationKinds,
    /// Invalidations applied to the local store.
    pub invalidations_applied: u64,
    /// Heartbeats received from peers (their answers to hellos included).
    pub heartbeats_received: u64,
    /// Our own payloads (messages and heartbeats) echoed back by the channel, ignored.
    pub own_messages_ignored: u64,
    /// Messages whose sequence number was already seen (a retried publish that had gone
    /// through), not counted as received. With a `signing_key` they are dropped; without one
    /// they are applied again (evicting twice is harmless, while a forged message that took
    /// the real one's number must not hide it).
    pub duplicates_ignored: u64,
    /// Messages that did not decode (garbage, foreign or unsupported), dropped.
    pub messages_rejected: u64,
    /// Messages refused because a signing key is configured and they were unsigned or their
    /// signature did not verify (not counted in `messages_rejected`): a publisher on the
    /// channel without the key, or an instance with a different one.
    pub messages_unauthenticated: u64,
    /// Times the outbox overflowed and its backlog was dropped (peers learn of it as a gap
    /// in this instance's sequence numbers).
    pub outbox_overflows: u64,
    /// Times this instance cleared itself because it may have missed invalidations.
    pub loss_clears: LossClears,
    /// Losses repaired from the backplane's replay log instead of clearing, and the repairs
    /// that could not be made (each of those is also a loss clear).
    pub loss_repairs: LossRepairs,
    /// Publish on the origin → applied here.
    pub propagation_lag: LagSummary,
}

/// Invalidations by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidationKinds {
    /// Keys removed (by `remove` or `set`).
    pub keys: u64,
    /// Whole regions expired.
    pub region_expiries: u64,
    /// Regions' sub-keys expired.
    pub region_key_expiries: u64,
    /// Clears (and operations this version does not know, applied as clears).
    pub clears: u64,
}

impl InvalidationKinds {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.keys + self.region_expiries + self.region_key_expiries + self.clears
    }
}

/// Local clears by cause (never broadcast to peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LossClears {
    /// The subscription reconnected.
    pub reconnect: u64,
    /// The backplane dropped messages for this slow reader.
    pub lagged: u64,
    /// A peer's sequence numbers jumped.
    pub peer_gap: u64,
    /// Our own outbox overflowed.
    pub outbox_overflow: u64,
    /// The backplane ended the subscription and it was made again.
    pub subscription_ended: u64,
    /// Our own publishes stopped coming back (a dead subscription on a live connection) and
    /// the subscription was made again.
    pub echo_lost: u64,
}

impl LossClears {
    /// All causes together.
    pub fn total(&self) -> u64 {
        self.reconnect
            + self.lagged
            + self.peer_gap
            + self.outbox_overflow
            + self.subscription_ended
            + self.echo_lost
    }
}

/// Repairs from the backplane's replay log: a loss (reconnect, lagged queue, dead
/// subscription, a skipped log position) answered by reading exactly what was missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LossRepairs {
    /// Losses repaired without a clear.
    pub repairs: u64,
    /// Peers' messages read back from the log and applied by those repairs.
    pub messages_replayed: u64,
    /// Invalidations (keys, region expiries, clears) those messages carried, all applied.
    pub keys_replayed: u64,
    /// Live messages dropped because a repair had already applied them from the log.
    pub replay_duplicates: u64,
    /// Repairs given up because the log was trimmed past the gap (size `replay_log_len` up).
    pub uncovered_trimmed: u64,
    /// Repairs given up because the log was recreated (a restart without persistence).
    pub uncovered_recreated: u64,
    /// Repairs given up because reading the log failed or took longer than `replay_timeout`.
    pub read_failed: u64,
}

impl LossRepairs {
    /// Repairs given up (each ended in a loss clear).
    pub fn given_up(&self) -> u64 {
        self.uncovered_trimmed + self.uncovered_recreated + self.read_failed
    }
}
