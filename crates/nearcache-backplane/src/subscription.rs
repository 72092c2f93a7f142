//! [`Subscription`]: the receiving end of a backplane, and [`EventSender`], the end a
//! backplane implementation feeds.
//!
//! Two things travel from a backplane to its cache, and they travel differently:
//!
//! - **Payloads** go through a queue bounded both by count and by bytes, so a stalled cache
//!   cannot make a backplane buffer without limit. The sender never waits: a payload that does
//!   not fit is dropped and counted, and the subscription reports the count as
//!   [`BackplaneEvent::Lagged`] before its next payload, which makes the cache clear itself
//!   (loss means clear).
//! - **Connection health** is *state*, not a stream of edges: a [`LinkHealth`] value (up or
//!   down, and a generation that grows with every re-established link) held in a
//!   `tokio::sync::watch`. It cannot be dropped or reordered by a full queue. The
//!   subscription compares the latest value with the last one it reported and reports the
//!   difference as [`BackplaneEvent::Disconnected`] / [`BackplaneEvent::Reconnected`], always
//!   ending in agreement with the link's real state: a disconnect, reconnect and disconnect
//!   in quick succession read as *down*; a reconnect the reader never saw (down and up again
//!   between two reads) reads as `Reconnected`, so the loss is never missed.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backplane::BackplaneEvent;

/// The health of a subscription's link, as the backplane last reported it.
///
/// `generation` counts re-established links: 0 for the first subscription, one more for
/// every [`link_restored`](EventSender::link_restored). A reader that last saw generation
/// `g` and now sees a larger one knows the link was lost in between, even if it never saw it
/// down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkHealth {
    /// Whether payloads published now reach this subscription.
    pub connected: bool,
    /// How many times the link has been re-established since the subscription was made.
    pub generation: u64,
}

impl LinkHealth {
    /// The state of a fresh subscription: connected, generation 0.
    pub const FIRST: LinkHealth = LinkHealth {
        connected: true,
        generation: 0,
    };
}

/// What the two ends share besides the queue.
struct Shared {
    /// Payloads dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
    /// Bytes of the payloads now in the queue.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
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
///
/// // Connection health is state: down and up again before the reader looked still reads
/// // as a reconnect (something may have been missed), never as nothing.
/// sender.link_lost();
/// sender.link_restored();
/// assert_eq!(subscription.recv().await, Some(BackplaneEvent::Reconnected));
/// drop(sender);
/// assert_eq!(subscription.recv().await, None);
/// # });
/// ```
pub struct Subscription {
    rx: mpsc::Receiver<Bytes>,
    link: watch::Receiver<LinkHealth>,
    /// The health last reported to the reader.
    reported: LinkHealth,
    shared: Arc<Shared>,
}

/// The feeding end of a [`Subscription`], held by a backplane implementation. Cheap to clone.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Bytes>,
    link: Arc<watch::Sender<LinkHealth>>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// Bytes of payloads a subscription made by [`channel`](Self::channel) queues at most:
    /// 16 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

    /// A connected pair whose queue holds up to `capacity` payloads (at least 1) and
    /// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES) bytes of them.
    pub fn channel(capacity: usize) -> (EventSender, Subscription) {
        Self::bounded(capacity, Self::DEFAULT_MAX_BYTES)
    }

    /// A connected pair whose queue holds up to `capacity` payloads (at least 1) and
    /// `max_bytes` bytes of them (a payload always fits an empty queue, so one larger than
    /// `max_bytes` is not dropped for its size alone).
    pub fn bounded(capacity: usize, max_bytes: usize) -> (EventSender, Subscription) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (link_tx, link_rx) = watch::channel(LinkHealth::FIRST);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
        });
        (
            EventSender {
                tx,
                link: Arc::new(link_tx),
                shared: shared.clone(),
            },
            Subscription {
                rx,
                link: link_rx,
                reported: LinkHealth::FIRST,
                shared,
            },
        )
    }

    /// The next event, or `None` once every sender is gone and the queue is drained.
    ///
    /// A change of the link's health comes first (as `Disconnected` or `Reconnected`, see
    /// the module docs), then a [`BackplaneEvent::Lagged`] if payloads were dropped, then the
    /// queued payloads in order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no event is lost.
    pub async fn recv(&mut self) -> Option<BackplaneEvent> {
        loop {
            if let Some(event) = self.ready() {
                return Some(event);
            }
            tokio::select! {
                biased;
                // An error means every sender is gone; their last state was reconciled
                // above, and the queue tells when the subscription has ended.
                changed = self.link.changed() => if changed.is_ok() { continue },
                payload = self.rx.recv() => return match payload {
                    Some(payload) => Some(self.take(payload)),
                    None => self.reconcile().or_else(|| self.lagged()),
                },
            }
            // The link's sender is gone: wait on the queue alone.
            return match self.rx.recv().await {
                Some(payload) => Some(self.take(payload)),
                None => self.reconcile().or_else(|| self.lagged()),
            };
        }
    }

    /// The next event if one is ready now, without waiting: `None` when none is (or the
    /// subscription has ended; [`recv`](Self::recv) tells the two apart). Same order as
    /// `recv`.
    pub fn try_recv(&mut self) -> Option<BackplaneEvent> {
        if let Some(event) = self.ready() {
            return Some(event);
        }
        let payload = self.rx.try_recv().ok()?;
        Some(self.take(payload))
    }

    /// The link's health now (not necessarily reported yet by [`recv`](Self::recv)).
    pub fn link(&self) -> LinkHealth {
        *self.link.borrow()
    }

    /// A health change or a lag, if either is pending.
    fn ready(&mut self) -> Option<BackplaneEvent> {
        self.reconcile().or_else(|| self.lagged())
    }

    fn lagged(&self) -> Option<BackplaneEvent> {
        match self.shared.dropped.swap(0, Ordering::AcqRel) {
            0 => None,
            missed => Some(BackplaneEvent::Lagged { missed }),
        }
    }

    fn take(&self, payload: Bytes) -> BackplaneEvent {
        self.shared
            .queued_bytes
            .fetch_sub(payload.len(), Ordering::AcqRel);
        BackplaneEvent::Message(payload)
    }

    /// Compares the link's health with what was last reported and reports the difference.
    fn reconcile(&mut self) -> Option<BackplaneEvent> {
        let now = *self.link.borrow_and_update();
        let before = std::mem::replace(&mut self.reported, now);
        if now.connected {
            // Up again, or up all along but re-established meanwhile: a loss either way.
            (now.generation != before.generation || !before.connected)
                .then_some(BackplaneEvent::Reconnected)
        } else {
            // Down: tell it once. (Down, briefly up, down again reads as still down; the
            // reconnect that ends it reads as `Reconnected`.)
            before.connected.then_some(BackplaneEvent::Disconnected)
        }
    }
}

impl EventSender {
    /// Queues `event` without waiting.
    ///
    /// A payload that does not fit (by count or by bytes) is dropped and counted (the
    /// subscriber sees [`BackplaneEvent::Lagged`]). `Disconnected` and `Reconnected` change
    /// the link's health ([`link_lost`](Self::link_lost), [`link_restored`](Self::link_restored));
    /// they never queue. Returns `false` once the subscription has been dropped, which tells
    /// the backplane to stop feeding it.
    pub fn send(&self, event: BackplaneEvent) -> bool {
        match event {
            BackplaneEvent::Message(payload) => self.send_payload(payload),
            BackplaneEvent::Disconnected => {
                self.link_lost();
                !self.is_closed()
            }
            BackplaneEvent::Reconnected => {
                self.link_restored();
                !self.is_closed()
            }
            BackplaneEvent::Lagged { missed } => {
                self.shared.dropped.fetch_add(missed, Ordering::AcqRel);
                !self.is_closed()
            }
        }
    }

    fn send_payload(&self, payload: Bytes) -> bool {
        let len = payload.len();
        let max = self.shared.max_bytes;
        let reserved = self
            .shared
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued.saturating_add(len) <= max).then(|| queued + len)
            })
            .is_ok();
        if !reserved {
            if self.is_closed() {
                return false;
            }
            self.shared.dropped.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        match self.tx.try_send(payload) {
            Ok(()) => true,
            Err(error) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match error {
                    mpsc::error::TrySendError::Closed(_) => false,
                    mpsc::error::TrySendError::Full(_) => {
                        self.shared.dropped.fetch_add(1, Ordering::AcqRel);
                        true
                    }
                }
            }
        }
    }

    /// The link is down: payloads published from now on are missed. No effect if it already
    /// is.
    pub fn link_lost(&self) {
        self.link.send_if_modified(|health| {
            let was = health.connected;
            health.connected = false;
            was
        });
    }

    /// The link is back (the server confirmed the new subscription): the generation grows,
    /// so the subscription reads it as a reconnect even if it never saw the link down. No
    /// effect if the link is up.
    pub fn link_restored(&self) {
        self.link.send_if_modified(|health| {
            if health.connected {
                return false;
            }
            health.connected = true;
            health.generation += 1;
            true
        });
    }

    /// The link's health as last set.
    pub fn link(&self) -> LinkHealth {
        *self.link.borrow()
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
            .field(
                "queued_bytes",
                &self.shared.queued_bytes.load(Ordering::Relaxed),
            )
            .field("dropped", &self.shared.dropped.load(Ordering::Relaxed))
            .field("link", &*self.link.borrow())
            .finish()
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("closed", &self.tx.is_closed())
            .field("link", &*self.link.borrow())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn msg(s: &'static str) -> BackplaneEvent {
        BackplaneEvent::Message(Bytes::from_static(s.as_bytes()))
    }

    /// Sends `events` in order, whether each is queued or dropped for a full queue.
    fn send_all(sender: &EventSender, events: impl IntoIterator<Item = BackplaneEvent>) {
        for event in events {
            sender.send(event);
        }
    }

    /// Drains what is ready and returns whether the reader ends believing the link is up.
    fn believed_up(sub: &mut Subscription) -> bool {
        let mut up = true;
        while let Some(event) = sub.try_recv() {
            match event {
                BackplaneEvent::Disconnected => up = false,
                BackplaneEvent::Reconnected => up = true,
                _ => {}
            }
        }
        up
    }

    #[tokio::test]
    async fn connection_health_is_state_that_a_full_queue_cannot_reorder() {
        let (sender, mut sub) = Subscription::channel(1);
        assert!(sender.send(msg("a")));
        assert!(sender.send(BackplaneEvent::Disconnected));
        assert!(sender.send(BackplaneEvent::Reconnected));
        assert!(sender.send(msg("b")));
        // The reconnect is reported first (the reader must clear), then the lag, then the
        // payload that was queued before the link dropped.
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Reconnected));
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Lagged { missed: 1 }));
        assert_eq!(sub.recv().await, Some(msg("a")));
        drop(sender);
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn disconnect_reconnect_disconnect_behind_a_full_queue_reads_as_down() {
        let (sender, mut sub) = Subscription::channel(1);
        let (down, up) = (BackplaneEvent::Disconnected, BackplaneEvent::Reconnected);
        send_all(&sender, [msg("a"), down.clone(), up, down]);
        assert!(!believed_up(&mut sub), "the link is down");
        assert_eq!(
            sub.link(),
            LinkHealth {
                connected: false,
                generation: 1
            }
        );
    }

    #[tokio::test]
    async fn payload_disconnect_reconnect_behind_a_full_queue_reads_as_up() {
        let (sender, mut sub) = Subscription::channel(2);
        let (down, up) = (BackplaneEvent::Disconnected, BackplaneEvent::Reconnected);
        send_all(&sender, [msg("a"), down.clone(), up.clone()]);
        assert_eq!(sub.try_recv(), Some(up.clone()));
        assert_eq!(sub.try_recv(), Some(msg("a")));
        assert_eq!(sub.try_recv(), None);
        send_all(&sender, [down, up, msg("b")]);
        assert!(believed_up(&mut sub), "the link is up");
    }

    #[tokio::test]
    async fn an_unseen_down_and_up_is_still_a_reconnect() {
        let (sender, mut sub) = Subscription::channel(4);
        sender.link_lost();
        sender.link_restored();
        sender.link_restored(); // already up: no new generation
        assert_eq!(sub.try_recv(), Some(BackplaneEvent::Reconnected));
        assert_eq!(sub.try_recv(), None);
        sender.link_lost();
        sender.link_lost();
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Disconnected));
        assert_eq!(sub.try_recv(), None, "reported once");
    }

    #[tokio::test]
    async fn recv_wakes_on_a_health_change_with_nothing_queued() {
        let (sender, mut sub) = Subscription::channel(4);
        let reader = tokio::spawn(async move { sub.recv().await });
        tokio::task::yield_now().await;
        sender.link_lost();
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("recv wakes")
            .expect("the reader does not panic");
        assert_eq!(event, Some(BackplaneEvent::Disconnected));
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes() {
        let (sender, mut sub) = Subscription::bounded(100, 10);
        let big = || BackplaneEvent::Message(Bytes::from(vec![0u8; 6]));
        assert!(sender.send(big()));
        assert!(sender.send(big()), "dropped, not refused");
        assert_eq!(sub.try_recv(), Some(BackplaneEvent::Lagged { missed: 1 }));
        assert_eq!(sub.try_recv(), Some(big()));
        // Once read, the bytes are free again; a payload larger than the bound fits an
        // empty queue.
        assert!(sender.send(BackplaneEvent::Message(Bytes::from(vec![0u8; 50]))));
        assert_eq!(
            sub.try_recv()
                .map(|e| matches!(e, BackplaneEvent::Message(p) if p.len() == 50)),
            Some(true)
        );
        assert!(sender.send(big()));
        assert_eq!(sub.try_recv(), Some(big()));
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
        assert!(!sender.send(BackplaneEvent::Disconnected));
        assert!(sender.is_closed());
    }
}
