//! The replay log: what a backplane remembers of the messages it carried, so a receiver that
//! lost some can read exactly those again instead of clearing its whole cache.
//!
//! Pub/sub delivers at most once. A backplane that also keeps a bounded log of every payload
//! it published turns "I may have missed something" into "here is what you missed" — or, when
//! the log cannot say (it was trimmed past the gap, or recreated), into an honest "I cannot
//! tell", and the receiver falls back to clearing. A backplane offers it through
//! [`Backplane::replay_log`](crate::Backplane::replay_log); one that does not is still
//! correct (every loss is a clear).
//!
//! # The contract
//!
//! - **Same step.** Every payload `publish` accepts is appended to the log in the same atomic
//!   step as it is handed to the channel: it is in both or in neither. (For Redis: one
//!   server-side script does `XADD` and `PUBLISH`.)
//! - **Positions.** Each entry has a [`LogPosition`]: an *epoch* (which incarnation of the
//!   log) and an *index*. Within an epoch indexes are dense — each append is the previous
//!   index plus one, starting at 1 — so a receiver that sees a position skip knows it missed
//!   something without waiting for anything else. A new epoch means the log was recreated
//!   (a restart without persistence): nothing from the old one can be read any more.
//! - **Delivery carries the position.** A payload delivered through a subscription is framed
//!   with its position ([`wire::logged`](crate::wire::logged)), so the receiver always knows
//!   the last position it applied.
//! - **Reading.** [`ReplayLog::read_after`] returns every entry after a position, up to the
//!   newest at the time of the read, in order — or [`LogRead::Uncovered`] when it cannot:
//!   the entry right after the position was trimmed away, or the position's epoch is gone.
//!   It never returns a partial answer as if it were whole.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backplane::BackplaneError;

/// Where an entry sits in a replay log: ordered by epoch, then index.
///
/// Opaque to receivers beyond [`follows`](Self::follows) and equality of epochs; a backplane
/// makes them with [`new`](Self::new).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    epoch: u64,
    index: u64,
}

impl LogPosition {
    /// The position of entry `index` of log incarnation `epoch`. Index 0 is "before the first
    /// entry": the head of an empty log.
    #[must_use]
    pub const fn new(epoch: u64, index: u64) -> Self {
        Self { epoch, index }
    }

    /// Which incarnation of the log.
    #[must_use]
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The entry's number within its epoch (dense, from 1).
    #[must_use]
    pub const fn index(&self) -> u64 {
        self.index
    }

    /// Whether `self` is the entry right after `previous`: same epoch, next index.
    #[must_use]
    pub const fn follows(&self, previous: &LogPosition) -> bool {
        self.epoch == previous.epoch && self.index == previous.index.wrapping_add(1)
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.index)
    }
}

/// One logged payload, exactly as it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Where it sits in the log.
    pub position: LogPosition,
    /// The payload (an encoded [`wire::Message`](crate::wire::Message)), without the frame.
    pub payload: Bytes,
}

/// The answer to [`ReplayLog::read_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRead {
    /// Every entry after the position, oldest first, up to the newest at the time of the
    /// read (empty when nothing was appended since).
    Covered(Vec<LogEntry>),
    /// The log cannot say what came after the position.
    Uncovered(Uncovered),
}

/// Why a replay log cannot cover a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Uncovered {
    /// The entries right after the position were trimmed away (the log is bounded).
    Trimmed,
    /// The log was recreated since the position was handed out (another epoch): a server
    /// restarted without persistence, or the log was deleted.
    Recreated,
}

impl fmt::Display for Uncovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trimmed => "the log was trimmed past the gap",
            Self::Recreated => "the log was recreated",
        })
    }
}

/// A bounded log of every payload a backplane published (see the [module docs](self) for
/// the contract).
#[async_trait]
pub trait ReplayLog: Send + Sync + fmt::Debug {
    /// The position of the newest entry (index 0 of the current epoch when the log is
    /// empty). A receiver reads it right after subscribing, so it can repair a loss before
    /// any message reaches it.
    ///
    /// # Errors
    ///
    /// As [`Backplane::publish`](crate::Backplane::publish): the transport is down, slow or
    /// shut down.
    async fn head(&self) -> Result<LogPosition, BackplaneError>;

    /// Every entry after `after`, or why the log cannot tell (see [`LogRead`]).
    ///
    /// # Errors
    ///
    /// As [`head`](Self::head). The receiver treats an error like
    /// [`LogRead::Uncovered`]: it clears.
    async fn read_after(&self, after: &LogPosition) -> Result<LogRead, BackplaneError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_epoch_then_index_and_follow_densely() {
        let a = LogPosition::new(1, 7);
        assert!(LogPosition::new(1, 8).follows(&a));
        assert!(!LogPosition::new(1, 9).follows(&a));
        assert!(
            !LogPosition::new(2, 8).follows(&a),
            "another epoch never follows"
        );
        assert!(LogPosition::new(2, 1) > LogPosition::new(1, 100));
        assert_eq!(a.to_string(), "1-7");
    }
}
