//! Per-peer sequence tracking: noticing that a message from a peer never arrived.
//!
//! Every origin numbers its messages 1, 2, 3, … and sends a heartbeat carrying its last
//! number every few seconds. A receiver remembers the last number it saw from each origin;
//! a jump means messages were lost in between, and a heartbeat ahead of what was seen means
//! the *last* message was lost. Either way the receiver may hold stale entries and must clear.
//!
//! The first message seen from an origin is the hard case: was anything before it lost, or
//! sent before we were listening (and so never ours to miss)? Before its subscription was
//! live this instance served nothing from its store, so only losses *after* it count.
//! - An origin that started after we subscribed must have reached us from its first
//!   message: a first number above 1 (or a heartbeat above 0) is a loss.
//! - An older origin is taken at its word (its number becomes the baseline) during an
//!   *introduction window* of one heartbeat interval after we subscribed. For a heartbeat
//!   this is exact: an origin sends a heartbeat only after a full interval without
//!   messages, so a heartbeat that arrives within one interval of our subscription
//!   vouches that its last message went out before we listened. (It assumes peers share
//!   the heartbeat interval; a peer with a shorter one weakens it. The heartbeat that
//!   carries an overflowed outbox's skipped number is the exception: it follows at once.)
//!   A first *message* in
//!   that window is trusted too: a message lost in the window and followed by another in
//!   the same window goes unnoticed — the one gap left, at most one interval long, once:
//!   the window opens at the first subscription, and a reconnect keeps what was learned.
//! - After the window every live peer has spoken (an idle one through a heartbeat), so a
//!   first contact from an older origin that is ahead of its start means we missed what it
//!   said: a loss. This also catches a peer that comes back after being forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one received message means for its origin's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The next message in order (or a heartbeat that matches): apply it.
    InOrder,
    /// A number already seen (a retried publish that had gone through): ignore it.
    Duplicate,
    /// `missed` messages never arrived: clear, then apply this one.
    Gap { missed: u64 },
}

#[derive(Debug)]
struct Peer {
    last_seq: u64,
    last_heard: Instant,
}

/// When a subscription began: wall clock (compared with peers' start times) and monotonic
/// (for the introduction window).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscribed {
    pub(crate) unix_ms: u64,
    pub(crate) at: Instant,
}

impl Subscribed {
    pub(crate) fn now() -> Self {
        Subscribed {
            unix_ms: super::unix_ms(),
            at: Instant::now(),
        }
    }
}

/// The sequence state of every origin heard from.
#[derive(Debug)]
pub(crate) struct Peers {
    peers: HashMap<u128, Peer>,
    subscribed: Subscribed,
    /// How long after subscribing an older origin's first contact sets its baseline.
    introduction: Duration,
    /// Peers silent for longer than this are forgotten.
    forget_after: Duration,
}

impl Peers {
    pub(crate) fn new(
        subscribed: Subscribed,
        introduction: Duration,
        forget_after: Duration,
    ) -> Self {
        Peers {
            peers: HashMap::new(),
            subscribed,
            introduction,
            forget_after,
        }
    }

    /// Records a message (`heartbeat == false`) or heartbeat numbered `seq` from `origin`,
    /// which started at `origin_started_unix_ms`.
    pub(crate) fn observe(
        &mut self,
        origin: u128,
        origin_started_unix_ms: u64,
        seq: u64,
        heartbeat: bool,
        now: Instant,
    ) -> Seen {
        match self.peers.get_mut(&origin) {
            None => {
                self.peers.insert(
                    origin,
                    Peer {
                        last_seq: seq,
                        last_heard: now,
                    },
                );
                let expected_first = if heartbeat { 0 } else { 1 };
                let younger = origin_started_unix_ms >= self.subscribed.unix_ms;
                let introduced =
                    now.saturating_duration_since(self.subscribed.at) >= self.introduction;
                if (younger || introduced) && seq > expected_first {
                    Seen::Gap {
                        missed: seq - expected_first,
                    }
                } else {
                    Seen::InOrder
                }
            }
            Some(peer) => {
                peer.last_heard = now;
                if heartbeat {
                    if seq > peer.last_seq {
                        let missed = seq - peer.last_seq;
                        peer.last_seq = seq;
                        Seen::Gap { missed }
                    } else {
                        Seen::InOrder
                    }
                } else if seq <= peer.last_seq {
                    Seen::Duplicate
                } else {
                    let missed = seq - peer.last_seq - 1;
                    peer.last_seq = seq;
                    if missed == 0 {
                        Seen::InOrder
                    } else {
                        Seen::Gap { missed }
                    }
                }
            }
        }
    }

    /// Forgets peers not heard from for a long time (they stopped); returns how many.
    pub(crate) fn forget_silent(&mut self, now: Instant) -> usize {
        let before = self.peers.len();
        let forget_after = self.forget_after;
        self.peers
            .retain(|_, peer| now.saturating_duration_since(peer.last_heard) < forget_after);
        before - self.peers.len()
    }

    /// How many peers have been heard from (and not forgotten).
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u128 = 0xA;
    const WINDOW: Duration = Duration::from_secs(5);

    /// Subscribed at Unix ms 1,000 and at `at`.
    fn peers_at(at: Instant) -> Peers {
        Peers::new(
            Subscribed { unix_ms: 1_000, at },
            WINDOW,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 0, 1, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 0, 2, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 0, 2, false, now), Seen::Duplicate);
        assert_eq!(p.observe(A, 0, 5, false, now), Seen::Gap { missed: 2 });
        assert_eq!(p.observe(A, 0, 6, false, now), Seen::InOrder);
    }

    #[test]
    fn a_heartbeat_ahead_reveals_a_lost_last_message() {
        let now = Instant::now();
        let mut p = peers_at(now);
        p.observe(A, 0, 1, false, now);
        assert_eq!(p.observe(A, 0, 1, true, now), Seen::InOrder);
        assert_eq!(p.observe(A, 0, 2, true, now), Seen::Gap { missed: 1 });
        assert_eq!(
            p.observe(A, 0, 2, true, now),
            Seen::InOrder,
            "reported once"
        );
        assert_eq!(p.observe(A, 0, 3, false, now), Seen::InOrder);
    }

    #[test]
    fn first_contact_with_an_older_peer_in_the_window_is_a_baseline() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 500, 41, false, now), Seen::InOrder);
        assert_eq!(
            p.observe(0xB, 500, 7, true, now + WINDOW - Duration::from_millis(1)),
            Seen::InOrder
        );
    }

    #[test]
    fn first_contact_with_an_older_peer_after_the_window_must_be_from_its_start() {
        let start = Instant::now();
        let mut p = peers_at(start);
        let later = start + WINDOW;
        // A peer that says it sent something we never saw: we missed it.
        assert_eq!(p.observe(A, 500, 3, true, later), Seen::Gap { missed: 3 });
        assert_eq!(
            p.observe(0xB, 500, 4, false, later),
            Seen::Gap { missed: 3 }
        );
        // A peer that has sent nothing yet (or whose first message this is) is in order.
        assert_eq!(p.observe(0xC, 500, 0, true, later), Seen::InOrder);
        assert_eq!(p.observe(0xD, 500, 1, false, later), Seen::InOrder);
    }

    #[test]
    fn a_younger_peer_must_start_from_one() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 2_000, 1, false, now), Seen::InOrder);
        assert_eq!(p.observe(0xB, 2_000, 0, true, now), Seen::InOrder);
        assert_eq!(
            p.observe(0xC, 2_000, 3, false, now),
            Seen::Gap { missed: 2 }
        );
        assert_eq!(p.observe(0xD, 2_000, 1, true, now), Seen::Gap { missed: 1 });
    }

    #[test]
    fn silent_peers_are_forgotten_and_a_forgotten_peer_ahead_is_a_loss() {
        let start = Instant::now();
        let mut p = peers_at(start);
        p.observe(A, 0, 1, false, start);
        p.observe(0xB, 0, 1, false, start + Duration::from_secs(50));
        assert_eq!(p.forget_silent(start + Duration::from_secs(70)), 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p.observe(0xB, 0, 3, false, start), Seen::Gap { missed: 1 });
        // A was forgotten; when it speaks again, past the window, what it sent meanwhile
        // did not reach us.
        assert_eq!(
            p.observe(A, 0, 9, false, start + Duration::from_secs(80)),
            Seen::Gap { missed: 8 }
        );
    }
}
