//! Hearing our own voice: a live connection is no proof of a live subscription.
//!
//! A server can stop feeding a subscription while the connection stays healthy — an
//! unsolicited unsubscribe after an ACL change, a proxy that lost it, a failover that kept
//! the socket. Pings still succeed and the backplane reports the link up, yet nothing
//! arrives. The channel echoes every publish to every subscriber, this instance included, so
//! each instance checks that what it published comes back: the sender records the first
//! publish not yet heard back, the receiver clears it when the echo arrives, and if it stays
//! unheard for `heartbeat_echo_intervals` heartbeat intervals the receiver treats the
//! subscription as lost (resubscribe, clear). An idle instance still publishes a heartbeat
//! every interval, so silence is noticed even when nobody writes.
//!
//! Only publishes that *started* after the current subscription was made must come back:
//! one that went out while the subscription was down or being remade was never ours to hear.

use parking_lot::Mutex;
use tokio::time::Instant;

/// The first publish not yet heard back, and since when we listen.
#[derive(Debug, Default)]
pub(crate) struct Echo {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current subscription began; `None` while there is none (nothing expected).
    listening_since: Option<Instant>,
    /// The sequence number of the oldest publish not heard back, and when it was published.
    first_unheard: Option<(u64, Instant)>,
}

impl Echo {
    /// A subscription that began at `since` is live: publishes started from then on come back.
    pub(crate) fn listening(&self, since: Instant) {
        let mut state = self.state.lock();
        state.listening_since = Some(since);
        state.first_unheard = None;
    }

    /// The subscription is down: no echo is expected until the next [`listening`](Self::listening).
    pub(crate) fn deaf(&self) {
        let mut state = self.state.lock();
        state.listening_since = None;
        state.first_unheard = None;
    }

    /// A publish carrying `seq` that started at `started` was accepted by the backplane.
    pub(crate) fn published(&self, seq: u64, started: Instant) {
        let mut state = self.state.lock();
        let expected = state.listening_since.is_some_and(|since| started >= since);
        if expected && state.first_unheard.is_none() {
            state.first_unheard = Some((seq, Instant::now()));
        }
    }

    /// Our own payload carrying `seq` came back (heartbeats repeat the last number, so
    /// anything at or past the oldest unheard one settles it).
    pub(crate) fn heard(&self, seq: u64) {
        let mut state = self.state.lock();
        if state
            .first_unheard
            .is_some_and(|(unheard, _)| seq >= unheard)
        {
            state.first_unheard = None;
        }
    }

    /// When the oldest publish not heard back went out, if there is one.
    pub(crate) fn unheard_since(&self) -> Option<Instant> {
        self.state.lock().first_unheard.map(|(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_publish_is_expected_back_once_listening() {
        let echo = Echo::default();
        let before = Instant::now();
        echo.published(1, before);
        assert_eq!(echo.unheard_since(), None, "not listening yet");
        let since = before + Duration::from_millis(5);
        echo.listening(since);
        echo.published(2, before);
        assert_eq!(
            echo.unheard_since(),
            None,
            "started before the subscription"
        );
        echo.published(3, since);
        let first = echo.unheard_since();
        assert!(first.is_some());
        echo.published(4, since + Duration::from_millis(1));
        assert_eq!(echo.unheard_since(), first, "the oldest one counts");
        echo.heard(2);
        assert_eq!(echo.unheard_since(), first, "an older echo settles nothing");
        echo.heard(3);
        assert_eq!(echo.unheard_since(), None);
    }

    #[test]
    fn a_lost_subscription_expects_nothing() {
        let echo = Echo::default();
        let now = Instant::now();
        echo.listening(now);
        echo.published(1, now);
        echo.deaf();
        assert_eq!(echo.unheard_since(), None);
        echo.published(2, now);
        assert_eq!(echo.unheard_since(), None);
    }
}
