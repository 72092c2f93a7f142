//! [`ChangeToken`]: the one-way switch that expires a group of entries at once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared flag that starts live and, once expired, stays expired.
///
/// Entries hold the tokens of the regions they belong to; an entry is dead as soon as any
/// of its tokens is expired. Expiring a region therefore costs one atomic store however many
/// entries it has: the store stops returning those entries at once and purges them later.
///
/// Each token also carries an *epoch*: the value of its registry's invalidation counter when
/// the token was installed. A load that started before that epoch may have read data that the
/// expiry was meant to evict, so the store refuses to insert its result (no stale insert).
/// Tokens made with [`ChangeToken::new`] have epoch 0.
///
/// Cloning is one atomic increment; [`is_expired`](Self::is_expired) is one atomic load.
///
/// ```
/// use nearcache_regions::ChangeToken;
///
/// let token = ChangeToken::new();
/// let held_by_entry = token.clone();
/// assert!(!held_by_entry.is_expired());
/// assert!(token.expire(), "the first expire flips the token");
/// assert!(!token.expire(), "expiring again changes nothing");
/// assert!(held_by_entry.is_expired());
/// ```
#[derive(Clone)]
pub struct ChangeToken(Arc<TokenState>);

struct TokenState {
    expired: AtomicBool,
    epoch: u64,
}

impl ChangeToken {
    /// A live token with epoch 0.
    pub fn new() -> Self {
        Self::with_epoch(0)
    }

    /// A live token installed at `epoch` of its registry's invalidation counter.
    pub fn with_epoch(epoch: u64) -> Self {
        ChangeToken(Arc::new(TokenState {
            expired: AtomicBool::new(false),
            epoch,
        }))
    }

    /// Whether the token has been expired. One atomic load.
    #[inline]
    pub fn is_expired(&self) -> bool {
        self.0.expired.load(Ordering::Acquire)
    }

    /// Expires the token; idempotent. Returns `true` if this call flipped it.
    pub fn expire(&self) -> bool {
        !self.0.expired.swap(true, Ordering::AcqRel)
    }

    /// The registry epoch at which this token was installed (0 for [`ChangeToken::new`]).
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// Whether `self` and `other` are the same token (not merely both live or both expired).
    pub fn same_as(&self, other: &ChangeToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many handles to this token exist (the registry's own included). A sub-key token
    /// whose only handle is the registry's is held by no entry and can be dropped.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl Default for ChangeToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ChangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeToken")
            .field("expired", &self.is_expired())
            .field("epoch", &self.0.epoch)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_seen_by_every_clone() {
        let a = ChangeToken::with_epoch(7);
        let b = a.clone();
        assert!(a.same_as(&b));
        assert_eq!(b.epoch(), 7);
        a.expire();
        assert!(b.is_expired());
        assert!(!ChangeToken::new().same_as(&a));
    }

    #[test]
    fn concurrent_expire_flips_exactly_once() {
        for _ in 0..100 {
            let token = ChangeToken::new();
            let barrier = std::sync::Barrier::new(8);
            let flips = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        barrier.wait();
                        if token.expire() {
                            flips.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            assert_eq!(flips.load(Ordering::Relaxed), 1);
        }
    }
}
