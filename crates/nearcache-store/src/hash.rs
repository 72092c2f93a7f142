//! A pass-through hasher for [`Key`](nearcache_keys::Key)s.
//!
//! A `Key` hashes itself by writing one `u64` it computed once, from a per-process random
//! seed. Hashing that again on every lookup would be wasted work, so the store's maps use it
//! as is. Anything other than a single `write_u64` is still mixed properly (FNV-1a), so the
//! maps stay correct if `Key`'s `Hash` ever changes; a test pins the single-write contract.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHashBuilder;

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Returns the key's precomputed hash unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        // The first write is the key's own hash: keep it. Later writes (none for `Key`) fold in.
        self.0 = if self.0 == 0 {
            value
        } else {
            (self.0 ^ value).wrapping_mul(FNV_PRIME)
        };
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { FNV_OFFSET } else { self.0 };
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        self.0 = hash;
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;
    use nearcache_keys::Key;
    use std::hash::Hash;

    /// Records how a value hashes itself.
    #[derive(Default)]
    struct Recorder {
        u64_writes: usize,
        other_writes: usize,
    }

    impl Hasher for Recorder {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {
            self.other_writes += 1;
        }
        fn write_u64(&mut self, _: u64) {
            self.u64_writes += 1;
        }
    }

    #[test]
    fn key_hashes_by_one_precomputed_u64() {
        let mut recorder = Recorder::default();
        Key::from_text("Product:get-42").hash(&mut recorder);
        assert_eq!(
            (recorder.u64_writes, recorder.other_writes),
            (1, 0),
            "the pass-through hasher relies on Key writing exactly one u64"
        );
    }

    #[test]
    fn equal_keys_hash_equal_and_distinct_keys_spread() {
        let a = KeyHashBuilder.hash_one(Key::from_text("a"));
        assert_eq!(
            a,
            KeyHashBuilder.hash_one(Key::from_text(String::from("a")))
        );
        let hashes: std::collections::HashSet<u64> = (0..1000)
            .map(|i| KeyHashBuilder.hash_one(Key::from_text(format!("k{i}"))))
            .collect();
        assert_eq!(hashes.len(), 1000);
    }

    #[test]
    fn byte_writes_are_mixed() {
        let a = KeyHashBuilder.hash_one("ab");
        let b = KeyHashBuilder.hash_one("ba");
        assert_ne!(a, b);
    }
}
