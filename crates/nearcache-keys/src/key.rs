//! [`Key`]: the finished key text, the key of the hot-path map.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use crate::{CacheKey, buffer};

/// A finished cache key: immutable text plus its hash, computed once.
///
/// A `Key` is what the local store is indexed by and what travels in invalidation messages
/// (as its text). Cloning it costs one atomic increment (the text is an `Arc<str>`), and
/// hashing it writes one precomputed `u64`, so a lookup never re-reads the text to hash it.
/// The precomputed hash is seeded randomly once per process, so crafted key texts cannot
/// be aimed at one bucket; it is never sent anywhere.
///
/// Build keys with [`cache_key!`](crate::cache_key) or [`KeyBuilder`](crate::KeyBuilder),
/// whose text is injective (distinct inputs never share a key). [`Key::from_text`] takes
/// text verbatim, for keys that arrive already finished (for example from the wire).
///
/// Size: 24 bytes inline plus the shared text allocation (16 bytes of counts + the text).
///
/// ```
/// use nearcache_keys::Key;
///
/// let key = Key::from_text("Product:get-42");
/// assert_eq!(key.as_str(), "Product:get-42");
/// assert_eq!(key, Key::from_text(String::from("Product:get-42")));
/// ```
#[derive(Clone)]
pub struct Key {
    hash: u64,
    text: Arc<str>,
}

impl Key {
    /// A key whose text is exactly `text`, with no escaping applied.
    ///
    /// Use it for text that is already a finished key (received from a peer, read from a
    /// config). Keys built from values should come from [`cache_key!`](crate::cache_key) or
    /// [`KeyBuilder`](crate::KeyBuilder), which escape separators so that distinct inputs
    /// can never produce the same text.
    pub fn from_text(text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        Key {
            hash: hash_text(&text),
            text,
        }
    }

    /// The key whose text is `value`'s [key text](CacheKey::key_text): one value used as a
    /// whole key, with no type or method prefix.
    ///
    /// Cost: the value is written into a reused per-thread buffer, then copied once into the
    /// key's shared text (one allocation).
    ///
    /// ```
    /// use nearcache_keys::Key;
    ///
    /// assert_eq!(Key::of(&42).as_str(), "42");
    /// assert_eq!(Key::of(&("Prop1Value", "Prop2Value")).as_str(), "Prop1Value-Prop2Value");
    /// assert_eq!(Key::of(&("a-b", "c")).as_str(), "'a-b'-c");
    /// ```
    pub fn of<T: CacheKey + ?Sized>(value: &T) -> Self {
        buffer::with_top_level(value, |text| Key::from_text(text))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key text as a shared string (cheap to clone).
    pub fn text(&self) -> &Arc<str> {
        &self.text
    }

    /// Length of the key text in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether the key text is empty.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

fn hash_text(text: &str) -> u64 {
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    SEED.get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(text)
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Self {
        key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_text_means_equal_key_and_hash() {
        let a = Key::from_text("a:b-c");
        let b = Key::from_text(String::from("a:b-c"));
        assert_eq!(a, b);
        let set: HashSet<Key> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_ne!(a, Key::from_text("A:b-c"), "keys are case-sensitive");
    }

    #[test]
    fn clone_shares_text() {
        let a = Key::from_text("shared");
        let b = a.clone();
        assert!(Arc::ptr_eq(a.text(), b.text()));
    }
}
