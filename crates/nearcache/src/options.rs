//! [`CacheOptions`]: everything a deployment tunes, deserializable from configuration.
//!
//! Each layer owns its settings and their defaults, and this module composes them rather
//! than copying them:
//!
//! * the store's ([`StoreOptions`]: capacity, expiry, fail-safe, timeouts, eager refresh) are
//!   flattened into [`CacheOptions`], so a config file names them at its top level
//!   (`max_capacity = 50000`) — where they have always been, and where a reader of the file
//!   expects "the cache's" settings — while Rust code reaches them as `options.store`;
//! * the propagation's ([`BackplaneOptions`]: heartbeats, the outbox, batching, staleness,
//!   loss policy, replay, signing keys) are the facade's own, in a `[backplane]` section,
//!   because they apply whatever carries the messages;
//! * the Redis backplane's ([`RedisConfig`](nearcache_redis::RedisConfig), feature `redis`)
//!   nest one level further, as `[backplane.redis]`: only a Redis deployment has them, and
//!   without the feature the section is an unknown field, so a file meant for Redis fails
//!   loudly instead of being half read.
//!
//! A nested store section was the alternative; flattening keeps every existing file valid
//! and keeps the common keys one level deep. Durations are human-readable (`"15m"`,
//! `"250ms"`) through `humantime-serde`. Every field has a default, so a config file names
//! only what it changes; unknown fields are an error, so a misspelt option fails loudly
//! instead of being ignored. Files written before the Redis settings had their own section
//! still load: see [`legacy`].
//!
//! Secrets (signing keys here, the Redis URL's password in
//! [`RedisUrl`](nearcache_redis::RedisUrl)) are held in types whose `Debug` and `Serialize`
//! hide them, so every options struct derives `Debug` (a new field can never be left out of
//! it), and options written back out show `***` where a secret was.

mod legacy;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use nearcache_backplane::wire::SigningKeys;
pub use nearcache_store::{OnHardTimeout, StoreOptions};

use crate::error::BuildError;

/// Which signing key is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigningKeyError {
    Current,
    Previous,
}

/// Options of one [`Cache`](crate::Cache): the cache's name, the [store's](StoreOptions)
/// settings and the [backplane's](BackplaneOptions).
///
/// ```
/// use std::time::Duration;
/// use nearcache::{CacheOptions, StoreOptions};
///
/// let options: CacheOptions = serde_json::from_str(r#"{
///     "time_to_idle": "15m",
///     "max_capacity": 50000,
///     "backplane": { "max_staleness": "30s" }
/// }"#).unwrap();
/// assert_eq!(options.store.time_to_idle, Some(Duration::from_secs(900)));
/// assert!(options.store.enabled, "unnamed fields keep their defaults");
///
/// // In Rust, the store's settings are one field:
/// let same = CacheOptions {
///     store: StoreOptions {
///         time_to_idle: Some(Duration::from_secs(900)),
///         max_capacity: 50_000,
///         ..StoreOptions::default()
///     },
///     ..CacheOptions::default()
/// };
/// assert_eq!(same.store, options.store);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheOptions {
    /// The cache's name in logs, spans and metrics (the `cache` label), so two caches in one
    /// process can be told apart. Default: none, which means the application's name (the
    /// executable's file name, else `"nearcache"`).
    pub name: Option<String>,
    /// The local store: `enabled`, `time_to_live`, `time_to_idle`, `max_capacity`,
    /// `max_weight`, `cache_none`, `purge_interval`, `shards`, `log_keys` (logs and spans of
    /// the facade too), fail-safe, `hard_timeout`, `soft_timeout`,
    /// `hard_timeout_action`, `eager_refresh_threshold`. In a config file
    /// these keys stand at the top level, beside `name`.
    #[serde(flatten)]
    pub store: StoreOptions,
    /// How instances tell each other about invalidations.
    #[serde(deserialize_with = "legacy::backplane")]
    pub backplane: BackplaneOptions,
}

impl CacheOptions {
    /// The name in force: `name`, else the executable's file name (without extension), else
    /// `"nearcache"`.
    pub fn cache_name(&self) -> String {
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return name.to_owned();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "nearcache".to_owned())
    }
}

/// What an instance does when it may have missed an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossPolicy {
    /// Clear the local cache (never the peers'): nothing stale is served. The default.
    #[default]
    Clear,
    /// Only count it. The cache may serve stale entries until they expire.
    None,
}

/// A secret from configuration (a signing key): `Debug` shows `"***"`, so options that hold
/// one can derive `Debug`. It deserializes from a plain string and serializes as `"***"`, so
/// options written out (a "show me my configuration" endpoint, a JSON log line) do not
/// carry it; [`expose`](Self::expose) is the way to ask for it. Options written out and read
/// back therefore fail loudly (a 3-byte key is refused) rather than sign with a wrong key.
///
/// ```
/// let key = nearcache::Secret::new("a long random secret shared by the fleet");
/// assert_eq!(format!("{key:?}"), "***");
/// assert_eq!(serde_json::to_string(&key).unwrap(), "\"***\"");
/// assert_eq!(key.expose(), "a long random secret shared by the fleet");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Backplane settings: how invalidations leave and reach this instance. The first fields
/// apply to every backplane; [`redis`](Self::redis) holds what only Redis has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackplaneOptions {
    /// How often an instance tells its peers its last sequence number, so a lost *last*
    /// message is noticed. Give every instance on a channel the same value. 1 ms to 1 day;
    /// default 5 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Longest a single publish may take before it counts as failed (and stays queued).
    /// Also bounds how long the async invalidation methods wait, and (Redis) each `PUBLISH`
    /// and the subscriber's `PING`. Not zero; default 1 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How many heartbeat intervals this instance waits to hear its own publishes (messages
    /// or heartbeats) come back through the channel before it treats the subscription as
    /// lost: a live connection is no proof of a live subscription (a server-side
    /// unsubscribe, an ACL change, a proxy). When it is lost the instance subscribes again
    /// and clears itself (cause `echo_lost`). 0 turns the check off. Default 3.
    pub heartbeat_echo_intervals: u32,
    /// A shared secret that signs every message this instance sends (HMAC-SHA256) and that
    /// every message it receives must be signed with: unsigned or badly signed messages are
    /// refused and counted (`messages_unauthenticated`). At least 16 bytes; give every
    /// instance on the channel the same key. When unset, the environment variable
    /// `NEARCACHE_SIGNING_KEY` is used if present. Never printed. Default: none (messages
    /// are unsigned and anyone who can publish on the channel can make caches evict).
    pub signing_key: Option<Secret>,
    /// During a key rotation, the old key: messages signed with it are still accepted, none
    /// are signed with it. When unset, `NEARCACHE_PREVIOUS_SIGNING_KEY` is used if present.
    /// Default: none.
    pub previous_signing_key: Option<Secret>,
    /// Most invalidations (keys, region expiries) waiting to be published. Past it the
    /// backlog is dropped: this instance clears itself, and its peers, seeing a gap in its
    /// sequence numbers once the backplane is back, clear themselves.
    /// At least 1; default 100,000.
    pub outbox_capacity: usize,
    /// Most keys sent in one message; a burst goes out in messages of up to this many.
    /// At least 1; default 4,096.
    pub max_batch: usize,
    /// While the backplane has been down longer than this, reads bypass the local cache
    /// (loads still single-flight) until it is back. Default: none (keep serving).
    #[serde(with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// What to do when this instance may have missed an invalidation. Default `clear`.
    pub on_loss: LossPolicy,
    /// Repair losses from the backplane's replay log when it keeps one (Redis does unless
    /// its `replay_log_len` is 0; the in-memory bus when built `with_replay_log`): after a
    /// reconnect, a lagged queue, a dead subscription or a skipped log position, read what
    /// was missed and evict exactly those keys, and clear (per `on_loss`) only when the log
    /// cannot cover the gap. `false` ignores any log: every loss clears. Default `true`.
    pub replay: bool,
    /// Longest a repair may take (reading the log and applying it). Reads bypass the local
    /// cache while it runs; past this it gives up and clears instead. Not zero; default 5 s.
    #[serde(with = "humantime_serde")]
    pub replay_timeout: Duration,
    /// First delay before retrying a failed publish or subscribe (and, for Redis,
    /// reconnecting); doubles up to `reconnect_max_delay`. Not zero; default 100 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial_delay: Duration,
    /// Longest delay between retries; at least `reconnect_initial_delay`. Default 5 s. A
    /// publish that invalidations wait on is retried at least every `publish_timeout` (or
    /// `reconnect_initial_delay`, if longer), so they go out within about that long once the
    /// backplane is back.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// The Redis backplane `CacheBuilder::connect` makes (its URL, channel, connection and
    /// replay-log settings; `[backplane.redis]` in a config file). Its `publish_timeout` and
    /// reconnect delays are taken from the fields above. Default: none, and `connect` then
    /// refuses with [`BuildError::NoRedisUrl`], as it does a section that names no `url`
    /// (a file has no default Redis: it is never localhost by accident).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<nearcache_redis::RedisConfig>,
}

impl BackplaneOptions {
    /// Longest `heartbeat_interval` accepted: past it, a lost last message would go
    /// unnoticed for days.
    pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
    /// Checks what the builder relies on.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidBackplaneOption`] naming the first option out of range.
    pub(crate) fn check(&self) -> Result<(), BuildError> {
        let invalid = |option, problem| Err(BuildError::InvalidBackplaneOption { option, problem });
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval > Self::MAX_HEARTBEAT_INTERVAL
        {
            return invalid(
                "heartbeat_interval",
                "must be between 1 ms and 1 day (the default is 5 s)",
            );
        }
        if self.publish_timeout.is_zero() {
            return invalid(
                "publish_timeout",
                "is 0, so every publish would time out; use at least 1 ms (the default is 1 s)",
            );
        }
        if self.outbox_capacity == 0 {
            return invalid(
                "outbox_capacity",
                "is 0, so every invalidation would overflow; use at least 1 (the default is 100000)",
            );
        }
        if self.max_batch == 0 {
            return invalid("max_batch", "is 0; use at least 1 (the default is 4096)");
        }
        if self.replay_timeout.is_zero() {
            return invalid(
                "replay_timeout",
                "is 0, so every repair would give up and clear; use at least 1 ms (the default is 5 s)",
            );
        }
        if self.reconnect_initial_delay.is_zero() {
            return invalid(
                "reconnect_initial_delay",
                "is 0, so retries would spin; use at least 1 ms (the default is 100 ms)",
            );
        }
        if self.reconnect_max_delay < self.reconnect_initial_delay {
            return invalid(
                "reconnect_max_delay",
                "is shorter than reconnect_initial_delay; make it at least as long",
            );
        }
        if let Err(error) = self.signing_keys() {
            return invalid(
                match error {
                    SigningKeyError::Current => "signing_key",
                    SigningKeyError::Previous => "previous_signing_key",
                },
                "is shorter than 16 bytes; use a long random secret (e.g. `openssl rand -base64 32`)",
            );
        }
        Ok(())
    }

    /// The signing keys in force: the options, else the environment variables
    /// `NEARCACHE_SIGNING_KEY` and `NEARCACHE_PREVIOUS_SIGNING_KEY`; `None` when no key is
    /// set (a previous key alone is ignored: it only verifies, and nothing would sign).
    pub(crate) fn signing_keys(&self) -> Result<Option<SigningKeys>, SigningKeyError> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let from_options = |key: &Option<Secret>| key.as_ref().map(|key| key.expose().to_owned());
        let Some(current) =
            from_options(&self.signing_key).or_else(|| from_env("NEARCACHE_SIGNING_KEY"))
        else {
            return Ok(None);
        };
        let previous = from_options(&self.previous_signing_key)
            .or_else(|| from_env("NEARCACHE_PREVIOUS_SIGNING_KEY"));
        if let Some(previous) = &previous
            && previous.len() < nearcache_backplane::wire::auth::MIN_KEY_LEN
        {
            return Err(SigningKeyError::Previous);
        }
        SigningKeys::new(current, previous.map(String::into_bytes))
            .map(Some)
            .map_err(|_| SigningKeyError::Current)
    }
    /// The Redis backplane's configuration as `connect` uses it: [`redis`](Self::redis),
    /// with the `publish_timeout` and reconnect delays of these options, which pace the
    /// facade's waits and retries and Redis's alike.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_config(&self) -> Option<nearcache_redis::RedisConfig> {
        let redis = self.redis.as_ref()?;
        Some(nearcache_redis::RedisConfig {
            publish_timeout: self.publish_timeout,
            reconnect: nearcache_redis::ReconnectBackoff {
                initial: self.reconnect_initial_delay,
                max: self.reconnect_max_delay,
                ..redis.reconnect
            },
            ..redis.clone()
        })
    }
}

impl Default for BackplaneOptions {
    fn default() -> Self {
        BackplaneOptions {
            heartbeat_interval: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(1),
            heartbeat_echo_intervals: 3,
            signing_key: None,
            previous_signing_key: None,
            outbox_capacity: 100_000,
            max_batch: 4096,
            max_staleness: None,
            on_loss: LossPolicy::Clear,
            replay: true,
            replay_timeout: Duration::from_secs(5),
            reconnect_initial_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_json() {
        let text = toml::to_string(&CacheOptions::default()).unwrap();
        let back: CacheOptions = toml::from_str(&text).unwrap();
        assert_eq!(back, CacheOptions::default());
        let json = serde_json::to_string(&CacheOptions::default()).unwrap();
        let back: CacheOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, CacheOptions::default());
    }

    #[test]
    fn the_stores_keys_stand_at_the_top_level() {
        let options: CacheOptions = toml::from_str(
            "name = \"catalog\"\nmax_capacity = 5\nshards = 4\ntime_to_live = \"1h 30m\"\n\
             [backplane]\npublish_timeout = \"250ms\"\non_loss = \"none\"\n",
        )
        .unwrap();
        assert_eq!(
            options,
            CacheOptions {
                name: Some("catalog".into()),
                store: StoreOptions {
                    max_capacity: 5,
                    shards: Some(4),
                    time_to_live: Some(Duration::from_secs(5400)),
                    ..StoreOptions::default()
                },
                backplane: BackplaneOptions {
                    publish_timeout: Duration::from_millis(250),
                    on_loss: LossPolicy::None,
                    ..BackplaneOptions::default()
                },
            }
        );
        // Written out, the store's keys are top-level keys again, not a `store` table.
        let text = toml::to_string(&options).unwrap();
        assert!(
            text.contains("\nshards = 4") && !text.contains("store"),
            "{text}"
        );
    }

    #[test]
    fn the_former_expiration_names_still_load_through_the_flattened_store() {
        let old: CacheOptions =
            toml::from_str("sliding_expiration = \"15m\"\nabsolute_expiration = \"1h\"\n").unwrap();
        let new: CacheOptions =
            toml::from_str("time_to_idle = \"15m\"\ntime_to_live = \"1h\"\n").unwrap();
        assert_eq!(old, new);
        assert_eq!(
            (new.store.time_to_idle, new.store.time_to_live),
            (
                Some(Duration::from_secs(900)),
                Some(Duration::from_secs(3600))
            )
        );
        let json: CacheOptions =
            serde_json::from_str(r#"{ "sliding_expiration": "15m", "absolute_expiration": "1h" }"#)
                .unwrap();
        assert_eq!(json, new);
        // One option under both names is refused, not silently resolved.
        let both =
            toml::from_str::<CacheOptions>("time_to_idle = \"1m\"\nsliding_expiration = \"2m\"\n")
                .unwrap_err();
        assert!(both.to_string().contains("time_to_idle"), "{both}");
        // Written out, only the new names appear: StoreOptions' own test.
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        for (text, misspelt) in [
            ("max_capacty = 5", "max_capacty"),
            (
                "[backplane]\nheartbeat_intervall = \"1s\"",
                "heartbeat_intervall",
            ),
            ("[backplane.redis]\nuri = \"redis://h\"", "uri"),
        ] {
            let err = toml::from_str::<CacheOptions>(text).unwrap_err();
            assert!(err.to_string().contains(misspelt), "{text}: {err}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn debug_shows_every_option_but_no_secret() {
        let options = CacheOptions {
            backplane: BackplaneOptions {
                signing_key: Some(Secret::new("fleet-secret-0123456789")),
                previous_signing_key: Some(Secret::new("older-secret-0123456789")),
                redis: Some(nearcache_redis::RedisConfig::new(
                    "redis://app:hunter2@127.0.0.1:6379/0",
                )),
                ..BackplaneOptions::default()
            },
            ..CacheOptions::default()
        };
        let shown = format!("{options:?}");
        for secret in ["hunter2", "fleet-secret", "older-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("redis://app:***@127.0.0.1:6379/0"),
            "{shown}"
        );
        // Derived: every field of every layer is there (a sample of each).
        for field in [
            "name",
            "shards",
            "fail_safe_throttle",
            "max_batch",
            "replay_log_len",
        ] {
            assert!(shown.contains(field), "{field} missing from {shown}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn connect_takes_the_backplane_wide_timeout_and_delays_for_redis() {
        let options = BackplaneOptions {
            publish_timeout: Duration::from_millis(250),
            reconnect_initial_delay: Duration::from_millis(20),
            reconnect_max_delay: Duration::from_secs(2),
            redis: Some(nearcache_redis::RedisConfig::for_app("shop")),
            ..BackplaneOptions::default()
        };
        let config = options.redis_config().unwrap();
        assert_eq!(config.publish_timeout, Duration::from_millis(250));
        assert_eq!(
            (config.reconnect.initial, config.reconnect.max),
            (Duration::from_millis(20), Duration::from_secs(2))
        );
        assert_eq!(config.channel_name(), "nearcache:shop:invalidations");
        assert_eq!(BackplaneOptions::default().redis_config(), None);
    }

    #[test]
    fn out_of_range_backplane_options_are_named() {
        assert!(BackplaneOptions::default().check().is_ok());
        type Spoil = fn(&mut BackplaneOptions);
        let cases: [(&str, Spoil); 8] = [
            ("heartbeat_interval", |o| {
                o.heartbeat_interval = Duration::ZERO
            }),
            ("heartbeat_interval", |o| {
                o.heartbeat_interval = Duration::from_secs(2 * 24 * 60 * 60)
            }),
            ("publish_timeout", |o| o.publish_timeout = Duration::ZERO),
            ("outbox_capacity", |o| o.outbox_capacity = 0),
            ("max_batch", |o| o.max_batch = 0),
            ("reconnect_initial_delay", |o| {
                o.reconnect_initial_delay = Duration::ZERO
            }),
            ("reconnect_max_delay", |o| {
                o.reconnect_max_delay = Duration::from_millis(1)
            }),
            ("signing_key", |o| {
                o.signing_key = Some(Secret::new("short"))
            }),
        ];
        for (name, spoil) in cases {
            let mut options = BackplaneOptions::default();
            spoil(&mut options);
            match options.check() {
                Err(BuildError::InvalidBackplaneOption { option, .. }) => assert_eq!(option, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn resilience_options_read_as_human_durations() {
        let options: CacheOptions = toml::from_str(
            "fail_safe_max_duration = \"2h\"\nfail_safe_throttle = \"10s\"\nhard_timeout = \"1500ms\"\n",
        )
        .unwrap();
        assert_eq!(
            options.store.fail_safe_max_duration,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(options.store.fail_safe_throttle, Duration::from_secs(10));
        assert_eq!(
            options.store.hard_timeout,
            Some(Duration::from_millis(1500))
        );
        let options: CacheOptions = toml::from_str(
            "soft_timeout = \"100ms\"\nhard_timeout = \"2s\"\nhard_timeout_action = \"background\"\n",
        )
        .unwrap();
        assert_eq!(options.store.soft_timeout, Some(Duration::from_millis(100)));
        assert_eq!(options.store.hard_timeout_action, OnHardTimeout::Background);
        let defaults = CacheOptions::default();
        assert_eq!(
            defaults.store.fail_safe_max_duration, None,
            "fail-safe is off by default"
        );
        assert_eq!(defaults.store.fail_safe_throttle, Duration::from_secs(30));
        assert_eq!(defaults.store.soft_timeout, None);
        assert_eq!(defaults.store.hard_timeout_action, OnHardTimeout::Cancel);
    }
}
