//! How a key appears in logs: as it is only when the store's `log_keys` is on. Keys may hold
//! personal data; otherwise a short stable hash stands in for it — the same for a key on
//! every instance and every run, so one key can still be followed through a fleet's logs.

use std::fmt;

use nearcache_keys::Key;

/// A key as logs show it (`Display`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a> {
    key: &'a Key,
    plain: bool,
}

impl<'a> Shown<'a> {
    pub(crate) fn new(key: &'a Key, log_keys: bool) -> Self {
        Shown {
            key,
            plain: log_keys,
        }
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plain {
            f.write_str(self.key.as_str())
        } else {
            write!(f, "#{:016x}", stable_key_hash(self.key.as_str()))
        }
    }
}

/// FNV-1a (64 bits) of a key's text: stable across builds, platforms and runs (std's
/// hashers are not), so logs of different instances can be matched by it. Logs and spans
/// show `#` and its 16 hex digits in place of a key when keys may not be shown.
pub fn stable_key_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_only_when_allowed() {
        let key = Key::from_text("User:get-alice@example.com");
        assert_eq!(Shown::new(&key, true).to_string(), key.as_str());
        let hidden = Shown::new(&key, false).to_string();
        assert!(!hidden.contains("alice"), "{hidden}");
        assert_eq!(hidden.len(), 17);
        // Fixed for every build and run.
        assert_eq!(stable_key_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_key_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
