//! Answering a newcomer's hello with our position, at a bounded rate.
//!
//! A newcomer announces itself with a hello as soon as its subscription is live. Each peer
//! answers with a heartbeat carrying its last sequence number, published at once, so the
//! newcomer's first contact with every live peer is that peer's exact position rather than a
//! first message taken on trust (see [`peers`](super::peers)): a message lost after the
//! answer shows as a gap. The answer goes to the whole channel, so one answer serves every
//! hello received before it was sent — hellos that arrive while one is pending are merged.
//!
//! Anyone who can publish can send hellos, and a fleet restarting at once sends many: a
//! storm of hellos must not make every peer publish a storm. Answers are rate-limited by a
//! token bucket ([`ANSWER_BURST`] at once, then one per [`answer_interval`]); a hello that
//! finds the bucket empty is answered when the next token comes, still inside the
//! newcomer's introduction window (one heartbeat interval), by one answer for all of them.

use std::time::Duration;

use tokio::time::Instant;

/// Answers that may go out back to back (a few instances starting together).
pub(crate) const ANSWER_BURST: u32 = 4;

/// How often an answer may go out once the burst is spent: a quarter of the heartbeat
/// interval (so a delayed answer still lands inside the newcomer's introduction window of
/// one interval), and at most one a second.
pub(crate) fn answer_interval(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 4)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(1))
}

/// The sender's token bucket for answers.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    tokens: u32,
    /// When the bucket was last topped up (advanced by whole intervals only).
    refilled_at: Instant,
    interval: Duration,
}

impl AnswerBudget {
    pub(crate) fn new(heartbeat_interval: Duration, now: Instant) -> Self {
        AnswerBudget {
            tokens: ANSWER_BURST,
            refilled_at: now,
            interval: answer_interval(heartbeat_interval),
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= ANSWER_BURST {
            self.refilled_at = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / self.interval.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(ANSWER_BURST);
            self.refilled_at = if self.tokens >= ANSWER_BURST {
                now
            } else {
                self.refilled_at + self.interval * earned
            };
        }
    }

    /// Takes a token if one is available now.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// When the next token will be available (now, if one is).
    pub(crate) fn next_token_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens > 0 {
            now
        } else {
            self.refilled_at + self.interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let start = Instant::now();
        let interval = answer_interval(Duration::from_millis(400));
        assert_eq!(interval, Duration::from_millis(100));
        let mut budget = AnswerBudget::new(Duration::from_millis(400), start);
        for _ in 0..ANSWER_BURST {
            assert!(budget.take(start));
        }
        assert!(!budget.take(start), "the burst is spent");
        assert_eq!(budget.next_token_at(start), start + interval);
        let almost = start + interval - Duration::from_millis(1);
        assert!(!budget.take(almost));
        assert!(budget.take(start + interval));
        assert!(!budget.take(start + interval));
        // However long it stays idle, it never saves more than a burst.
        let later = start + interval * 100;
        let taken = (0..100).filter(|_| budget.take(later)).count();
        assert_eq!(taken, ANSWER_BURST as usize);
    }

    #[test]
    fn the_interval_is_bounded() {
        assert_eq!(
            answer_interval(Duration::from_secs(3600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            answer_interval(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
    }
}
