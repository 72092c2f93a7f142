//! The in-memory bus's replay log: a bounded ring buffer with the contract of
//! [`ReplayLog`](crate::ReplayLog) (dense indexes per epoch, honest about what it lost).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::replay::{LogEntry, LogPosition, LogRead, Uncovered};

/// The newest `capacity` payloads published on a bus.
#[derive(Debug)]
pub(super) struct Ring {
    epoch: u64,
    capacity: usize,
    /// Index of the newest entry ever appended in this epoch (0: none yet).
    last: u64,
    entries: VecDeque<LogEntry>,
}

impl Ring {
    pub(super) fn new(capacity: usize) -> Self {
        Ring {
            epoch: 1,
            capacity: capacity.max(1),
            last: 0,
            entries: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends `payload`, dropping the oldest entry when full; returns its position.
    pub(super) fn append(&mut self, payload: Bytes) -> LogPosition {
        self.last += 1;
        let position = LogPosition::new(self.epoch, self.last);
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(LogEntry { position, payload });
        position
    }

    pub(super) fn head(&self) -> LogPosition {
        LogPosition::new(self.epoch, self.last)
    }

    /// Keeps only the newest `keep` entries.
    #[cfg(feature = "test-util")]
    pub(super) fn trim(&mut self, keep: usize) {
        while self.entries.len() > keep {
            self.entries.pop_front();
        }
    }

    /// Empty, in the next epoch.
    #[cfg(feature = "test-util")]
    pub(super) fn recreate(&mut self) {
        self.epoch += 1;
        self.last = 0;
        self.entries.clear();
    }

    pub(super) fn read_after(&self, after: &LogPosition) -> LogRead {
        // A position from another epoch, or past anything this epoch handed out, was not
        // given by this incarnation of the log.
        if after.epoch() != self.epoch || after.index() > self.last {
            return LogRead::Uncovered(Uncovered::Recreated);
        }
        let oldest = self.last + 1 - self.entries.len() as u64;
        if after.index() + 1 < oldest {
            return LogRead::Uncovered(Uncovered::Trimmed);
        }
        LogRead::Covered(
            self.entries
                .iter()
                .filter(|entry| entry.position.index() > after.index())
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(read: &LogRead) -> Vec<u64> {
        match read {
            LogRead::Covered(entries) => entries.iter().map(|e| e.position.index()).collect(),
            LogRead::Uncovered(why) => panic!("uncovered: {why}"),
        }
    }

    #[test]
    fn reads_exactly_what_follows_a_position() {
        let mut ring = Ring::new(4);
        assert_eq!(ring.head(), LogPosition::new(1, 0));
        for i in 0..3u8 {
            ring.append(Bytes::from(vec![i]));
        }
        assert_eq!(
            indexes(&ring.read_after(&LogPosition::new(1, 0))),
            [1, 2, 3]
        );
        assert_eq!(indexes(&ring.read_after(&LogPosition::new(1, 2))), [3]);
        assert_eq!(indexes(&ring.read_after(&ring.head())), Vec::<u64>::new());
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_says_so() {
        let mut ring = Ring::new(2);
        for i in 0..5u8 {
            ring.append(Bytes::from(vec![i]));
        }
        // Entries 4 and 5 are left: reading after 3 is covered, after 2 is not.
        assert_eq!(indexes(&ring.read_after(&LogPosition::new(1, 3))), [4, 5]);
        assert_eq!(
            ring.read_after(&LogPosition::new(1, 2)),
            LogRead::Uncovered(Uncovered::Trimmed)
        );
        ring.trim(0);
        assert_eq!(
            indexes(&ring.read_after(&LogPosition::new(1, 5))),
            Vec::<u64>::new()
        );
        assert_eq!(
            ring.read_after(&LogPosition::new(1, 4)),
            LogRead::Uncovered(Uncovered::Trimmed)
        );
    }

    #[test]
    fn a_recreated_ring_disowns_old_positions_even_when_it_grows_past_them() {
        let mut ring = Ring::new(8);
        ring.append(Bytes::new());
        let old = ring.head();
        ring.recreate();
        for _ in 0..3 {
            ring.append(Bytes::new());
        }
        assert_eq!(ring.head(), LogPosition::new(2, 3));
        assert_eq!(
            ring.read_after(&old),
            LogRead::Uncovered(Uncovered::Recreated)
        );
        assert_eq!(
            ring.read_after(&LogPosition::new(2, 9)),
            LogRead::Uncovered(Uncovered::Recreated),
            "a position from the future"
        );
    }
}
