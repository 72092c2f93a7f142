//! The five ways one instance can invalidate a key, for the tests that check each of them
//! keeps an old value from being served (fail-safe, late callers).
#![allow(dead_code, unreachable_pub)]

use nearcache::{Cache, Key, Propagated, Region};

/// How an instance invalidates a key tied to a region's sub-key.
#[derive(Debug, Clone, Copy)]
pub enum How {
    Remove,
    Set,
    SubKey,
    Region,
    Clear,
}

impl How {
    /// Every way, in the order the tests try them.
    pub const ALL: [How; 5] = [How::Remove, How::Set, How::SubKey, How::Region, How::Clear];

    /// Invalidates `k` on `cache` this way — `k` is tied to `R`'s `sub_key`; `Set` stores
    /// version 2 — and waits for the publish.
    pub async fn invalidate<R: Region>(self, cache: &Cache, k: &Key, sub_key: &str) -> Propagated {
        match self {
            How::Remove => cache.remove(k).await,
            How::Set => cache.set(k, 2_u64).await,
            How::SubKey => cache.expire_region_key::<R, _>(sub_key).await,
            How::Region => cache.expire_region::<R>().await,
            How::Clear => cache.clear().await,
        }
    }
}
