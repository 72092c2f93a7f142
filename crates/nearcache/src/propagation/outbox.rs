//! The outbox: invalidations waiting to be published, bounded, with group commit.
//!
//! Local invalidations are pushed here (never blocking: a blocking caller may push too) and
//! the sender task takes *everything queued so far* each time it is free to publish. So a
//! lone invalidation goes out at once, and what arrives while a publish is in flight goes
//! out together in the next one — no timer ever delays a message (group commit).
//!
//! The outbox is bounded. When it would overflow (the backplane has been down a long time),
//! its backlog collapses into one [`Pending::Lost`] marker: the peers cannot learn *which*
//! keys changed. The sender does not broadcast a clear for it; it spends one sequence
//! number without publishing it, so every peer sees a gap at our next message or heartbeat
//! and clears *itself*, as for any lost message (guarantee 7). While the marker is queued,
//! later invalidations are absorbed by it — the peers notice the gap after they were made,
//! so their clear covers them — and the outbox stays O(1) through an outage of any length.
//! A local `clear()` works the same way: an unsent `Clear` absorbs what is pushed after it.
//!
//! Once closed (the cache shut down or was dropped), the outbox refuses new invalidations:
//! nothing would send them, and a refused push is reported as local-only instead of piling
//! up into overflows. What was queued before the close is still taken and sent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nearcache_keys::Key;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

/// One invalidation waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    Remove(Key),
    ExpireRegion(String),
    ExpireRegionKey(String, String),
    Clear,
    /// The backlog overflowed and was dropped: sent as a skipped sequence number.
    Lost,
}

/// Every push gets a ticket; the outbox's published watermark passes it once the
/// invalidation (or a clear that covers it) has been published.
pub(crate) type Ticket = u64;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) ticket: Ticket,
    /// This push overflowed the outbox and collapsed its backlog into one [`Pending::Lost`].
    pub(crate) overflowed: bool,
}

/// A batch taken by the sender: the operations and the ticket that covers them.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<Pending>,
    pub(crate) covers: Ticket,
}

/// What the sender found when it looked.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Operations to send.
    Batch(Batch),
    /// Nothing queued; wait for work.
    Empty,
    /// Closed and nothing left to send: the sender's work is done.
    Closed,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<(Pending, Ticket)>,
    /// Tickets handed out so far (the last ticket is `issued`).
    issued: Ticket,
    /// Operations the sender took and has not published yet (they count as waiting).
    in_flight: usize,
    closed: bool,
    /// When the oldest operation still queued was pushed (when the queue last became
    /// non-empty; after a partial take the remainder keeps it, an over-estimate).
    queued_since: Option<Instant>,
    /// When the oldest operation in flight was pushed.
    in_flight_since: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    wake_sender: Notify,
    published: watch::Sender<Ticket>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                issued: 0,
                in_flight: 0,
                closed: false,
                queued_since: None,
                in_flight_since: None,
            }),
            capacity: capacity.max(1),
            wake_sender: Notify::new(),
            published: watch::Sender::new(0),
        }
    }

    /// Queues `op` and wakes the sender. Never blocks on the network. `None` once the outbox
    /// is closed: nothing would send it.
    pub(crate) fn push(&self, op: Pending) -> Option<Pushed> {
        let mut state = self.state.lock();
        if state.closed {
            return None;
        }
        state.issued += 1;
        let ticket = state.issued;
        if state.queue.is_empty() {
            state.queued_since = Some(Instant::now());
        }
        let mut overflowed = false;
        let absorbing = state
            .queue
            .back()
            .is_some_and(|(last, _)| matches!(last, Pending::Clear | Pending::Lost));
        if absorbing {
            // An unsent clear or lost backlog covers everything pushed before it is sent.
            if let Some(last) = state.queue.back_mut() {
                last.1 = ticket;
            }
        } else if op == Pending::Clear {
            // A clear supersedes whatever is still waiting.
            state.queue.clear();
            state.queue.push_back((Pending::Clear, ticket));
        } else if state.queue.len() >= self.capacity {
            state.queue.clear();
            state.queue.push_back((Pending::Lost, ticket));
            overflowed = true;
        } else {
            state.queue.push_back((op, ticket));
        }
        drop(state);
        self.wake_sender.notify_one();
        Some(Pushed { ticket, overflowed })
    }

    /// Takes up to `max` queued operations, oldest first; they count as in flight until
    /// [`sent`](Self::sent). Checking for work and for the close under one lock means a
    /// push that was accepted is always taken, even if the close comes right after it.
    pub(crate) fn take(&self, max: usize) -> Taken {
        let mut state = self.state.lock();
        if state.queue.is_empty() {
            return if state.closed {
                Taken::Closed
            } else {
                Taken::Empty
            };
        }
        let n = state.queue.len().min(max.max(1));
        let mut ops = Vec::with_capacity(n);
        let mut covers = 0;
        for (op, ticket) in state.queue.drain(..n) {
            ops.push(op);
            covers = ticket;
        }
        state.in_flight += n;
        state.in_flight_since = state.in_flight_since.or(state.queued_since);
        if state.queue.is_empty() {
            state.queued_since = None;
        }
        Taken::Batch(Batch { ops, covers })
    }

    /// Records that `ops` operations of the batch in flight are no longer waiting (they
    /// were published, or could not be encoded and were dropped).
    pub(crate) fn sent(&self, ops: usize) {
        let mut state = self.state.lock();
        state.in_flight = state.in_flight.saturating_sub(ops);
        if state.in_flight == 0 {
            state.in_flight_since = None;
        }
    }

    /// How long the oldest invalidation not yet published has waited (queued or in
    /// flight); `None` when nothing waits. Peers may serve its key stale meanwhile.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        let state = self.state.lock();
        let oldest = match (state.queued_since, state.in_flight_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        oldest.map(|at| at.elapsed())
    }

    /// Records that everything up to `ticket` has been published.
    pub(crate) fn mark_published(&self, ticket: Ticket) {
        self.published.send_if_modified(|current| {
            if ticket > *current {
                *current = ticket;
                true
            } else {
                false
            }
        });
    }

    /// Waits until `ticket` has been published. Returns `false` if the outbox closed first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is consumed.
    pub(crate) async fn published(&self, ticket: Ticket) -> bool {
        let mut rx = self.published.subscribe();
        rx.wait_for(|published| *published >= ticket).await.is_ok()
    }

    /// Invalidations not yet published: queued, plus taken by the sender and in flight.
    pub(crate) fn pending(&self) -> usize {
        let state = self.state.lock();
        state.queue.len() + state.in_flight
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Waits until the sender should look again (something was pushed, or the outbox closed).
    pub(crate) async fn wait_for_work(&self) {
        self.wake_sender.notified().await;
    }

    /// Refuses further pushes and wakes the sender, which sends what is queued and exits.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.wake_sender.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn remove(k: &str) -> Pending {
        Pending::Remove(Key::from_text(k))
    }

    #[test]
    fn the_oldest_wait_is_known_until_everything_is_published() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.oldest_age(), None);
        outbox.push(remove("a"));
        let queued = outbox.oldest_age();
        assert!(queued.is_some());
        let Taken::Batch(batch) = outbox.take(10) else {
            panic!("a batch")
        };
        outbox.push(remove("b"));
        // The first push is still in flight: its age, not the second's.
        assert!(outbox.oldest_age() >= queued);
        outbox.sent(batch.ops.len());
        assert!(outbox.oldest_age().is_some(), "b still waits");
        let Taken::Batch(batch) = outbox.take(10) else {
            panic!("a batch")
        };
        outbox.sent(batch.ops.len());
        assert_eq!(outbox.oldest_age(), None);
    }

    fn batch(outbox: &Outbox, max: usize) -> Batch {
        match outbox.take(max) {
            Taken::Batch(batch) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    /// An outbox of room 100 holding a remove of each of `keys`, in order.
    fn holding(keys: &[&str]) -> Outbox {
        let outbox = Outbox::new(100);
        for k in keys {
            outbox.push(remove(k)).unwrap();
        }
        outbox
    }

    #[test]
    fn group_commit_takes_everything_queued() {
        let outbox = holding(&["a", "b", "c"]);
        let batch = batch(&outbox, 100);
        assert_eq!(batch.ops, vec![remove("a"), remove("b"), remove("c")]);
        assert_eq!(batch.covers, 3);
        assert!(matches!(outbox.take(100), Taken::Empty));
    }

    #[test]
    fn batches_respect_the_size_cap_in_order() {
        let outbox = holding(&["0", "1", "2", "3", "4"]);
        let first = batch(&outbox, 2);
        assert_eq!(first.ops, vec![remove("0"), remove("1")]);
        assert_eq!(first.covers, 2);
        let rest = batch(&outbox, 10);
        assert_eq!(rest.ops.len(), 3);
        assert_eq!(rest.covers, 5);
    }

    #[test]
    fn overflow_collapses_into_one_lost_marker_that_absorbs_later_pushes() {
        let outbox = Outbox::new(3);
        for k in ["a", "b", "c"] {
            assert!(!outbox.push(remove(k)).unwrap().overflowed);
        }
        let pushed = outbox.push(remove("d")).unwrap();
        assert!(pushed.overflowed);
        assert_eq!(outbox.queued(), 1);
        for k in ["e", "f"] {
            let p = outbox.push(Pending::ExpireRegion(k.into())).unwrap();
            assert!(!p.overflowed, "absorbed, not overflowed again");
        }
        outbox.push(Pending::Clear).unwrap();
        assert_eq!(outbox.queued(), 1);
        let batch = batch(&outbox, 100);
        assert_eq!(batch.ops, vec![Pending::Lost]);
        assert_eq!(
            batch.covers, 7,
            "the marker covers every ticket it absorbed"
        );
    }

    #[test]
    fn a_local_clear_supersedes_the_backlog() {
        let outbox = Outbox::new(100);
        outbox.push(remove("a")).unwrap();
        outbox.push(Pending::Clear).unwrap();
        outbox.push(remove("b")).unwrap();
        let batch = batch(&outbox, 100);
        assert_eq!(batch.ops, vec![Pending::Clear]);
        assert_eq!(batch.covers, 3);
    }

    #[test]
    fn pushes_after_a_clear_was_taken_are_queued_again() {
        let outbox = Outbox::new(100);
        outbox.push(Pending::Clear).unwrap();
        let in_flight = batch(&outbox, 100);
        assert_eq!(in_flight.ops, vec![Pending::Clear]);
        outbox.push(remove("a")).unwrap();
        assert_eq!(batch(&outbox, 100).ops, vec![remove("a")]);
    }

    #[test]
    fn pending_counts_what_is_in_flight_until_sent() {
        let outbox = holding(&["a", "b", "c"]);
        let taken = batch(&outbox, 2);
        outbox.push(remove("d")).unwrap();
        assert_eq!(outbox.pending(), 4, "2 in flight + 2 queued");
        outbox.sent(1);
        assert_eq!(outbox.pending(), 3, "one message of the batch went out");
        outbox.sent(1);
        outbox.mark_published(taken.covers);
        assert_eq!(outbox.pending(), 2);
    }

    #[test]
    fn a_closed_outbox_refuses_pushes_but_hands_over_what_was_queued() {
        let outbox = Outbox::new(100);
        outbox.push(remove("a")).unwrap();
        outbox.close();
        assert!(outbox.push(remove("b")).is_none(), "nothing would send it");
        assert_eq!(batch(&outbox, 100).ops, vec![remove("a")]);
        assert!(matches!(outbox.take(100), Taken::Closed));
        assert!(outbox.is_closed());
    }

    #[tokio::test]
    async fn waiters_are_released_by_the_watermark() {
        let outbox = std::sync::Arc::new(Outbox::new(10));
        let t1 = outbox.push(remove("a")).unwrap().ticket;
        let t2 = outbox.push(remove("b")).unwrap().ticket;
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.published(t2).await })
        };
        outbox.mark_published(t1);
        // The test runtime is single-threaded: yielding lets the waiter run to its await.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "t2 is not published yet");
        outbox.mark_published(t2);
        assert!(waiter.await.unwrap());
    }
}
