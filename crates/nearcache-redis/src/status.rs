//! [`ConnectionStatus`]: a cheap, watchable answer to "is Redis reachable right now?".
//!
//! The facade reads it for health checks and metrics; the events of the
//! [`Subscription`](nearcache_backplane::Subscription) stay the authority on missed messages.
//! Publishes update it only when the state flips, so the hot path costs one relaxed atomic
//! load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

/// The state of one of the backplane's two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Not started: no subscription has been made yet.
    Idle,
    /// Working: the last command on it succeeded.
    Up,
    /// Lost: Redis did not answer the last command; the connection is being re-established.
    Down,
}

/// What a [`RedisBackplane`](crate::RedisBackplane) knows about its connections.
///
/// The publisher's state is that of its last command (the connect check, then each
/// `publish`): a publisher is only found down by a failing publish and only found back by a
/// succeeding one. The subscriber's state follows its connection closely: it pings Redis every
/// [`ping_interval`](crate::RedisConfig::ping_interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// The publishing connection.
    pub publisher: LinkState,
    /// The subscribing connection (of the latest [`subscribe`](nearcache_backplane::Backplane::subscribe)).
    pub subscriber: LinkState,
}

impl ConnectionStatus {
    /// Whether nothing is known to be down: the publisher is up and the subscriber is up or
    /// not started.
    pub fn is_connected(&self) -> bool {
        self.publisher == LinkState::Up && self.subscriber != LinkState::Down
    }
}

/// The shared, writable side of the status, held by the backplane and its subscriber tasks.
#[derive(Debug)]
pub(crate) struct StatusCell {
    tx: watch::Sender<ConnectionStatus>,
    // Mirrors `publisher == Up` so a successful publish checks one atomic, not the watch lock.
    publisher_up: AtomicBool,
    publisher_down_since: Mutex<Option<Instant>>,
}

impl StatusCell {
    /// A cell whose publisher is up (it has just answered the connect check).
    pub(crate) fn new() -> Self {
        let (tx, _) = watch::channel(ConnectionStatus {
            publisher: LinkState::Up,
            subscriber: LinkState::Idle,
        });
        Self {
            tx,
            publisher_up: AtomicBool::new(true),
            publisher_down_since: Mutex::new(None),
        }
    }

    pub(crate) fn get(&self) -> ConnectionStatus {
        *self.tx.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<ConnectionStatus> {
        self.tx.subscribe()
    }

    /// Records a successful publisher command. Returns how long the publisher had been down
    /// if this ends an outage.
    #[inline]
    pub(crate) fn publisher_succeeded(&self) -> Option<Duration> {
        if self.publisher_up.load(Ordering::Relaxed) {
            return None;
        }
        self.publisher_flip(true)
    }

    /// Records a failed publisher command. Returns `true` if this starts an outage.
    pub(crate) fn publisher_failed(&self) -> bool {
        if !self.publisher_up.load(Ordering::Relaxed) {
            return false;
        }
        self.publisher_flip(false);
        true
    }

    fn publisher_flip(&self, up: bool) -> Option<Duration> {
        let mut since = self.publisher_down_since.lock();
        if self.publisher_up.swap(up, Ordering::Relaxed) == up {
            return None; // another task flipped it first
        }
        let outage = if up {
            since.take().map(|start| start.elapsed())
        } else {
            *since = Some(Instant::now());
            None
        };
        let state = if up { LinkState::Up } else { LinkState::Down };
        self.tx.send_modify(|status| status.publisher = state);
        outage
    }

    pub(crate) fn set_subscriber(&self, state: LinkState) {
        self.tx.send_if_modified(|status| {
            let changed = status.subscriber != state;
            status.subscriber = state;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_transitions_are_reported_once() {
        let cell = StatusCell::new();
        let mut watch = cell.watch();
        assert!(cell.get().is_connected());
        assert_eq!(cell.publisher_succeeded(), None);
        assert!(cell.publisher_failed());
        assert!(
            !cell.publisher_failed(),
            "a second failure is the same outage"
        );
        assert!(watch.has_changed().unwrap_or(false));
        assert_eq!(watch.borrow_and_update().publisher, LinkState::Down);
        assert!(!cell.get().is_connected());
        assert!(cell.publisher_succeeded().is_some());
        assert_eq!(cell.publisher_succeeded(), None);
        assert!(cell.get().is_connected());
    }

    #[test]
    fn subscriber_state_counts_only_when_down() {
        let cell = StatusCell::new();
        let mut watch = cell.watch();
        cell.set_subscriber(LinkState::Idle);
        assert!(
            !watch.has_changed().unwrap_or(true),
            "no change, no wake-up"
        );
        cell.set_subscriber(LinkState::Down);
        assert!(!cell.get().is_connected());
        assert_eq!(watch.borrow_and_update().subscriber, LinkState::Down);
        cell.set_subscriber(LinkState::Up);
        assert!(cell.get().is_connected());
    }

    #[test]
    fn concurrent_flips_report_one_recovery() {
        let cell = std::sync::Arc::new(StatusCell::new());
        assert!(cell.publisher_failed());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let recoveries: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let cell = cell.clone();
                    let barrier = barrier.clone();
                    scope.spawn(move || {
                        barrier.wait();
                        usize::from(cell.publisher_succeeded().is_some())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(recoveries, 1);
        assert_eq!(cell.get().publisher, LinkState::Up);
    }
}
