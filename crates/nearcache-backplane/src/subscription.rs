//! [`Subscription`]: the receiving end of a backplane, and [`EventSender`], the end a
//! backplane implementation feeds.
//!
//! The queue between them is bounded so a stalled cache cannot make a backplane buffer
//! without limit. The sender never waits: when the queue is full a message is dropped and
//! counted, and the subscription reports the count as [`BackplaneEvent::Lagged`] before its
//! next event, which makes the cache clear itself (loss means clear). Connection events are
//! never dropped: when they do not fit they are kept in flags and delivered first.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::backplane::BackplaneEvent;

const DISCONNECTED: u8 = 1;
const RECONNECTED: u8 = 2;

struct Overflow {
    dropped: AtomicU64,
    pending: AtomicU8,
}

/// The stream of [`BackplaneEvent`]s a cache reads from its backplane.
///
/// ```
/// use bytes::Bytes;
/// use nearcache_backplane::{BackplaneEvent, Subscription};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (sender, mut subscription) = Subscription::channel(1);
/// sender.send(BackplaneEvent::Message(Bytes::from_static(b"one")));
/// sender.send(BackplaneEvent::Message(Bytes::from_static(b"two"))); // queue full: dropped
/// assert_eq!(subscription.recv().await, Some(BackplaneEvent::Lagged { missed: 1 }));
/// assert_eq!(subscription.recv().await, Some(BackplaneEvent::Message(Bytes::from_static(b"one"))));
/// drop(sender);
/// assert_eq!(subscription.recv().await, None);
/// # });
/// ```
pub struct Subscription {
    rx: mpsc::Receiver<BackplaneEvent>,
    overflow: Arc<Overflow>,
}

/// The feeding end of a [`Subscription`], held by a backplane implementation. Cheap to clone.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<BackplaneEvent>,
    overflow: Arc<Overflow>,
}

impl Subscription {
    /// A connected pair whose queue holds up to `capacity` events (at least 1).
    pub fn channel(capacity: usize) -> (EventSender, Subscription) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(Overflow {
            dropped: AtomicU64::new(0),
            pending: AtomicU8::new(0),
        });
        (
            EventSender {
                tx,
                overflow: overflow.clone(),
            },
            Subscription { rx, overflow },
        )
    }

    /// The next event, or `None` once every sender is gone and the queue is drained.
    ///
    /// Connection events that did not fit in the queue come first, then a
    /// [`BackplaneEvent::Lagged`] if messages were dropped, then the queue in order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no event is lost.
    pub async fn recv(&mut self) -> Option<BackplaneEvent> {
        if let Some(event) = self.take_overflow() {
            return Some(event);
        }
        let event = self.rx.recv().await;
        // Flags may have been set while we waited; they outrank the queued event only in
        // that they must not be lost, so deliver the queued one and leave them for next time.
        event.or_else(|| self.take_overflow())
    }

    /// The next event if one is ready now, without waiting: `None` when none is (or the
    /// subscription has ended; [`recv`](Self::recv) tells the two apart). Same order as
    /// `recv`.
    pub fn try_recv(&mut self) -> Option<BackplaneEvent> {
        self.take_overflow().or_else(|| self.rx.try_recv().ok())
    }

    fn take_overflow(&self) -> Option<BackplaneEvent> {
        let pending = self.overflow.pending.load(Ordering::Acquire);
        if pending & DISCONNECTED != 0 {
            self.overflow
                .pending
                .fetch_and(!DISCONNECTED, Ordering::AcqRel);
            return Some(BackplaneEvent::Disconnected);
        }
        if pending & RECONNECTED != 0 {
            self.overflow
                .pending
                .fetch_and(!RECONNECTED, Ordering::AcqRel);
            return Some(BackplaneEvent::Reconnected);
        }
        match self.overflow.dropped.swap(0, Ordering::AcqRel) {
            0 => None,
            missed => Some(BackplaneEvent::Lagged { missed }),
        }
    }
}

impl EventSender {
    /// Queues `event` without waiting.
    ///
    /// A message that does not fit is dropped and counted (the subscriber sees
    /// [`BackplaneEvent::Lagged`]); a connection event that does not fit is kept aside and
    /// delivered first. Returns `false` once the subscription has been dropped, which tells
    /// the backplane to stop feeding it.
    pub fn send(&self, event: BackplaneEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(event)) => {
                match event {
                    BackplaneEvent::Disconnected => {
                        self.overflow
                            .pending
                            .fetch_or(DISCONNECTED, Ordering::AcqRel);
                    }
                    BackplaneEvent::Reconnected => {
                        self.overflow
                            .pending
                            .fetch_or(RECONNECTED, Ordering::AcqRel);
                    }
                    BackplaneEvent::Lagged { missed } => {
                        self.overflow.dropped.fetch_add(missed, Ordering::AcqRel);
                    }
                    BackplaneEvent::Message(_) => {
                        self.overflow.dropped.fetch_add(1, Ordering::AcqRel);
                    }
                }
                true
            }
        }
    }

    /// Whether the subscription has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the subscription has been dropped (at once if it already has been).
    ///
    /// A backplane's receive task selects on it next to its connection, so it stops — and
    /// closes its connection — the moment the cache lets go of the subscription, instead of
    /// at its next message or keep-alive.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("queued", &self.rx.len())
            .field("dropped", &self.overflow.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &'static str) -> BackplaneEvent {
        BackplaneEvent::Message(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn connection_events_survive_a_full_queue() {
        let (sender, mut sub) = Subscription::channel(1);
        assert!(sender.send(msg("a")));
        assert!(sender.send(BackplaneEvent::Disconnected));
        assert!(sender.send(BackplaneEvent::Reconnected));
        assert!(sender.send(msg("b")));
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Disconnected));
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Reconnected));
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Lagged { missed: 1 }));
        assert_eq!(sub.recv().await, Some(msg("a")));
        drop(sender);
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_ready_in_recv_order() {
        let (sender, mut sub) = Subscription::channel(1);
        assert_eq!(sub.try_recv(), None);
        sender.send(msg("a"));
        sender.send(msg("b"));
        sender.send(BackplaneEvent::Reconnected);
        assert_eq!(sub.try_recv(), Some(BackplaneEvent::Reconnected));
        assert_eq!(sub.try_recv(), Some(BackplaneEvent::Lagged { missed: 1 }));
        assert_eq!(sub.try_recv(), Some(msg("a")));
        assert_eq!(sub.try_recv(), None);
    }

    #[tokio::test]
    async fn closed_resolves_when_the_subscription_is_dropped() {
        let (sender, sub) = Subscription::channel(4);
        let clone = sender.clone();
        let waiter = tokio::spawn(async move { clone.closed().await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the subscription is still alive");
        drop(sub);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("closed() resolves once the subscription is dropped")
            .expect("the waiter does not panic");
        sender.closed().await; // already closed: resolves at once
    }

    #[tokio::test]
    async fn send_reports_a_dropped_subscription() {
        let (sender, sub) = Subscription::channel(4);
        drop(sub);
        assert!(!sender.send(msg("x")));
        assert!(sender.is_closed());
    }
}
