//! The byte layout of a [`Message`] on the channel: a fixed header, then a bincode 2 body.
//!
//! Everything format-specific lives in this module — the schema, the config, the size
//! arithmetic that [`MessageBuilder`](super::MessageBuilder) uses — so the codec can be
//! replaced without touching the message types or their users.
//!
//! # Why bincode 2, and what replaces it
//!
//! [RUSTSEC-2025-0141] marks every bincode version unmaintained. We pin `bincode = "2"`
//! because 3.0.0 is an empty tombstone release that fails to compile. The body is plain
//! serde with `bincode::config::standard()` (little-endian varints), so the swap is
//! [wincode] (format-compatible with bincode's serde encoding: same bytes, same golden
//! test) or [postcard] (a different format: bump [`VERSION`] and keep a decoder for the
//! old one during a rolling upgrade).
//!
//! # Layout
//!
//! | bytes | field | encoding |
//! |---|---|---|
//! | 3 | magic `b"NCB"` | raw; anything else is [`DecodeError::Foreign`] |
//! | 1 | format version, `1` | raw; others are [`DecodeError::UnsupportedVersion`] |
//! | 16 | `origin` | [`InstanceId`], big-endian |
//! | 1–9 | `seq` | varint |
//! | 1–9 | `sent_at_unix_micros` | varint |
//! | 1–9 | `origin_started_unix_ms` | varint |
//! | 1–9 | number of ops | varint |
//! | … | each op | varint tag, then its fields |
//!
//! Op tags: `0` Remove (varint key count, then each key), `1` ExpireRegion (region),
//! `2` ExpireRegionKey (region, key), `3` Clear, `4` Goodbye, `5` Hello (the last two have no
//! fields and invalidate nothing; a receiver of an older build refuses them as malformed,
//! which costs it nothing). A string is a varint byte length then UTF-8.
//! A varint is one byte for 0–250, else a marker byte (251: u16, 252: u32, 253: u64)
//! followed by the value little-endian. Tags are append-only; removing or reordering one
//! is a new format version.
//!
//! # Hostile input
//!
//! [`decode`] checks the payload size first, then the header, then decodes the body into
//! *borrowed* strings: a length prefix that points past the end of the input fails before
//! anything is allocated for it, and bincode's decode limit (`with_limit`) refuses any
//! prefix larger than a fixed budget before even that. Sequences preallocate at most a small
//! constant, and the op and key counts are checked against [`WireLimits`] *while* decoding:
//! a count prefix above the limit is refused before anything is read for it, and the running
//! totals stop the decode at the first op or key past the limit, so a hostile payload costs
//! at most the limits' worth of work and memory, never its own size's. Lengths are checked
//! against [`WireLimits`] before any key is copied into an owned `String`.
//!
//! [RUSTSEC-2025-0141]: https://rustsec.org/advisories/RUSTSEC-2025-0141
//! [wincode]: https://crates.io/crates/wincode
//! [postcard]: https://crates.io/crates/postcard

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::limits::{LimitExceeded, WireLimits};
use super::message::{InstanceId, Message, Op};

/// The first three bytes of every nearcache message.
pub const MAGIC: [u8; 3] = *b"NCB";

/// The wire format version this build writes and reads.
pub const VERSION: u8 = 1;

/// Magic plus version.
pub const HEADER_LEN: usize = MAGIC.len() + 1;

/// Bytes a decode may *claim* from length prefixes before bincode refuses it. A backstop:
/// claims are bookkeeping (strings are borrowed from the input, never allocated from a
/// prefix), and a valid message claims at most 8 bytes per input byte (a one-byte varint is
/// claimed as a `u64`).
const CLAIM_LIMIT: usize = 8 * WireLimits::MAX_PAYLOAD_BYTES + 1024;

/// Most elements a decoded sequence reserves up front, whatever its length prefix says.
const PREALLOC_MAX: usize = 1024;

/// The largest the fixed part of the body can be: origin plus three 9-byte varints.
pub(crate) const FIXED_FIELDS_MAX_LEN: usize = 16 + 3 * 9;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<CLAIM_LIMIT>()
}

/// Why [`encode`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would exceed [`WireLimits::max_payload_bytes`].
    #[error(
        "encoded message of {size} bytes exceeds the limit of {limit} bytes; split the batch (MessageBuilder does)"
    )]
    TooLarge {
        /// The encoded size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A count or length is outside [`WireLimits`]; peers would refuse the message.
    #[error("message refused before sending: it is outside the wire limits")]
    LimitExceeded(#[from] LimitExceeded),
    /// The codec itself failed. Encoding into memory cannot fail for these types, so this is
    /// a bug in nearcache: please report it with the message that caused it.
    #[error("the wire codec failed ({0}); this is a bug in nearcache, please report it")]
    Codec(String),
}

/// Why [`decode`] refused a payload. Receivers drop the payload, count it and go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload has no bytes.
    #[error("empty payload; something other than nearcache publishes on this channel")]
    Empty,
    /// The payload ends before the message does.
    #[error("truncated message; the publisher or the transport cut it short")]
    Truncated,
    /// The payload does not start with the nearcache magic: it is not ours.
    #[error(
        "not a nearcache message (wrong magic bytes); something else publishes on this channel, give nearcache its own channel"
    )]
    Foreign,
    /// A format version this build does not read.
    #[error(
        "wire format version {0} is not supported (this build reads version {VERSION}); a newer nearcache on the channel? upgrade every instance"
    )]
    UnsupportedVersion(u8),
    /// The payload is larger than [`WireLimits::max_payload_bytes`].
    #[error(
        "payload of {size} bytes exceeds the limit of {limit} bytes; every instance on a channel must use the same WireLimits"
    )]
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body does not decode as a message (bad tag, bad UTF-8, lying length, trailing
    /// bytes, …).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but a count or length is outside [`WireLimits`].
    #[error(
        "message refused: it is outside the wire limits; every instance on a channel must use \
         the same WireLimits"
    )]
    LimitExceeded(#[from] LimitExceeded),
    /// Signing keys are configured and the message is unsigned, or its signature verifies
    /// under none of them.
    #[error(
        "message refused: unsigned or badly signed; every instance on the channel needs the same signing key (or a publisher without it is not one of ours)"
    )]
    Unauthenticated,
}

/// The body as bincode sees it. Strings borrow from the payload so a decode allocates only
/// for bytes that are actually there. Field and variant order *is* the format.
#[derive(Serialize, Deserialize)]
struct WireMessage<'a> {
    origin: [u8; 16],
    seq: u64,
    sent_at_unix_micros: u64,
    origin_started_unix_ms: u64,
    #[serde(borrow, deserialize_with = "bounded_ops")]
    ops: Vec<WireOp<'a>>,
}

#[derive(Serialize, Deserialize)]
enum WireOp<'a> {
    Remove {
        #[serde(borrow, deserialize_with = "bounded_keys")]
        keys: Vec<&'a str>,
    },
    ExpireRegion {
        region: &'a str,
    },
    ExpireRegionKey {
        region: &'a str,
        key: &'a str,
    },
    Clear,
    Goodbye,
    Hello,
}

impl<'a> WireMessage<'a> {
    fn borrow(message: &'a Message) -> Self {
        let ops = message
            .ops
            .iter()
            .map(|op| match op {
                Op::Remove { keys } => WireOp::Remove {
                    keys: keys.iter().map(String::as_str).collect(),
                },
                Op::ExpireRegion { region } => WireOp::ExpireRegion { region },
                Op::ExpireRegionKey { region, key } => WireOp::ExpireRegionKey { region, key },
                Op::Clear => WireOp::Clear,
                Op::Goodbye => WireOp::Goodbye,
                Op::Hello => WireOp::Hello,
            })
            .collect();
        Self {
            origin: message.origin.to_bytes(),
            seq: message.seq,
            sent_at_unix_micros: message.sent_at_unix_micros,
            origin_started_unix_ms: message.origin_started_unix_ms,
            ops,
        }
    }

    fn to_message(&self) -> Message {
        let ops = self
            .ops
            .iter()
            .map(|op| match op {
                WireOp::Remove { keys } => Op::Remove {
                    keys: keys.iter().map(|&key| key.to_owned()).collect(),
                },
                WireOp::ExpireRegion { region } => Op::ExpireRegion {
                    region: (*region).to_owned(),
                },
                WireOp::ExpireRegionKey { region, key } => Op::ExpireRegionKey {
                    region: (*region).to_owned(),
                    key: (*key).to_owned(),
                },
                WireOp::Clear => Op::Clear,
                WireOp::Goodbye => Op::Goodbye,
                WireOp::Hello => Op::Hello,
            })
            .collect();
        Message {
            origin: InstanceId::from_bytes(self.origin),
            seq: self.seq,
            sent_at_unix_micros: self.sent_at_unix_micros,
            origin_started_unix_ms: self.origin_started_unix_ms,
            ops,
        }
    }

    fn validate(&self, limits: &WireLimits) -> Result<(), LimitExceeded> {
        let keys = self
            .ops
            .iter()
            .map(|op| match op {
                WireOp::Remove { keys } => keys.len(),
                WireOp::ExpireRegionKey { .. } => 1,
                WireOp::ExpireRegion { .. } | WireOp::Clear | WireOp::Goodbye | WireOp::Hello => 0,
            })
            .sum();
        limits.check_counts(self.ops.len(), keys)?;
        for op in &self.ops {
            match op {
                WireOp::Remove { keys } => {
                    for key in keys {
                        limits.check_key(key)?;
                    }
                }
                WireOp::ExpireRegion { region } => limits.check_region(region)?,
                WireOp::ExpireRegionKey { region, key } => {
                    limits.check_region(region)?;
                    limits.check_key(key)?;
                }
                WireOp::Clear | WireOp::Goodbye | WireOp::Hello => {}
            }
        }
        Ok(())
    }
}

/// What one decode on this thread may still hold: ops and keys left under the limits, and
/// the limit that stopped it, if one did. Set by [`decode_with`] for the duration of one
/// decode (serde gives a field deserializer no other way to see the limits).
#[derive(Clone, Copy)]
struct Budget {
    ops_left: usize,
    keys_left: usize,
    limits: (usize, usize),
    exceeded: Option<LimitExceeded>,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Which count a sequence draws on.
#[derive(Clone, Copy)]
enum Counted {
    Ops,
    Keys,
}

impl Counted {
    /// Whether `n` more would fit the budget (nothing taken; the limit recorded if not).
    fn fits(self, n: usize) -> bool {
        BUDGET.with(|cell| {
            let Some(budget) = cell.get() else {
                return true;
            };
            let left = match self {
                Counted::Ops => budget.ops_left,
                Counted::Keys => budget.keys_left,
            };
            n <= left
        }) || {
            let _ = self.take(n); // records the limit, takes nothing
            false
        }
    }

    /// Takes `n` from the budget; `false` (and the limit recorded) if it does not cover them.
    fn take(self, n: usize) -> bool {
        BUDGET.with(|cell| {
            let Some(mut budget) = cell.get() else {
                return true; // not inside decode_with: nothing to enforce
            };
            let (max_ops, max_keys) = budget.limits;
            let left = match self {
                Counted::Ops => &mut budget.ops_left,
                Counted::Keys => &mut budget.keys_left,
            };
            let ok = n <= *left;
            if ok {
                *left -= n;
            } else {
                // `n` is a length prefix from the wire: any value, so saturate.
                budget.exceeded = Some(match self {
                    Counted::Ops => LimitExceeded::Ops {
                        count: (max_ops - *left).saturating_add(n),
                        max: max_ops,
                    },
                    Counted::Keys => LimitExceeded::Keys {
                        count: (max_keys - *left).saturating_add(n),
                        max: max_keys,
                    },
                });
            }
            cell.set(Some(budget));
            ok
        })
    }
}

fn bounded_ops<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded(Counted::Ops, PhantomData))
}

fn bounded_keys<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded(Counted::Keys, PhantomData))
}

/// Deserializes a sequence without trusting its length prefix: neither for the allocation
/// nor for the count, which is checked against the budget before the first element and
/// again with every element.
struct Bounded<T>(Counted, PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        use serde::de::Error;
        let refused = || A::Error::custom("a count exceeds the wire limits");
        let claimed = seq.size_hint().unwrap_or(0);
        // The prefix alone: refused before anything is read for it. (Checked without
        // taking: the running count below takes each element as it arrives.)
        if !self.0.fits(claimed) {
            return Err(refused());
        }
        let mut out = Vec::with_capacity(claimed.min(PREALLOC_MAX));
        while let Some(item) = seq.next_element()? {
            if !self.0.take(1) {
                return Err(refused());
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Encodes `message` under the default [`WireLimits`].
///
/// # Errors
///
/// [`EncodeError::TooLarge`] when the encoding would exceed the payload limit, and
/// [`EncodeError::LimitExceeded`] when a count or length is out of bounds — peers would
/// refuse it, so it is refused here instead of being lost there.
pub fn encode(message: &Message) -> Result<Bytes, EncodeError> {
    encode_with(message, &WireLimits::DEFAULT)
}

/// Encodes `message` under `limits` (use the same limits on every instance).
///
/// # Errors
///
/// As [`encode`].
pub fn encode_with(message: &Message, limits: &WireLimits) -> Result<Bytes, EncodeError> {
    let wire = WireMessage::borrow(message);
    wire.validate(limits)?;
    let size = encoded_len(message);
    if size > limits.max_payload_bytes() {
        return Err(EncodeError::TooLarge {
            size,
            limit: limits.max_payload_bytes(),
        });
    }
    let mut buf = Vec::with_capacity(size);
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    bincode::serde::encode_into_std_write(&wire, &mut buf, config())
        .map_err(|err| EncodeError::Codec(err.to_string()))?;
    debug_assert_eq!(buf.len(), size, "encoded_len disagrees with the encoder");
    Ok(Bytes::from(buf))
}

/// Decodes a payload under the default [`WireLimits`].
///
/// Never panics, whatever the bytes; see the [module docs](self) for how memory stays
/// bounded on hostile input.
///
/// # Errors
///
/// A typed [`DecodeError`] for every way a payload can be wrong: empty, too large, not
/// ours, a version we do not read, truncated, malformed, or outside the limits.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_with(bytes, &WireLimits::DEFAULT)
}

/// Decodes a payload under `limits` (use the same limits on every instance).
///
/// # Errors
///
/// As [`decode`].
pub fn decode_with(bytes: &[u8], limits: &WireLimits) -> Result<Message, DecodeError> {
    match check_header(bytes, limits, super::auth::SIGNATURE_LEN)? {
        VERSION => decode_body(&bytes[HEADER_LEN..], limits),
        // Signed: read without checking (see `auth`); `decode_authenticated` checks.
        _ => super::auth::decode_authenticated(bytes, limits, None),
    }
}

/// Checks size, magic and version; returns the version (1, or 2 for a signed message, which
/// may be `extra` bytes larger than the limit).
pub(crate) fn check_header(
    bytes: &[u8],
    limits: &WireLimits,
    extra: usize,
) -> Result<u8, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let signed = bytes.get(..HEADER_LEN)
        == Some(&[MAGIC[0], MAGIC[1], MAGIC[2], super::auth::SIGNED_VERSION][..]);
    let allowed = if signed {
        limits.max_payload_bytes().saturating_add(extra)
    } else {
        limits.max_payload_bytes()
    };
    if bytes.len() > allowed {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_payload_bytes(),
        });
    }
    let Some(([m0, m1, m2, version], _)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        // Shorter than a header: ours only if what is there is a prefix of the magic.
        return Err(if MAGIC.starts_with(bytes) {
            DecodeError::Truncated
        } else {
            DecodeError::Foreign
        });
    };
    if [*m0, *m1, *m2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    match *version {
        VERSION => Ok(VERSION),
        super::auth::SIGNED_VERSION => Ok(super::auth::SIGNED_VERSION),
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

/// Decodes the body that follows the header (and, when signed, the signature).
pub(crate) fn decode_body(body: &[u8], limits: &WireLimits) -> Result<Message, DecodeError> {
    let (wire, read) = with_budget(limits, || {
        bincode::serde::borrow_decode_from_slice::<WireMessage<'_>, _>(body, config())
    })?;
    if read != body.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - read
        )));
    }
    wire.validate(limits)?;
    Ok(wire.to_message())
}

/// Runs one body decode with the op and key budget of `limits` in place; a decode stopped by
/// the budget is [`DecodeError::LimitExceeded`].
fn with_budget<T>(
    limits: &WireLimits,
    decode: impl FnOnce() -> Result<T, bincode::error::DecodeError>,
) -> Result<T, DecodeError> {
    let budget = Budget {
        ops_left: limits.max_ops(),
        keys_left: limits.max_keys(),
        limits: (limits.max_ops(), limits.max_keys()),
        exceeded: None,
    };
    let outer = BUDGET.with(|cell| cell.replace(Some(budget)));
    let result = decode();
    let exceeded = BUDGET
        .with(|cell| cell.replace(outer))
        .and_then(|b| b.exceeded);
    match (result, exceeded) {
        (_, Some(exceeded)) => Err(DecodeError::LimitExceeded(exceeded)),
        (result, None) => result.map_err(body_error),
    }
}

fn body_error(err: bincode::error::DecodeError) -> DecodeError {
    use bincode::error::DecodeError as Bincode;
    match err {
        Bincode::UnexpectedEnd { .. } => DecodeError::Truncated,
        Bincode::LimitExceeded => DecodeError::Malformed(
            "a length prefix claims more bytes than any message may hold".to_owned(),
        ),
        Bincode::Utf8 { .. } => {
            DecodeError::Malformed("a key or region name is not valid UTF-8".to_owned())
        }
        // serde's own complaints (an unknown op tag, …) arrive as text.
        Bincode::OtherString(why) => DecodeError::Malformed(why),
        other => DecodeError::Malformed(other.to_string()),
    }
}

/// Bytes of a varint holding `value` (`bincode::config::standard()`).
pub(crate) const fn varint_len(value: u64) -> usize {
    if value <= 250 {
        1
    } else if value <= u16::MAX as u64 {
        3
    } else if value <= u32::MAX as u64 {
        5
    } else {
        9
    }
}

/// Bytes of a varint holding a length.
pub(crate) const fn len_varint(len: usize) -> usize {
    varint_len(len as u64)
}

/// Bytes of an encoded string.
pub(crate) const fn str_len(s: &str) -> usize {
    len_varint(s.len()) + s.len()
}

/// Bytes of an op's tag (all tags are below 251).
pub(crate) const TAG_LEN: usize = 1;

/// Bytes of an encoded op.
pub(crate) fn op_len(op: &Op) -> usize {
    TAG_LEN
        + match op {
            Op::Remove { keys } => {
                len_varint(keys.len()) + keys.iter().map(|k| str_len(k)).sum::<usize>()
            }
            Op::ExpireRegion { region } => str_len(region),
            Op::ExpireRegionKey { region, key } => str_len(region) + str_len(key),
            Op::Clear | Op::Goodbye | Op::Hello => 0,
        }
}

/// Exact bytes of `encode(message)`.
pub(crate) fn encoded_len(message: &Message) -> usize {
    HEADER_LEN
        + 16
        + varint_len(message.seq)
        + varint_len(message.sent_at_unix_micros)
        + varint_len(message.origin_started_unix_ms)
        + len_varint(message.ops.len())
        + message.ops.iter().map(op_len).sum::<usize>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::wire::message::tests::sample;
    use proptest::prelude::*;

    /// The exact bytes of one message. If this fails, the wire format changed: bump
    /// `VERSION` (and keep reading the old one during rolling upgrades) or undo the change.
    #[test]
    fn golden_encoding_is_pinned() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            b'N', b'C', b'B', 1,                              // magic, version
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, // origin
            251, 0x2c, 0x01,                                  // seq 300: u16 marker
            253, 0x00, 0x40, 0x1e, 0x18, 0x24, 0x0a, 0x06, 0x00, // sent_at: u64 marker
            7,                                                // origin_started
            4,                                                // 4 ops
            0, 2, 1, b'a', 2, 0xc3, 0xa9,                     // Remove ["a", "é"]
            1, 1, b'r',                                       // ExpireRegion "r"
            2, 1, b'r', 1, b'k',                              // ExpireRegionKey "r" "k"
            3,                                                // Clear
        ];
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..], expected);
        assert_eq!(sample().encoded_len(), expected.len());
        assert_eq!(decode(expected).unwrap(), sample());
    }

    #[test]
    fn heartbeat_is_small() {
        let beat = Message::heartbeat(
            InstanceId::from_u128(1),
            5,
            1_700_000_000_000_000,
            1_700_000_000_000,
        );
        let bytes = encode(&beat).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 16 + 1 + 9 + 9 + 1);
        assert!(bytes.len() <= WireLimits::MIN_PAYLOAD_BYTES);
        assert_eq!(decode(&bytes).unwrap(), beat);
    }

    #[test]
    fn empty_payload_is_refused() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
    }

    #[test]
    fn wrong_magic_is_foreign() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(DecodeError::Foreign));
        assert_eq!(decode(b"{\"op\":\"clear\"}"), Err(DecodeError::Foreign));
        assert_eq!(decode(b"X"), Err(DecodeError::Foreign));
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes[3] = 3; // 2 is the signed format (`auth`)
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion(3));
        assert!(err.to_string().contains("upgrade"), "{err}");
        bytes[3] = 0;
        assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion(0)));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for len in 1..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            assert_eq!(err, DecodeError::Truncated, "prefix of {len} bytes");
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn over_limit_payload_is_refused_before_decoding() {
        let limits = WireLimits::default().with_max_payload_bytes(100);
        let mut bytes = vec![0xff; 101];
        assert_eq!(
            decode_with(&bytes, &limits),
            Err(DecodeError::TooLarge {
                size: 101,
                limit: 100
            })
        );
        bytes.truncate(100);
        assert_eq!(decode_with(&bytes, &limits), Err(DecodeError::Foreign));
    }

    /// A header plus a Remove whose key count and key length prefixes claim 2⁶⁴−1: refused
    /// without allocating anything of that size (the test would abort otherwise).
    #[test]
    fn huge_length_prefixes_are_refused_without_allocating() {
        let mut head = vec![b'N', b'C', b'B', 1];
        head.extend_from_slice(&[0; 16]); // origin
        head.extend_from_slice(&[1, 1, 1]); // seq, sent_at, started
        let huge = [253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

        let mut many_ops = head.clone();
        many_ops.extend_from_slice(&huge);
        assert!(decode(&many_ops).is_err());

        let mut many_keys = head.clone();
        many_keys.extend_from_slice(&[1, 0]); // one op: Remove
        many_keys.extend_from_slice(&huge);
        assert!(decode(&many_keys).is_err());

        let mut long_key = head.clone();
        long_key.extend_from_slice(&[1, 0, 1]); // one op: Remove, one key
        long_key.extend_from_slice(&huge);
        long_key.extend_from_slice(b"abc");
        assert!(matches!(decode(&long_key), Err(DecodeError::Malformed(_))));

        // A prefix under the claim budget but past the end of the input: truncated.
        let mut short_key = head;
        short_key.extend_from_slice(&[1, 0, 1, 252, 0, 0, 0, 1]); // key of 16 MiB
        short_key.extend_from_slice(b"abc");
        assert_eq!(decode(&short_key), Err(DecodeError::Truncated));
    }

    /// The limit `decode_with` refuses `bytes` on.
    fn refusal(bytes: &[u8], limits: &WireLimits) -> LimitExceeded {
        match decode_with(bytes, limits) {
            Err(DecodeError::LimitExceeded(exceeded)) => exceeded,
            other => panic!("expected a refusal on a limit, got {other:?}"),
        }
    }

    /// A count past the limits is refused on its prefix, or at the first element past the
    /// running total, before the rest of the payload is even read: the truncated tails
    /// below would otherwise read as `Truncated` (the decoder went on building).
    #[test]
    fn counts_are_refused_on_the_prefix_and_the_running_total() {
        let mut head = vec![b'N', b'C', b'B', 1];
        head.extend_from_slice(&[0; 16]); // origin
        head.extend_from_slice(&[1, 1, 1]); // seq, sent_at, started

        let mut ops = head.clone();
        ops.extend_from_slice(&[252, 0x01, 0x00, 0x01, 0x00]); // 65,537 ops, none present
        assert_eq!(
            refusal(&ops, &WireLimits::DEFAULT),
            LimitExceeded::Ops {
                count: 65_537,
                max: 65_536
            }
        );

        // A full-size payload of one-byte ops (Clear): refused on the count, not after
        // building a million-element vector.
        let mut clears = head.clone();
        let n = WireLimits::DEFAULT.max_payload_bytes() - head.len() - 5;
        clears.push(252);
        clears.extend_from_slice(&u32::try_from(n).unwrap().to_le_bytes());
        clears.resize(clears.len() + n, 3);
        assert!(matches!(
            refusal(&clears, &WireLimits::DEFAULT),
            LimitExceeded::Ops { .. }
        ));

        // Keys add up across ops: the second Remove's prefix takes the total past 3.
        let limits = WireLimits::default().with_max_keys(3);
        let mut keys = head;
        keys.extend_from_slice(&[2, 0, 2, 1, b'a', 1, b'b']); // 2 ops; Remove ["a", "b"]
        keys.extend_from_slice(&[0, 2, 1, b'c']); // Remove of 2 keys, cut short
        assert_eq!(
            refusal(&keys, &limits),
            LimitExceeded::Keys { count: 4, max: 3 }
        );
    }

    #[test]
    fn unknown_op_tag_is_malformed() {
        let message = Message {
            ops: vec![Op::Clear],
            ..sample()
        };
        let mut bytes = encode(&message).unwrap().to_vec();
        *bytes.last_mut().unwrap() = 6;
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("variant index"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let message = Message {
            ops: vec![Op::Remove {
                keys: vec!["ab".into()],
            }],
            ..sample()
        };
        let mut bytes = encode(&message).unwrap().to_vec();
        *bytes.last_mut().unwrap() = 0xff;
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::Malformed(ref why) if why.contains("UTF-8")),
            "{err}"
        );
    }

    #[test]
    fn limits_are_enforced_on_both_sides() {
        let strict = WireLimits::default()
            .with_max_key_bytes(1)
            .with_max_region_bytes(1);
        let long_key = Message {
            ops: vec![Op::Remove {
                keys: vec!["ab".into()],
            }],
            ..sample()
        };
        let expected = LimitExceeded::KeyLength { len: 2, max: 1 };
        assert_eq!(
            encode_with(&long_key, &strict),
            Err(EncodeError::LimitExceeded(expected))
        );
        let bytes = encode(&long_key).unwrap();
        assert_eq!(refusal(&bytes, &strict), expected);

        let empty_region = Message {
            ops: vec![Op::ExpireRegion {
                region: String::new(),
            }],
            ..sample()
        };
        let expected = LimitExceeded::RegionLength { len: 0, max: 256 };
        assert_eq!(
            encode(&empty_region),
            Err(EncodeError::LimitExceeded(expected))
        );

        let counts = WireLimits::default().with_max_ops(3).with_max_keys(2);
        let bytes = encode(&sample()).unwrap();
        assert_eq!(
            refusal(&bytes, &counts),
            LimitExceeded::Ops { count: 4, max: 3 }
        );
        let counts = counts.with_max_ops(4);
        assert_eq!(
            refusal(&bytes, &counts),
            LimitExceeded::Keys { count: 3, max: 2 }
        );
    }

    #[test]
    fn over_size_message_is_refused_by_encode_naming_sizes() {
        let limits = WireLimits::default().with_max_payload_bytes(64);
        let message = Message {
            ops: vec![Op::Remove {
                keys: vec!["k".repeat(100)],
            }],
            ..sample()
        };
        let size = message.encoded_len();
        let err = encode_with(&message, &limits).unwrap_err();
        assert_eq!(err, EncodeError::TooLarge { size, limit: 64 });
        assert!(err.to_string().contains(&size.to_string()), "{err}");
    }

    #[test]
    fn varint_lengths_match_the_encoder() {
        for value in [
            0,
            250,
            251,
            u16::MAX as u64,
            u16::MAX as u64 + 1,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let encoded = bincode::serde::encode_to_vec(value, config()).unwrap();
            assert_eq!(varint_len(value), encoded.len(), "{value}");
        }
    }

    // ---- property tests ----

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9:_-]{0,40}",
            any::<String>().prop_map(|s| s.chars().take(30).collect()),
            "\\PC{0,8}".prop_map(|s| format!("ключ-{s}-鍵-🔑")),
        ]
    }

    fn region() -> impl Strategy<Value = String> {
        "[a-zA-Zé_]{1,32}"
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(key(), 0..40).prop_map(|keys| Op::Remove { keys }),
            region().prop_map(|region| Op::ExpireRegion { region }),
            (region(), key()).prop_map(|(region, key)| Op::ExpireRegionKey { region, key }),
            Just(Op::Clear),
            Just(Op::Goodbye),
            Just(Op::Hello),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u128>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(op(), 0..12),
        )
            .prop_map(|(origin, seq, sent, started, ops)| Message {
                origin: InstanceId::from_u128(origin),
                seq,
                sent_at_unix_micros: sent,
                origin_started_unix_ms: started,
                ops,
            })
    }

    proptest! {
        #[test]
        fn round_trips(message in message()) {
            let bytes = encode(&message).unwrap();
            prop_assert_eq!(bytes.len(), message.encoded_len());
            prop_assert_eq!(decode(&bytes).unwrap(), message);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = vec![b'N', b'C', b'B', VERSION];
            bytes.extend_from_slice(&body);
            match decode(&bytes) {
                Ok(message) => {
                    // Whatever decodes re-encodes to the same bytes or is refused by limits.
                    prop_assert!(message.encoded_len() <= bytes.len());
                }
                Err(err) => prop_assert!(!matches!(err, DecodeError::Foreign | DecodeError::Empty | DecodeError::UnsupportedVersion(_))),
            }
        }

        #[test]
        fn truncations_are_refused(message in message(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&message).unwrap();
            let len = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..len]).is_err());
        }

        #[test]
        fn single_byte_mutations_never_panic(
            message in message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = encode(&message).unwrap().to_vec();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            // Mostly a typed error; a mutation inside a key can still decode, and then
            // it is a message like any other.
            if let Ok(decoded) = decode(&bytes) {
                prop_assert!(encode(&decoded).is_ok());
            }
        }
    }
}
