//! The frame that carries a payload's [`LogPosition`] from a backplane with a replay log to
//! the receiver.
//!
//! The position is assigned where the payload is logged — for Redis inside the server-side
//! script, after the publisher signed the message — so it cannot live inside the signed body.
//! It travels in front of it instead, in a small text frame that a Lua script can build:
//!
//! | field | bytes | meaning |
//! |---|---|---|
//! | magic | `b"NCL"` | a logged payload (a bare message starts with `b"NCB"`) |
//! | version | 1 byte, `b'1'` | the frame format; others are not unframed |
//! | position | ASCII `epoch-index` | decimal, each at most 20 digits |
//! | end | `b'\n'` | |
//! | payload | the rest | the message exactly as published |
//!
//! A payload without a frame (a backplane without a log, an older publisher) passes through
//! [`unframe`] unchanged with no position. The position is a hint for *where to read from*,
//! never a reason to skip a message: a forged one can make a receiver read the wrong part of
//! the log (and clear), never make it drop an invalidation.

use bytes::{BufMut, Bytes, BytesMut};

use crate::replay::LogPosition;

/// The first four bytes of a framed payload: magic and version.
pub const FRAME_MAGIC: &[u8; 4] = b"NCL1";

/// The longest frame header: magic, two 20-digit numbers, `-` and `\n`.
const MAX_HEADER: usize = 4 + 20 + 1 + 20 + 1;

/// `payload` framed with `position`, as a backplane delivers it.
#[must_use]
pub fn frame(position: LogPosition, payload: &[u8]) -> Bytes {
    let header = format!("{}-{}\n", position.epoch(), position.index());
    let mut out = BytesMut::with_capacity(FRAME_MAGIC.len() + header.len() + payload.len());
    out.put_slice(FRAME_MAGIC);
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
    out.freeze()
}

/// The position and the payload of a framed delivery; an unframed one (or a frame that does
/// not parse) comes back whole, without a position.
#[must_use]
pub fn unframe(delivered: &Bytes) -> (Option<LogPosition>, Bytes) {
    let Some(rest) = delivered.strip_prefix(FRAME_MAGIC.as_slice()) else {
        return (None, delivered.clone());
    };
    let window = &rest[..rest.len().min(MAX_HEADER - FRAME_MAGIC.len())];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return (None, delivered.clone());
    };
    let parsed = std::str::from_utf8(&window[..end]).ok().and_then(|text| {
        let (epoch, index) = text.split_once('-')?;
        Some(LogPosition::new(epoch.parse().ok()?, index.parse().ok()?))
    });
    match parsed {
        Some(position) => (
            Some(position),
            delivered.slice(FRAME_MAGIC.len() + end + 1..),
        ),
        None => (None, delivered.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_payload_unframes_to_its_position_and_bytes() {
        let position = LogPosition::new(1_733_000_000_123_456, 42);
        let framed = frame(position, b"NCB\x01body");
        assert!(framed.starts_with(b"NCL11733000000123456-42\n"));
        assert_eq!(
            unframe(&framed),
            (Some(position), Bytes::from_static(b"NCB\x01body"))
        );
        let max = LogPosition::new(u64::MAX, u64::MAX);
        assert_eq!(unframe(&frame(max, b"")), (Some(max), Bytes::new()));
    }

    #[test]
    fn anything_else_passes_through_without_a_position() {
        for raw in [
            &b"NCB\x01plain message"[..],
            b"NCL1",
            b"NCL1no newline",
            b"NCL1x-1\nbody",
            b"NCL112\nbody",
            b"NCL2 1-1\nbody",
            b"",
        ] {
            let raw = Bytes::copy_from_slice(raw);
            assert_eq!(unframe(&raw), (None, raw.clone()), "{raw:?}");
        }
    }
}
