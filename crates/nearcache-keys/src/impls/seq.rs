//! Sequences and ordered collections: composites of their items in order. Slices, arrays and
//! `Vec` go through [`CacheKey::write_slice`], so byte strings (`[u8]`, `[u8; N]`,
//! `Vec<u8>`) are hex. Maps are sequences of `(key-value)` pairs.
//!
//! `HashMap`/`HashSet` have no impl on purpose: their iteration order is randomized per
//! process, so two equal sets would give two different keys on two instances.

use std::collections::{BTreeMap, BTreeSet};

use crate::{CacheKey, KeyWriter};

impl<T: CacheKey> CacheKey for [T] {
    fn write_key(&self, out: KeyWriter<'_>) {
        T::write_slice(self, out);
    }
}

impl<T: CacheKey, const N: usize> CacheKey for [T; N] {
    fn write_key(&self, out: KeyWriter<'_>) {
        T::write_slice(self, out);
    }
}

impl<T: CacheKey> CacheKey for Vec<T> {
    fn write_key(&self, out: KeyWriter<'_>) {
        T::write_slice(self, out);
    }
}

impl<T: CacheKey> CacheKey for BTreeSet<T> {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_seq(self);
    }
}

impl<K: CacheKey, V: CacheKey> CacheKey for BTreeMap<K, V> {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_seq(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_composites() {
        assert_eq!(vec!["a", "b"].key_text(), "a-b");
        assert_eq!(vec![vec!["a", "b"], vec![]].key_text(), "(a-b)-()");
        assert_eq!(["x"; 3].key_text(), "x-x-x");
        assert_eq!([1_u16, 2][..].key_text(), "1-2");
    }

    #[test]
    fn empty_differs_from_one_empty_string() {
        assert_eq!(Vec::<&str>::new().key_text(), "");
        assert_eq!(vec![""].key_text(), "''");
        assert_eq!(vec!["", ""].key_text(), "''-''");
        assert_eq!(vec![Vec::<&str>::new()].key_text(), "()");
        assert_eq!(vec![vec![""]].key_text(), "('')");
    }

    #[test]
    fn separators_inside_items_cannot_forge_items() {
        assert_ne!(vec!["a-b", "c"].key_text(), vec!["a", "b-c"].key_text());
        assert_ne!(vec!["a-b"].key_text(), vec!["a", "b"].key_text());
        assert_ne!(vec!["(a-b)"].key_text(), vec![vec!["a", "b"]].key_text());
    }

    #[test]
    fn bytes_are_hex() {
        let uuid: [u8; 16] = [
            0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44,
            0x00, 0x00,
        ];
        assert_eq!(uuid.key_text(), "550e8400e29b41d4a716446655440000");
        assert_eq!(vec![0xde_u8, 0xad].key_text(), "dead");
        assert_eq!(b"\x01"[..].key_text(), "01");
        assert_eq!(Vec::<u8>::new().key_text(), "''");
        assert_eq!(vec![vec![0xab_u8], vec![]].key_text(), "ab-''");
    }

    #[test]
    fn ordered_collections() {
        let set: BTreeSet<_> = ["b", "a"].into_iter().collect();
        assert_eq!(set.key_text(), "a-b");
        let map: BTreeMap<_, _> = [("k2", 2), ("k1", 1)].into_iter().collect();
        assert_eq!(map.key_text(), "(k1-1)-(k2-2)");
        assert_eq!(BTreeMap::<u8, u8>::new().key_text(), "");
    }
}
