//! What the loader tests (`fail_safe.rs`, `timeouts.rs`, `eager_refresh.rs`) share: the
//! region and the error their factories use, two instances on one mock clock, the version-1
//! load a detached loader starts from, a cache with a hard timeout, and the check that a bad
//! option is refused by its name.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nearcache::{
    BuildError, Cache, CacheOptions, InMemoryBackplane, Key, OptionsError, StoreOptions, region,
};

region!(pub Catalog = "catalog");

pub const SECOND: Duration = Duration::from_secs(1);

/// The error a failing factory returns.
#[derive(Debug, PartialEq, Eq)]
pub struct DatabaseDown;

/// Two instances with `options` on one bus and one mock clock, not yet awaited `ready`.
pub fn pair_on_a_mock_clock(
    options: impl Fn() -> CacheOptions,
) -> (Cache, Cache, Arc<quanta::Mock>) {
    let bus = InMemoryBackplane::new();
    let (clock, mock) = quanta::Clock::mock();
    let build = || {
        Cache::builder()
            .options(options())
            .backplane(bus.connection())
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    (build(), build(), mock)
}

/// Loads version 1 of `k` through a detached loader: living 10 s, tied to `Catalog`.
pub async fn load_v1_detached(cache: &Cache, k: &Key) -> Arc<u64> {
    cache
        .get_or_create_detached(k, async |entry| {
            entry.time_to_live(10 * SECOND).region::<Catalog>();
            Ok::<_, DatabaseDown>(1_u64)
        })
        .await
        .unwrap()
}

/// A cache (no backplane) whose loads are abandoned after `hard_timeout`.
pub fn with_hard_timeout(hard_timeout: Duration) -> Cache {
    Cache::new(CacheOptions {
        store: StoreOptions {
            hard_timeout: Some(hard_timeout),
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    })
    .unwrap()
}

/// Why building a cache refuses the store options `set` has given a bad value to the option
/// named `option`: once the error is seen to be [`BuildError::InvalidOptions`] and its
/// message to name `option` (so a user knows which setting to fix).
pub fn refused(option: &str, set: impl FnOnce(&mut StoreOptions)) -> OptionsError {
    let mut store = StoreOptions::default();
    set(&mut store);
    let error = Cache::new(CacheOptions {
        store,
        ..CacheOptions::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains(option), "{error}");
    match error {
        BuildError::InvalidOptions(invalid) => invalid,
        other => panic!("{option}: refused, but not as invalid options: {other:?}"),
    }
}
