//! The invalidation message: who sent it, its place in the sender's sequence, and a batch of
//! operations.
//!
//! These are plain Rust types with no serde attributes: the byte layout is defined in one
//! place, [`codec`](super::codec), so the codec can change without touching them.
//! There is deliberately no operation that can carry a value — only keys and region names
//! travel — so nothing on the channel can plant data in a cache.

use std::fmt;
use std::str::FromStr;

/// The identity of one cache instance on a channel: 128 random bits, drawn once per cache.
///
/// Receivers use it to ignore their own messages and to track each peer's sequence numbers.
/// A restarted process draws a new id, so a peer's sequence never goes backwards under
/// one id. Displayed (and parsed) as 32 lowercase hex digits.
///
/// ```
/// use nearcache_backplane::wire::InstanceId;
///
/// let id = InstanceId::random();
/// assert_ne!(id, InstanceId::random());
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<InstanceId>(), Ok(id));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(u128);

impl InstanceId {
    /// A fresh random id from the thread-local CSPRNG (`rand::random`). Two draws collide
    /// with probability 2⁻¹²⁸.
    #[must_use]
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id with these 128 bits (for tests and tools; caches use [`random`](Self::random)).
    #[must_use]
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// The id's 128 bits.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as 16 big-endian bytes, the way it travels on the wire.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from 16 big-endian bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an instance id is 32 hex digits, got {0:?}")]
pub struct ParseInstanceIdError(String);

impl FromStr for InstanceId {
    type Err = ParseInstanceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseInstanceIdError(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseInstanceIdError(s.to_owned()))
    }
}

/// One invalidation. Receivers evict; nothing here can add or change a cached value.
///
/// Operations commute (each only evicts), so a receiver may apply a batch in any order and
/// get the same result; it applies them in order anyway.
///
/// New operations only ever come with a new wire format version, and a receiver that meets
/// one it does not know should clear its cache rather than ignore it — hence
/// `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Evict these keys (the text of their `CacheKey`s). Many keys share one op, so a burst
    /// of removes costs a length prefix and the key bytes per key, nothing more.
    Remove {
        /// The keys to evict.
        keys: Vec<String>,
    },
    /// Expire every entry of a region (by the region's stable wire name).
    ExpireRegion {
        /// The region's name (`Region::NAME`).
        region: String,
    },
    /// Expire the entries of one sub-key of a region (e.g. one catalog's entries).
    ExpireRegionKey {
        /// The region's name (`Region::NAME`).
        region: String,
        /// The sub-key within the region.
        key: String,
    },
    /// Expire the global region: every entry.
    Clear,
    /// Not an invalidation: the origin is shutting down cleanly and will send nothing more.
    /// The message's `seq` is its last sequence number, so a receiver can check that it
    /// heard everything, then forget the origin without counting it as lost.
    Goodbye,
    /// Not an invalidation: the origin has just subscribed, and this comes before anything
    /// it invalidates from then on; `seq` is its last number (0 if it has sent nothing). A
    /// receiver that hears it knows the origin from its start without comparing clocks.
    Hello,
}

impl Op {
    /// How many key strings this op carries (region names not counted; a sub-key counts).
    #[must_use]
    pub fn key_count(&self) -> usize {
        match self {
            Op::Remove { keys } => keys.len(),
            Op::ExpireRegionKey { .. } => 1,
            Op::ExpireRegion { .. } | Op::Clear | Op::Goodbye | Op::Hello => 0,
        }
    }

    /// Whether this op says something about its origin rather than invalidating anything
    /// ([`Goodbye`](Self::Goodbye), [`Hello`](Self::Hello)).
    #[must_use]
    pub fn is_control(&self) -> bool {
        matches!(self, Op::Goodbye | Op::Hello)
    }
}

/// A batch of invalidations from one origin, as it travels on the backplane.
///
/// `seq` numbers an origin's messages 1, 2, 3, … with no holes, so a receiver that sees
/// 5 after 3 knows it missed 4 (loss means clear). A message with no ops is a
/// [heartbeat](Self::heartbeat): it carries the origin's *last* sequence number without
/// taking a new one, so a receiver also notices when the last message before a quiet spell
/// was lost.
///
/// ```
/// use nearcache_backplane::wire::{self, InstanceId, Message, Op};
///
/// let message = Message {
///     origin: InstanceId::random(),
///     seq: 1,
///     sent_at_unix_micros: 1_700_000_000_000_000,
///     origin_started_unix_ms: 1_700_000_000_000,
///     ops: vec![Op::Remove { keys: vec!["Products:get-42".into()] }],
/// };
/// let bytes = wire::encode(&message)?;
/// assert_eq!(wire::decode(&bytes)?, message);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The instance that sent it.
    pub origin: InstanceId,
    /// The origin's sequence number: 1 for its first message, +1 for each next one. A
    /// heartbeat repeats the last one (0 if nothing was sent yet).
    pub seq: u64,
    /// When the origin sent it, in microseconds since the Unix epoch (for the propagation
    /// lag histogram; clocks of different hosts may disagree).
    pub sent_at_unix_micros: u64,
    /// When the origin's cache started, in milliseconds since the Unix epoch, by its own
    /// clock: for logs and tools. Receivers do not judge sequence numbers by it (hosts'
    /// clocks disagree); a newcomer's hello tells them instead.
    pub origin_started_unix_ms: u64,
    /// The invalidations, applied in order. Empty for a heartbeat; only control ops
    /// ([`Op::is_control`]) for a hello or a goodbye.
    pub ops: Vec<Op>,
}

impl Message {
    /// A heartbeat: no ops, `seq` is the origin's last sequence number (0 if it has sent
    /// nothing yet).
    ///
    /// ```
    /// use nearcache_backplane::wire::{InstanceId, Message};
    ///
    /// let beat = Message::heartbeat(InstanceId::random(), 7, 0, 0);
    /// assert!(beat.is_heartbeat());
    /// assert_eq!(beat.seq, 7);
    /// ```
    #[must_use]
    pub fn heartbeat(
        origin: InstanceId,
        last_seq: u64,
        sent_at_unix_micros: u64,
        origin_started_unix_ms: u64,
    ) -> Self {
        Self {
            origin,
            seq: last_seq,
            sent_at_unix_micros,
            origin_started_unix_ms,
            ops: Vec::new(),
        }
    }

    /// A goodbye: the origin shuts down cleanly; `last_seq` is the last sequence number it
    /// used (like a heartbeat, it takes no new one).
    ///
    /// ```
    /// use nearcache_backplane::wire::{InstanceId, Message};
    ///
    /// let bye = Message::goodbye(InstanceId::random(), 7, 0, 0);
    /// assert!(bye.is_heartbeat() && bye.is_goodbye());
    /// ```
    #[must_use]
    pub fn goodbye(
        origin: InstanceId,
        last_seq: u64,
        sent_at_unix_micros: u64,
        origin_started_unix_ms: u64,
    ) -> Self {
        Self {
            ops: vec![Op::Goodbye],
            ..Self::heartbeat(
                origin,
                last_seq,
                sent_at_unix_micros,
                origin_started_unix_ms,
            )
        }
    }

    /// Whether this message invalidates nothing (no ops, or only
    /// [control](Op::is_control) ops): it carries the origin's last sequence number without
    /// taking a new one.
    #[must_use]
    pub fn is_heartbeat(&self) -> bool {
        self.ops.iter().all(Op::is_control)
    }

    /// Whether this is a [goodbye](Self::goodbye).
    #[must_use]
    pub fn is_goodbye(&self) -> bool {
        self.ops.contains(&Op::Goodbye)
    }

    /// A hello: the origin has just subscribed; `last_seq` is its last sequence number.
    ///
    /// ```
    /// use nearcache_backplane::wire::{InstanceId, Message};
    ///
    /// let hello = Message::hello(InstanceId::random(), 0, 0, 0);
    /// assert!(hello.is_heartbeat() && hello.is_hello());
    /// ```
    #[must_use]
    pub fn hello(
        origin: InstanceId,
        last_seq: u64,
        sent_at_unix_micros: u64,
        origin_started_unix_ms: u64,
    ) -> Self {
        Self {
            ops: vec![Op::Hello],
            ..Self::heartbeat(
                origin,
                last_seq,
                sent_at_unix_micros,
                origin_started_unix_ms,
            )
        }
    }

    /// Whether this is a [hello](Self::hello).
    #[must_use]
    pub fn is_hello(&self) -> bool {
        self.ops.contains(&Op::Hello)
    }

    /// How many key strings the message carries, over all ops (see [`Op::key_count`]).
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.ops.iter().map(Op::key_count).sum()
    }

    /// The exact size of [`encode`](super::encode)'s output for this message, in bytes,
    /// computed without encoding (O(number of keys), no allocation).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        super::codec::encoded_len(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A message with one op of each kind, two removed keys among them (the codec's
    /// golden encoding pins its bytes).
    pub(crate) fn sample() -> Message {
        Message {
            origin: InstanceId::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            seq: 300,
            sent_at_unix_micros: 1_700_000_000_000_000,
            origin_started_unix_ms: 7,
            ops: vec![
                Op::Remove {
                    keys: vec!["a".into(), "é".into()],
                },
                Op::ExpireRegion { region: "r".into() },
                Op::ExpireRegionKey {
                    region: "r".into(),
                    key: "k".into(),
                },
                Op::Clear,
            ],
        }
    }

    #[test]
    fn instance_ids_display_as_32_hex_digits_and_parse_back() {
        let id = InstanceId::from_u128(0xab);
        assert_eq!(id.to_string(), "000000000000000000000000000000ab");
        assert_eq!(
            format!("{id:?}"),
            "InstanceId(000000000000000000000000000000ab)"
        );
        assert_eq!("000000000000000000000000000000AB".parse(), Ok(id));
        assert_eq!(InstanceId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn malformed_instance_ids_are_refused() {
        for bad in [
            "",
            "ab",
            "+0000000000000000000000000000000",
            &"g".repeat(32),
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn random_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| InstanceId::random()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn heartbeat_has_no_ops_and_keeps_the_last_seq() {
        let beat = Message::heartbeat(InstanceId::from_u128(1), 41, 2, 3);
        assert!(beat.is_heartbeat());
        assert_eq!(
            (
                beat.seq,
                beat.sent_at_unix_micros,
                beat.origin_started_unix_ms
            ),
            (41, 2, 3)
        );
        let mut not_beat = beat.clone();
        not_beat.ops.push(Op::Clear);
        assert!(!not_beat.is_heartbeat());
    }

    #[test]
    fn key_count_counts_removed_keys_and_sub_keys() {
        assert_eq!(sample().key_count(), 3, "two removed keys and one sub-key");
    }
}
