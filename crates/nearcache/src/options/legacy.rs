//! Reading configuration files written before the Redis settings had their own section.
//!
//! Those files give the Redis backplane's settings in `[backplane]` (`redis_url`, `app`,
//! `sharded`, …). They still load to the same settings: each such key is moved to its place in
//! `[backplane.redis]`, with one `warn!` per key naming the new spelling. A file that gives
//! both spellings — any former key *and* a `[backplane.redis]` section — is refused, since
//! which one was meant cannot be known.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "redis")]
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::BackplaneOptions;

/// Declares the former keys once: the struct that reads them, their names, and where each
/// goes in [`RedisConfig`](nearcache_redis::RedisConfig).
macro_rules! moved_keys {
    ($( $(#[$attr:meta])* $former:ident: $ty:ty => $now:ident, )*) => {
        /// The Redis settings a `[backplane]` section could hold before they moved.
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct MovedKeys {
            $( $(#[$attr])* $former: Option<$ty>, )*
        }

        impl MovedKeys {
            /// The keys given, as (former name, name in `[backplane.redis]`).
            fn given(&self) -> Vec<(&'static str, &'static str)> {
                let mut given = Vec::new();
                $( if self.$former.is_some() {
                    given.push((stringify!($former), stringify!($now)));
                } )*
                given
            }

            /// Sets each key given in `redis`.
            #[cfg(feature = "redis")]
            fn apply(self, redis: &mut nearcache_redis::RedisConfig) {
                $( if let Some(value) = self.$former {
                    redis.$now = value.into();
                } )*
            }
        }
    };
}

moved_keys! {
    redis_url: String => url,
    app: String => app,
    channel: String => channel,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration => connect_timeout,
    #[serde(with = "humantime_serde")]
    ping_interval: Duration => ping_interval,
    sharded: bool => sharded,
    subscriber_queue: usize => subscriber_queue,
    tls_ca_file: PathBuf => tls_ca_file,
    replay_log_len: usize => replay_log_len,
}

/// A `[backplane]` section: the current keys, and the former Redis keys beside them. Errors
/// name it `BackplaneOptions`, the type a reader can look up.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "struct BackplaneOptions (a [backplane] table)"
)]
struct Section {
    #[serde(flatten)]
    moved: MovedKeys,
    #[serde(flatten)]
    options: BackplaneOptions,
}

/// Reads a `[backplane]` section, moving the former Redis keys into `redis`.
pub(super) fn backplane<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BackplaneOptions, D::Error> {
    let Section { moved, options } = Section::deserialize(deserializer)?;
    let given = moved.given();
    if given.is_empty() {
        return Ok(options);
    }
    #[cfg(feature = "redis")]
    let options = into_redis_section(moved, options, given[0]).map_err(D::Error::custom)?;
    for (former, now) in given {
        if cfg!(feature = "redis") {
            tracing::warn!(
                "backplane.{former} is read as backplane.redis.{now}: it moved to the \
                 [backplane.redis] section, write it there"
            );
        } else {
            tracing::warn!(
                "backplane.{former} (now backplane.redis.{now}) is ignored: nearcache was \
                 built without its `redis` feature"
            );
        }
    }
    Ok(options)
}

/// `options` with a Redis section made of the `moved` keys; refused when the file has a
/// `[backplane.redis]` section too, naming one of the former keys it gave.
#[cfg(feature = "redis")]
fn into_redis_section(
    moved: MovedKeys,
    options: BackplaneOptions,
    (former, now): (&str, &str),
) -> Result<BackplaneOptions, String> {
    if options.redis.is_some() {
        return Err(format!(
            "backplane.{former} is the former spelling of backplane.redis.{now}, and a \
             [backplane.redis] section is given too: move every Redis setting into that section"
        ));
    }
    // As a `[backplane.redis]` section without `url` reads: no URL (so `connect` refuses
    // with `NoRedisUrl`, as it did for such a file), not the localhost of `Default`.
    let mut redis = nearcache_redis::RedisConfig {
        url: nearcache_redis::RedisUrl::new(String::new()),
        ..nearcache_redis::RedisConfig::default()
    };
    moved.apply(&mut redis);
    Ok(BackplaneOptions {
        redis: Some(redis),
        ..options
    })
}
