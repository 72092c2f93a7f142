//! The Redis Cluster hash slot of a channel: CRC16 (XMODEM) of the name, or of its hash tag,
//! modulo 16384 — the same function the server uses for keys and sharded channels.
//!
//! Computed here rather than asked of a node (`CLUSTER KEYSLOT`) so finding the owner of the
//! channel costs one round trip (`CLUSTER SLOTS`), and rather than taken from the `redis`
//! crate because its slot function sits behind the `cluster` feature, which this crate does
//! not otherwise need.

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `name`: when it holds `{tag}` with a non-empty tag, only the tag is hashed, so
/// names sharing a tag share a slot.
pub(crate) fn slot_of(name: &[u8]) -> u16 {
    crc16(hash_tag(name)) % SLOTS
}

fn hash_tag(name: &[u8]) -> &[u8] {
    let Some(open) = name.iter().position(|&b| b == b'{') else {
        return name;
    };
    let rest = &name[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => name,
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_values() {
        // The check value of CRC16/XMODEM, and slots documented by Redis (CLUSTER KEYSLOT).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"somekey"), 11058);
    }

    #[test]
    fn hash_tags_pick_the_hashed_part() {
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"foo{}{bar}"),
            "empty tag: whole name"
        );
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    }
}
