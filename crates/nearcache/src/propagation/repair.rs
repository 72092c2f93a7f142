//! Repairing a loss from the backplane's replay log instead of clearing the cache.
//!
//! A backplane with a [`ReplayLog`] frames every delivery with its position in the log, and
//! positions are dense within an epoch. The receiver remembers the last position it applied
//! ([`Replay`]); on every loss signal — a reconnect, a lagged queue, a subscription made
//! again after it ended or went deaf, or a delivery whose position skips — it reads the log
//! after that position and applies every peer's message in it (our own were applied locally
//! when they were made), then carries on. It clears (per the loss policy, counted with the
//! signal's cause) only when the log cannot tell: it was trimmed past the gap, recreated, or
//! the read failed or took longer than `replay_timeout`.
//!
//! **Reads during a repair.** From the moment the loss is handled until the replay is
//! applied, reads bypass the local store (they miss and load, loads are not stored), so no
//! entry that the missed messages invalidate can be served in between. The window is bounded
//! by `replay_timeout`; past it the repair gives up and clears, before reads are served again.
//!
//! **Applied once, noticed twice.** A message can reach the receiver twice: from the log,
//! then live (it was queued behind the loss signal). A live delivery at or before the last
//! position applied is dropped and counted (`replay_duplicates`) when its origin's sequence
//! number was already seen; the position alone never drops a message (a failover with
//! asynchronous replication can lose log entries and hand their positions out again). Only
//! positions read *from the log* move the last position past a gap: a forged frame on the
//! channel can cost a read (and a clear), never make a real message look old.

use bytes::Bytes;
use nearcache_backplane::wire::logged;
use nearcache_backplane::{Backplane, LogPosition, LogRead, ReplayLog, Uncovered};
use nearcache_store::Store;

use super::backoff::Retry;
use super::peers::Peers;
use super::receiver::{Source, apply};
use super::{Propagation, bump};
use crate::events::{CacheEvent, ClearCause};

/// Reads the log after `after`, retrying a failed read with backoff (the connection that
/// reads it may have died with the subscription and be coming back); the caller bounds the
/// whole by `replay_timeout`.
async fn read_retrying(
    p: &Propagation,
    log: &dyn ReplayLog,
    after: &LogPosition,
) -> Result<LogRead, nearcache_backplane::BackplaneError> {
    let mut retry = Retry::new(
        p.options.reconnect_initial_delay,
        p.options.reconnect_max_delay,
    );
    loop {
        match log.read_after(after).await {
            Err(err @ nearcache_backplane::BackplaneError::Unavailable { .. }) => {
                let delay = retry.next_delay();
                tracing::debug!(
                    error = &err as &dyn std::error::Error,
                    ?delay,
                    "reading the replay log failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// The receiver's place in the replay log.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Replay is on and the backplane keeps a log.
    on: bool,
    /// The last position applied; `None` before the first one is known (or after a read
    /// failed), when a loss can only clear.
    last: Option<LogPosition>,
}

/// What to do with one live delivery.
#[derive(Debug)]
pub(crate) enum Live {
    /// Apply it (its frame, if any, removed).
    Apply(Bytes),
    /// At or behind the last position applied: most likely a repair already applied it
    /// from the log. It still goes through the peers' sequence numbers, which drop it
    /// (counted) only if its origin's number was seen — a log that lost entries in a
    /// failover can hand a position out twice.
    Behind(Bytes),
    /// Its position skips: something before it was lost. Repair, then offer it again.
    RepairFirst(Bytes, LogPosition),
}

impl Replay {
    pub(crate) fn new(p: &Propagation, backplane: &dyn Backplane) -> Self {
        let on = p.options.replay && backplane.replay_log().is_some();
        Replay { on, last: None }
    }

    fn log<'b>(&self, backplane: &'b dyn Backplane) -> Option<&'b dyn ReplayLog> {
        if self.on {
            backplane.replay_log()
        } else {
            None
        }
    }

    /// Learns where the log stands, right after subscribing: anything appended from now on
    /// either arrives live or is read back by a repair.
    pub(crate) async fn start(&mut self, p: &Propagation, backplane: &dyn Backplane) {
        let Some(log) = self.log(backplane) else {
            return;
        };
        self.last = match tokio::time::timeout(p.options.replay_timeout, log.head()).await {
            Ok(Ok(head)) => Some(head),
            Ok(Err(error)) => {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "could not read the replay log's head; the next loss clears"
                );
                None
            }
            Err(_) => None,
        };
    }

    /// Sorts a live delivery (see [`Live`]).
    pub(crate) fn live(&mut self, delivered: &Bytes) -> Live {
        let (position, payload) = logged::unframe(delivered);
        let Some(position) = position.filter(|_| self.on) else {
            return Live::Apply(payload);
        };
        match self.last {
            None => {
                self.last = Some(position);
                Live::Apply(payload)
            }
            Some(last) if position.follows(&last) => {
                self.last = Some(position);
                Live::Apply(payload)
            }
            Some(last) if position.epoch() == last.epoch() && position <= last => {
                Live::Behind(payload)
            }
            Some(_) => Live::RepairFirst(payload, position),
        }
    }

    /// After a repair for a skipped delivery at `position`: how it is to be applied.
    pub(crate) fn source_after_repair(&self, position: LogPosition) -> Source {
        match self.last {
            Some(last) if position.epoch() == last.epoch() && position <= last => {
                Source::LiveBehind
            }
            _ => Source::Live,
        }
    }

    /// Handles a loss revealed by `cause`: repairs it from the log, or clears. Reads bypass
    /// the store until it is done; afterwards the bypass is as it was (or off, if the
    /// backplane's own staleness bypass is not on).
    pub(crate) async fn recover(
        &mut self,
        p: &Propagation,
        store: &Store,
        peers: &mut Peers,
        backplane: &dyn Backplane,
        cause: ClearCause,
    ) {
        let Some(log) = self.log(backplane) else {
            p.loss_clear(store, cause);
            return;
        };
        let Some(after) = self.last else {
            // Nowhere to read from: clear, and learn where the log stands for next time.
            p.loss_clear(store, cause);
            self.start(p, backplane).await;
            return;
        };
        let bypassed = store.is_read_bypassed();
        store.set_read_bypass(true);
        let read =
            tokio::time::timeout(p.options.replay_timeout, read_retrying(p, log, &after)).await;
        let mut repaired = None;
        let given_up = match read {
            Ok(Ok(LogRead::Covered(entries))) => {
                repaired = Some(self.replay(p, store, peers, cause, entries));
                None
            }
            Ok(Ok(LogRead::Uncovered(why))) => {
                bump(
                    match why {
                        Uncovered::Trimmed => &p.counters.repairs_trimmed,
                        _ => &p.counters.repairs_recreated,
                    },
                    1,
                );
                Some(why.to_string())
            }
            Ok(Err(error)) => {
                bump(&p.counters.repairs_read_failed, 1);
                Some(format!("reading the log failed: {error}"))
            }
            Err(_) => {
                bump(&p.counters.repairs_read_failed, 1);
                Some(format!(
                    "reading the log took longer than replay_timeout ({:?})",
                    p.options.replay_timeout
                ))
            }
        };
        if let Some(reason) = given_up {
            tracing::warn!(
                ?cause,
                reason,
                "could not repair a loss from the replay log; clearing instead"
            );
            // Cleared before reads are served again.
            p.loss_clear(store, cause);
            self.start(p, backplane).await;
        }
        if !bypassed {
            store.set_read_bypass(false);
        }
        // Once reads are served again, so whoever awaits it can read at once.
        if let Some((messages, keys)) = repaired {
            let _ = p.events.send(CacheEvent::LossRepaired {
                cause,
                messages,
                keys,
            });
        }
    }

    /// Applies what the log returned, in order, and counts the repair: (messages, keys).
    fn replay(
        &mut self,
        p: &Propagation,
        store: &Store,
        peers: &mut Peers,
        cause: ClearCause,
        entries: Vec<nearcache_backplane::LogEntry>,
    ) -> (u64, u64) {
        let (mut messages, mut keys) = (0u64, 0u64);
        for entry in entries {
            if let Some(applied) = apply(p, store, peers, &entry.payload, Source::Replayed) {
                messages += 1;
                keys += applied;
            }
            self.last = Some(entry.position);
        }
        bump(&p.counters.repairs, 1);
        bump(&p.counters.messages_replayed, messages);
        bump(&p.counters.keys_replayed, keys);
        tracing::info!(
            ?cause,
            messages,
            keys,
            "repaired a loss from the replay log: applied exactly what was missed"
        );
        (messages, keys)
    }
}
