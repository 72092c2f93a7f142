//! [`PublishGate`]: holds publishes on an [`InMemoryBackplane`](super::InMemoryBackplane) in
//! flight until a test lets them go, so "what happens while a send is in flight" can be
//! tested deterministically instead of with sleeps.

#[cfg(feature = "test-util")]
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Default, Clone, Copy)]
struct GateState {
    /// Live [`PublishGate`]s; publishes pass freely when 0.
    holders: usize,
    /// Publishes that may pass while held ([`PublishGate::release_one`]).
    permits: usize,
    /// Publishes parked at the gate now.
    waiting: usize,
}

/// The bus's side of the gate.
#[derive(Debug)]
pub(crate) struct Gate {
    state: watch::Sender<GateState>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            state: watch::Sender::new(GateState::default()),
        }
    }

    /// Returns at once unless a [`PublishGate`] is held; then waits for a permit or for every
    /// gate to be released. Cancel safe: a dropped wait leaves no trace (not even a permit
    /// taken).
    pub(crate) async fn pass(&self) {
        if self.state.borrow().holders == 0 {
            return;
        }
        let _waiting = Waiting::enter(self);
        let mut rx = self.state.subscribe();
        loop {
            // `map` drops the read guard before we write below.
            let open = rx
                .wait_for(|s| s.holders == 0 || s.permits > 0)
                .await
                .map(|_| ());
            if open.is_err() {
                // The sender lives in `self`; unreachable, but never strand a publish.
                return;
            }
            let mut passed = false;
            self.state.send_if_modified(|s| {
                if s.holders == 0 {
                    passed = true;
                    false
                } else if s.permits > 0 {
                    s.permits -= 1;
                    passed = true;
                    true
                } else {
                    false
                }
            });
            if passed {
                return;
            }
        }
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn hold(self: &Arc<Self>) -> PublishGate {
        self.state.send_modify(|s| s.holders += 1);
        PublishGate { gate: self.clone() }
    }
}

/// Counts a publish as parked for as long as it waits, including when its future is dropped.
struct Waiting<'a>(&'a Gate);

impl<'a> Waiting<'a> {
    fn enter(gate: &'a Gate) -> Self {
        gate.state.send_modify(|s| s.waiting += 1);
        Self(gate)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| s.waiting -= 1);
    }
}

/// While this guard lives, publishes on its bus wait before delivering — "in flight" — until
/// [`release_one`](Self::release_one) lets one through or the guard is dropped (or
/// [`release`](Self::release)d), which lets all through. Several guards may be held; the
/// gate opens when the last is gone. Made by
/// [`InMemoryBackplane::hold_publishes`](super::InMemoryBackplane::hold_publishes).
///
/// A test hook (feature `test-util`), not part of the semver-stable API.
///
/// ```
/// use bytes::Bytes;
/// use nearcache_backplane::{Backplane, BackplaneEvent, InMemoryBackplane};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let bus = InMemoryBackplane::new();
/// let mut subscription = bus.subscribe().await.unwrap();
/// let gate = bus.hold_publishes();
/// let publisher = tokio::spawn({
///     let bus = bus.clone();
///     async move { bus.publish(Bytes::from_static(b"first")).await }
/// });
/// gate.wait_held(1).await; // the publish is in flight now
/// assert_eq!(bus.delivered(), 0);
/// gate.release();
/// publisher.await.unwrap().unwrap();
/// assert_eq!(
///     subscription.recv().await,
///     Some(BackplaneEvent::Message(Bytes::from_static(b"first")))
/// );
/// # });
/// ```
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Debug)]
#[must_use = "publishes are held only while the gate lives"]
pub struct PublishGate {
    gate: Arc<Gate>,
}

#[cfg(feature = "test-util")]
impl PublishGate {
    /// Publishes parked at the gate right now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.gate.state.borrow().waiting
    }

    /// Waits until at least `n` publishes are parked at the gate.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.gate.state.subscribe();
        // The sender lives in the gate we hold, so this cannot fail.
        let _ = rx.wait_for(|s| s.waiting >= n).await;
    }

    /// Lets one publish through: one that is parked now, or else the next to arrive. Unused
    /// permits lapse when the gate opens.
    pub fn release_one(&self) {
        self.gate.state.send_modify(|s| s.permits += 1);
    }

    /// Opens the gate (same as dropping it): every parked publish goes on.
    pub fn release(self) {}
}

#[cfg(feature = "test-util")]
impl Drop for PublishGate {
    fn drop(&mut self) {
        self.gate.state.send_modify(|s| {
            s.holders -= 1;
            if s.holders == 0 {
                s.permits = 0;
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::memory::tests::spawn_reporting;

    /// A task that passes `gate`.
    fn spawn_pass(gate: &Arc<Gate>) -> tokio::task::JoinHandle<()> {
        let gate = Arc::clone(gate);
        tokio::spawn(async move { gate.pass().await })
    }

    #[tokio::test]
    async fn an_open_gate_does_not_wait() {
        let gate = Arc::new(Gate::new());
        gate.pass().await;
        drop(gate.hold());
        gate.pass().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_one_lets_exactly_one_through() {
        let gate = Arc::new(Gate::new());
        let held = gate.hold();
        let mut done_rx = spawn_reporting(5, |_| {
            let gate = Arc::clone(&gate);
            async move { gate.pass().await }
        });
        held.wait_held(5).await;
        for passed in 1..=4 {
            held.release_one();
            done_rx.recv().await.unwrap();
            // The one that passed left the count before it reported; a second one through
            // on the same permit would show here (or as an extra report below).
            assert_eq!(held.held(), 5 - passed);
        }
        assert!(
            done_rx.try_recv().is_err(),
            "more passed than were released"
        );
        drop(held);
        done_rx.recv().await.unwrap();
        assert_eq!(gate.state.borrow().waiting, 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_is_no_longer_counted_and_takes_no_permit() {
        let gate = Arc::new(Gate::new());
        let held = gate.hold();
        let waiter = spawn_pass(&gate);
        held.wait_held(1).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(held.held(), 0);
        held.release_one();
        // The permit is still there for the next publish.
        gate.pass().await;
    }

    #[tokio::test]
    async fn the_gate_opens_when_the_last_holder_goes() {
        let gate = Arc::new(Gate::new());
        let first = gate.hold();
        let second = gate.hold();
        let waiter = spawn_pass(&gate);
        first.wait_held(1).await;
        first.release();
        assert_eq!(second.held(), 1);
        drop(second);
        waiter.await.unwrap();
    }
}
