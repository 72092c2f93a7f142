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
//! Wall clocks are not consulted: hosts disagree, and a skewed clock would move a peer across
//! the line between "started before us" and "after us".
//! - A newcomer announces itself with a *hello* as soon as its subscription is live, before
//!   anything it invalidates from then on. So a peer that started after us is normally
//!   known from its hello (its number then, 0 if it had sent nothing), and a gap after it
//!   is a loss as usual, whatever the two hosts' clocks say.
//! - Peers answer a hello at once with a heartbeat carrying their last number
//!   ([`answer`](super::answer)), so a newcomer normally learns every live peer's position
//!   from its answer, a round trip after subscribing, and judges what follows against it.
//! - A first contact that is not a hello is taken at its word — its number becomes the
//!   baseline — during an *introduction window* of one heartbeat interval after we
//!   subscribed. For a heartbeat this is exact: an origin sends one only after a full
//!   interval without messages, so a heartbeat that arrives within one interval of our
//!   subscription vouches that its last message went out before we listened. (It assumes
//!   peers share the heartbeat interval; a peer with a shorter one weakens it. The
//!   heartbeat that carries an overflowed outbox's skipped number is the exception: it
//!   follows at once.) A first *message* in that window is trusted too: a message lost in
//!   the window and followed by another in the same window goes unnoticed — the one gap
//!   left, at most one interval long, once: the window opens at the first subscription,
//!   and a reconnect keeps what was learned. A newcomer whose hello was lost and whose first
//!   message was lost too, both within our window, is read the same way.
//! - After the window every live peer has spoken (an idle one through a heartbeat), so a
//!   first contact ahead of its origin's start means we missed what it said: a loss. This
//!   also catches a peer that comes back after being forgotten.
//!
//! Anyone who can publish on the channel can also send one message with a real peer's
//! origin and a huge sequence number. Taken as the new baseline, it would make every real
//! message from that peer look like a duplicate: silenced for good. So a jump is a loss
//! (clear) but never the last word: the peer remembers where it stood before the jump, and
//! a later number between the two is the real sequence resuming — judged against the old
//! baseline, applied, never dropped. One message can cost clears; it cannot hide messages.
//!
//! The table is capped ([`MAX_PEERS`]): anyone who can publish on the channel can invent
//! origins, and each would otherwise stay for `forget_after`. Past the cap the peer heard
//! from least recently is evicted. That is safe: an evicted peer's next contact is a first
//! contact after the introduction window, which reads as a gap (a clear), never as a
//! baseline that hides a loss.

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
    /// Where the sequence stood before its last unexplained jump (a gap, or a first contact
    /// past the start). A later number between it and `last_seq` is not a duplicate: it
    /// means the jump was not the origin's own, and the sequence resumes from there.
    rewind_floor: Option<u64>,
}

/// When a subscription began (for the introduction window).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscribed {
    pub(crate) at: Instant,
}

impl Subscribed {
    pub(crate) fn now() -> Self {
        Subscribed { at: now() }
    }
}

/// Now, on tokio's clock (the same as the system's unless a test pauses it): the
/// introduction window and forgetting follow the timers that drive heartbeats and
/// housekeeping.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Most peers remembered at once.
pub(crate) const MAX_PEERS: usize = 10_000;

/// The sequence state of every origin heard from.
#[derive(Debug)]
pub(crate) struct Peers {
    peers: HashMap<u128, Peer>,
    subscribed: Subscribed,
    /// How long after subscribing an older origin's first contact sets its baseline.
    introduction: Duration,
    /// Peers silent for longer than this are forgotten.
    forget_after: Duration,
    /// Most peers remembered; past it the least recently heard is evicted.
    max_peers: usize,
    /// Peers evicted to stay under `max_peers`, ever.
    evicted: u64,
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
            max_peers: MAX_PEERS,
            evicted: 0,
        }
    }

    /// The same with a different cap (at least 1).
    #[cfg(test)]
    pub(crate) fn with_max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers.max(1);
        self
    }

    /// Peers evicted to stay under the cap, ever.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Makes room for one more peer: when full, evicts the eighth of the table heard from
    /// least recently (at least one), so a flood of new origins costs amortised constant
    /// work per origin instead of a scan each.
    fn make_room(&mut self) {
        if self.peers.len() < self.max_peers {
            return;
        }
        let mut by_age: Vec<(Instant, u128)> = self
            .peers
            .iter()
            .map(|(origin, peer)| (peer.last_heard, *origin))
            .collect();
        let evict = (self.max_peers / 8).max(1) + (self.peers.len() - self.max_peers);
        let evict = evict.min(by_age.len());
        if evict < by_age.len() {
            by_age.select_nth_unstable(evict);
        }
        for (_, origin) in &by_age[..evict] {
            self.peers.remove(origin);
        }
        self.evicted += evict as u64;
    }

    /// Records a message (`heartbeat == false`) or heartbeat numbered `seq` from `origin`,
    /// (its start time is deliberately not an input: see the module docs).
    pub(crate) fn observe(
        &mut self,
        origin: u128,
        seq: u64,
        heartbeat: bool,
        now: Instant,
    ) -> Seen {
        let expected_first = if heartbeat { 0 } else { 1 };
        if !self.peers.contains_key(&origin) {
            self.make_room();
            let introduced = now.saturating_duration_since(self.subscribed.at) >= self.introduction;
            self.peers.insert(
                origin,
                Peer {
                    last_seq: seq,
                    last_heard: now,
                    // A first number past the start is taken on trust (or as a loss); a
                    // later, lower one must still be heard, not dropped as a duplicate.
                    rewind_floor: (seq > expected_first).then_some(0),
                },
            );
            return if introduced && seq > expected_first {
                Seen::Gap {
                    missed: seq - expected_first,
                }
            } else {
                Seen::InOrder
            };
        }
        let Some(peer) = self.peers.get_mut(&origin) else {
            return Seen::InOrder; // inserted above when missing
        };
        peer.last_heard = now;
        if let Some(floor) = peer.rewind_floor
            && seq > floor
            && seq < peer.last_seq
        {
            // A number below the one we jumped to: the jump was not this origin's (a forged
            // or corrupt message borrowed its name) or the transport reordered. Either way
            // the origin's real sequence resumes here; judge it against where we were
            // before the jump, so nothing it sends is mistaken for a duplicate. The floor
            // stays: this number may itself be forged (a second jump, below the first), and
            // the real sequence must still be able to come back below it. (A retried publish
            // heard twice then reads as a jump back and forth: a clear, never a hidden loss.)
            peer.last_seq = seq;
            let missed = seq - floor - u64::from(!heartbeat);
            return if missed == 0 {
                Seen::InOrder
            } else {
                Seen::Gap { missed }
            };
        }
        if heartbeat {
            if seq > peer.last_seq {
                let missed = seq - peer.last_seq;
                peer.rewind_floor.get_or_insert(peer.last_seq);
                peer.last_seq = seq;
                Seen::Gap { missed }
            } else {
                Seen::InOrder
            }
        } else if seq <= peer.last_seq {
            Seen::Duplicate
        } else {
            let missed = seq - peer.last_seq - 1;
            if missed == 0 {
                peer.last_seq = seq;
                Seen::InOrder
            } else {
                peer.rewind_floor.get_or_insert(peer.last_seq);
                peer.last_seq = seq;
                Seen::Gap { missed }
            }
        }
    }

    /// Forgets `origin`, which said goodbye: it sends nothing more, and its leaving is no
    /// loss. Returns whether it was known.
    pub(crate) fn farewell(&mut self, origin: u128) -> bool {
        self.peers.remove(&origin).is_some()
    }

    /// Forgets peers not heard from for a long time; returns how many. None of them said
    /// goodbye (that forgets a peer at once), so each may have died with invalidations it
    /// never sent: the caller treats a non-zero count as a possible loss.
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
        Peers::new(Subscribed { at }, WINDOW, Duration::from_secs(60))
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 1, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, false, now), Seen::Duplicate);
        assert_eq!(p.observe(A, 5, false, now), Seen::Gap { missed: 2 });
        assert_eq!(p.observe(A, 6, false, now), Seen::InOrder);
    }

    #[test]
    fn a_heartbeat_ahead_reveals_a_lost_last_message() {
        let now = Instant::now();
        let mut p = peers_at(now);
        p.observe(A, 1, false, now);
        assert_eq!(p.observe(A, 1, true, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, true, now), Seen::Gap { missed: 1 });
        assert_eq!(p.observe(A, 2, true, now), Seen::InOrder, "reported once");
        assert_eq!(p.observe(A, 3, false, now), Seen::InOrder);
    }

    #[test]
    fn first_contact_with_an_older_peer_in_the_window_is_a_baseline() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 41, false, now), Seen::InOrder);
        assert_eq!(
            p.observe(0xB, 7, true, now + WINDOW - Duration::from_millis(1)),
            Seen::InOrder
        );
    }

    #[test]
    fn first_contact_with_an_older_peer_after_the_window_must_be_from_its_start() {
        let start = Instant::now();
        let mut p = peers_at(start);
        let later = start + WINDOW;
        // A peer that says it sent something we never saw: we missed it.
        assert_eq!(p.observe(A, 3, true, later), Seen::Gap { missed: 3 });
        assert_eq!(p.observe(0xB, 4, false, later), Seen::Gap { missed: 3 });
        // A peer that has sent nothing yet (or whose first message this is) is in order.
        assert_eq!(p.observe(0xC, 0, true, later), Seen::InOrder);
        assert_eq!(p.observe(0xD, 1, false, later), Seen::InOrder);
    }

    #[test]
    fn a_newcomer_known_from_its_hello_must_go_on_from_there() {
        let now = Instant::now();
        let mut p = peers_at(now);
        // Its hello (a heartbeat of seq 0) introduces it, in the window or not.
        assert_eq!(p.observe(A, 0, true, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, false, now), Seen::Gap { missed: 1 });
        assert_eq!(
            p.observe(0xB, 0, true, now + WINDOW + WINDOW),
            Seen::InOrder
        );
        assert_eq!(
            p.observe(0xB, 1, false, now + WINDOW + WINDOW),
            Seen::InOrder
        );
    }

    #[test]
    fn a_forged_jump_does_not_silence_the_real_sequence() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 1, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, false, now), Seen::InOrder);
        // Someone else, under A's name.
        assert_eq!(
            p.observe(A, u64::MAX, false, now),
            Seen::Gap {
                missed: u64::MAX - 3
            }
        );
        // A's real next message is heard, in order against where A really was.
        assert_eq!(p.observe(A, 3, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 4, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 4, false, now), Seen::Duplicate);
        // And its real losses still show.
        assert_eq!(p.observe(A, 6, false, now), Seen::Gap { missed: 1 });
        assert_eq!(p.observe(A, 7, false, now), Seen::InOrder);
    }

    #[test]
    fn two_forged_jumps_do_not_hide_a_later_loss() {
        let now = Instant::now();
        let mut p = peers_at(now);
        assert_eq!(p.observe(A, 1, false, now), Seen::InOrder);
        // Someone else, under A's name: the end of the number space, then a number between.
        assert!(matches!(
            p.observe(A, u64::MAX, false, now),
            Seen::Gap { .. }
        ));
        assert!(matches!(p.observe(A, 1001, false, now), Seen::Gap { .. }));
        // A's real sequence resumes below both, and its own loss (3) still shows.
        assert_eq!(p.observe(A, 2, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 4, false, now), Seen::Gap { missed: 1 });
        assert_eq!(p.observe(A, 5, false, now), Seen::InOrder);
    }

    #[test]
    fn a_forged_heartbeat_or_first_contact_does_not_silence_either() {
        let now = Instant::now();
        let mut p = peers_at(now);
        p.observe(A, 1, false, now);
        assert!(matches!(
            p.observe(A, u64::MAX, true, now),
            Seen::Gap { .. }
        ));
        assert_eq!(
            p.observe(A, 1, true, now),
            Seen::InOrder,
            "its real heartbeat"
        );
        assert_eq!(p.observe(A, 2, false, now), Seen::InOrder);
        // A forged first contact for an origin we never heard (in the window: a baseline;
        // after it: a gap), then the real one's first messages, heard all the same.
        assert_eq!(p.observe(0xB, u64::MAX, false, now), Seen::InOrder);
        assert_eq!(p.observe(0xB, 1, false, now), Seen::InOrder);
        assert_eq!(p.observe(0xB, 2, false, now), Seen::InOrder);
        let later = now + WINDOW;
        assert_eq!(
            p.observe(0xC, u64::MAX, false, later),
            Seen::Gap {
                missed: u64::MAX - 1
            }
        );
        assert_eq!(p.observe(0xC, 1, false, later), Seen::InOrder);
        assert_eq!(p.observe(0xC, 2, false, later), Seen::InOrder);
    }

    #[test]
    fn two_forged_messages_do_not_silence_either() {
        let now = Instant::now();
        let mut p = peers_at(now);
        p.observe(A, 1, false, now);
        assert!(matches!(p.observe(A, 1_000, false, now), Seen::Gap { .. }));
        assert_eq!(p.observe(A, 1_001, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 2, false, now), Seen::InOrder);
        assert_eq!(p.observe(A, 3, false, now), Seen::InOrder);
    }

    #[test]
    fn a_peer_that_said_goodbye_is_not_counted_as_vanished() {
        let start = Instant::now();
        let mut p = peers_at(start);
        p.observe(A, 1, false, start);
        p.observe(0xB, 1, false, start);
        assert!(p.farewell(A));
        assert!(!p.farewell(A), "already gone");
        assert_eq!(
            p.forget_silent(start + Duration::from_secs(70)),
            1,
            "only B, which never said goodbye"
        );
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_table_is_capped_and_an_evicted_peer_reads_as_a_gap() {
        let start = Instant::now();
        let mut p = peers_at(start).with_max_peers(3);
        let later = start + WINDOW;
        p.observe(A, 1, false, later);
        for (i, origin) in (0xB0..0xB0 + 20u128).enumerate() {
            let at = later + Duration::from_millis(1 + i as u64);
            assert_eq!(p.observe(origin, 0, true, at), Seen::InOrder);
            assert!(p.len() <= 3);
        }
        assert_eq!(p.evicted(), 21 - p.len() as u64);
        // A was heard from least recently: evicted. Its next message is a first contact
        // after the window, so what it sent meanwhile counts as missed.
        assert_eq!(
            p.observe(A, 2, false, later + Duration::from_secs(1)),
            Seen::Gap { missed: 1 }
        );
    }

    #[test]
    fn silent_peers_are_forgotten_and_a_forgotten_peer_ahead_is_a_loss() {
        let start = Instant::now();
        let mut p = peers_at(start);
        p.observe(A, 1, false, start);
        p.observe(0xB, 1, false, start + Duration::from_secs(50));
        assert_eq!(p.forget_silent(start + Duration::from_secs(70)), 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p.observe(0xB, 3, false, start), Seen::Gap { missed: 1 });
        // A was forgotten; when it speaks again, past the window, what it sent meanwhile
        // did not reach us.
        assert_eq!(
            p.observe(A, 9, false, start + Duration::from_secs(80)),
            Seen::Gap { missed: 8 }
        );
    }
}
