//! [`CacheOptions`]: everything a deployment tunes, deserializable from configuration.
//!
//! Durations are human-readable (`"15m"`, `"250ms"`) through `humantime-serde`. Every field
//! has a default, so a config file names only what it changes; unknown fields are an error,
//! so a misspelt option fails loudly instead of being ignored.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use nearcache_backplane::wire::SigningKeys;

use crate::error::BuildError;

/// Which signing key is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigningKeyError {
    Current,
    Previous,
}

/// Options of one [`Cache`](crate::Cache).
///
/// ```
/// use std::time::Duration;
/// use nearcache::CacheOptions;
///
/// let options: CacheOptions = serde_json::from_str(r#"{
///     "time_to_idle": "15m",
///     "max_capacity": 50000,
///     "backplane": { "max_staleness": "30s" }
/// }"#).unwrap();
/// assert_eq!(options.time_to_idle, Some(Duration::from_secs(900)));
/// assert!(options.enabled, "unnamed fields keep their defaults");
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheOptions {
    /// `false` turns the cache into a pass-through: every call runs its factory and nothing is
    /// stored. Invalidations are still published, so peers stay coherent. Default `true`.
    pub enabled: bool,
    /// Time to idle (sliding expiration) for entries that set none: an entry not read for
    /// this long expires. Default: none. Also read as `sliding_expiration`, its former name.
    #[serde(with = "humantime_serde", alias = "sliding_expiration")]
    pub time_to_idle: Option<Duration>,
    /// Time to live (absolute expiration, from insertion) for entries that set none.
    /// Default: none. Also read as `absolute_expiration`, its former name.
    #[serde(with = "humantime_serde", alias = "absolute_expiration")]
    pub time_to_live: Option<Duration>,
    /// Most entries held at once. Default 10,000. Ignored when `max_weight` is set.
    pub max_capacity: u64,
    /// A weight budget instead of an entry count: entries weigh what their factory says
    /// (default 1). Default: none.
    pub max_weight: Option<u64>,
    /// Whether a factory's `Ok(None)` is stored (negative caching) by the `_optional`
    /// loaders. Default `true`.
    pub cache_none: bool,
    /// How often expired entries are swept out of memory. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// The cache's name in logs, spans and metrics (the `cache` label), so two caches in one
    /// process can be told apart. Default: none, which means the application's name (the
    /// executable's file name, else `"nearcache"`).
    pub name: Option<String>,
    /// Whether keys appear as they are in logs and spans. Keys may hold personal data, so by
    /// default they do not: a short stable hash of the key stands in for it (the same key
    /// always gives the same hash, on every instance). Default `false`.
    pub log_keys: bool,
    /// Fail-safe: how long entries that expire by time are kept past their expiry (still
    /// weighing against the capacity, never returned by `get`), so that when a later load
    /// of the key fails (an error, a panic, `hard_timeout`) its callers get the expired value
    /// instead of the error. An invalidated entry (`remove`, `set`, a region or sub-key
    /// expiry, `clear`, a peer's message, a loss clear) is never kept. A factory overrides
    /// it per entry with `EntryOptions::fail_safe_max_duration`. Default: none (off).
    #[serde(with = "humantime_serde")]
    pub fail_safe_max_duration: Option<Duration>,
    /// After fail-safe served an expired value, how long that value is served again as a
    /// live entry (`get` included) before the factory is tried again: a failing database is
    /// called about once per key per throttle, not by every request. `0s`: tried on every
    /// call. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub fail_safe_throttle: Duration,
    /// Longest a get-or-create waits for its load: past it the caller gets the fail-safe
    /// value if there is one, else `LoadError::Timeout`, and the factory is cancelled or
    /// left to finish per `hard_timeout_action`. A blocking caller running its own factory
    /// (`get_or_create_sync` leading the load) is not timed; one waiting for another's
    /// load is. Not zero. Default: none.
    #[serde(with = "humantime_serde")]
    pub hard_timeout: Option<Duration>,
    /// Soft timeout: when the key's expired value is kept for fail-safe and its load has not
    /// finished within this long, callers get that value while the load goes on and stores
    /// its result (unless an invalidation overlapped it). The detached loaders honour it for
    /// every caller; with the others, the caller that runs the factory in place waits for it.
    /// Per entry: `EntryOptions::soft_timeout`. Not zero, shorter than `hard_timeout`.
    /// Default: none.
    #[serde(with = "humantime_serde")]
    pub soft_timeout: Option<Duration>,
    /// What happens to a factory still running at `hard_timeout`: `cancel` (default) or
    /// `background` (it finishes and its value is stored; detached loaders only, the others
    /// cancel and log it once).
    pub hard_timeout_action: OnHardTimeout,
    /// Eager refresh, for the `get_or_create_detached*` loaders: once this fraction of an
    /// entry's absolute time to live has passed (0.8: after 48 s of a minute), the first hit
    /// starts one background reload while callers keep getting the current value, so hot
    /// keys do not all miss at once at expiry. Per entry: `EntryOptions::eager_refresh_threshold`.
    /// Strictly between 0 and 1. Default: none.
    pub eager_refresh_threshold: Option<f64>,
    /// How instances tell each other about invalidations.
    pub backplane: BackplaneOptions,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            enabled: true,
            time_to_idle: None,
            time_to_live: None,
            max_capacity: 10_000,
            max_weight: None,
            cache_none: true,
            purge_interval: Duration::from_secs(60),
            name: None,
            log_keys: false,
            fail_safe_max_duration: None,
            fail_safe_throttle: Duration::from_secs(30),
            hard_timeout: None,
            soft_timeout: None,
            hard_timeout_action: OnHardTimeout::Cancel,
            eager_refresh_threshold: None,
            backplane: BackplaneOptions::default(),
        }
    }
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

impl fmt::Debug for CacheOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheOptions")
            .field("enabled", &self.enabled)
            .field("time_to_idle", &self.time_to_idle)
            .field("time_to_live", &self.time_to_live)
            .field("max_capacity", &self.max_capacity)
            .field("max_weight", &self.max_weight)
            .field("cache_none", &self.cache_none)
            .field("purge_interval", &self.purge_interval)
            .field("name", &self.name)
            .field("log_keys", &self.log_keys)
            .field("fail_safe_max_duration", &self.fail_safe_max_duration)
            .field("fail_safe_throttle", &self.fail_safe_throttle)
            .field("hard_timeout", &self.hard_timeout)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout_action", &self.hard_timeout_action)
            .field("eager_refresh_threshold", &self.eager_refresh_threshold)
            .field("backplane", &self.backplane)
            .finish()
    }
}

/// What happens to a factory still running at `hard_timeout`. Its callers stop waiting
/// either way (they get the fail-safe value, else `LoadError::Timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHardTimeout {
    /// Cancel it: an async factory's future is dropped and nothing is stored. A blocking
    /// factory cannot be stopped: it finishes, and its value is stored. The default.
    #[default]
    Cancel,
    /// Let it finish and store its value (unless an invalidation overlapped the load). Only
    /// the `get_or_create_detached*` loaders' factories can outlive their caller; a load
    /// another loader leads is cancelled (logged once).
    Background,
}

impl From<OnHardTimeout> for nearcache_store::OnHardTimeout {
    fn from(action: OnHardTimeout) -> Self {
        match action {
            OnHardTimeout::Cancel => nearcache_store::OnHardTimeout::Cancel,
            OnHardTimeout::Background => nearcache_store::OnHardTimeout::Background,
        }
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

/// Backplane settings: how invalidations leave and reach this instance.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackplaneOptions {
    /// Redis URL, credentials allowed, used by `CacheBuilder::connect` with the `redis`
    /// feature. It is never printed: `Debug` shows it redacted. Default: none (no backplane
    /// unless one is given to the builder).
    ///
    /// * `redis://host:port` (`rediss://` for TLS): one node.
    /// * `redis+cluster://host1:port,host2:port,…` (`rediss+cluster://`): a Redis Cluster,
    ///   given by any of its nodes; the backplane uses sharded pub/sub on the primary that
    ///   serves the channel's slot and follows resharding and failovers.
    /// * `redis+sentinel://host1:port,host2:port,…/master-name` (`rediss+sentinel://`): the
    ///   primary the Sentinels name, followed through failovers.
    ///
    /// URLs, ACLs and what a failover costs: docs/operations.md (sections "Redis Cluster" and
    /// "Redis Sentinel").
    pub redis_url: Option<String>,
    /// Pub/sub channel. Every instance that shares data must use the same one. Default:
    /// `nearcache:{app}:invalidations` with `app` below.
    pub channel: Option<String>,
    /// Application name used in the default channel. Default `"default"`.
    pub app: String,
    /// How often an instance tells its peers its last sequence number, so a lost *last*
    /// message is noticed. Give every instance on a channel the same value. 1 ms to 1 day;
    /// default 5 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Longest a single publish may take before it counts as failed (and stays queued).
    /// Also bounds how long the async invalidation methods wait. Not zero; default 1 s.
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
    pub signing_key: Option<String>,
    /// During a key rotation, the old key: messages signed with it are still accepted, none
    /// are signed with it. When unset, `NEARCACHE_PREVIOUS_SIGNING_KEY` is used if present.
    /// Default: none.
    pub previous_signing_key: Option<String>,
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
    /// `replay_log_len` is 0; the in-memory bus when built `with_replay_log`): after a
    /// reconnect, a lagged queue, a dead subscription or a skipped log position, read what
    /// was missed and evict exactly those keys, and clear (per `on_loss`) only when the log
    /// cannot cover the gap. `false` ignores any log: every loss clears. Default `true`.
    pub replay: bool,
    /// Longest a repair may take (reading the log and applying it). Reads bypass the local
    /// cache while it runs; past this it gives up and clears instead. Not zero; default 5 s.
    #[serde(with = "humantime_serde")]
    pub replay_timeout: Duration,
    /// Redis only: how many payloads the replay log (a Redis Stream next to the channel)
    /// keeps, approximately (`XADD … MAXLEN ~ n`). 0 turns the log off (and with it replay:
    /// every loss clears). Size it to cover the longest outage to be repaired: messages
    /// published per second by the whole fleet (invalidation batches and heartbeats) times
    /// the outage in seconds. Default 100,000.
    pub replay_log_len: usize,
    /// First delay before retrying a failed publish or subscribe (and reconnecting to
    /// Redis); doubles up to `reconnect_max_delay`. Not zero; default 100 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial_delay: Duration,
    /// Longest delay between retries; at least `reconnect_initial_delay`. Default 5 s. A
    /// publish that invalidations wait on is retried at least every `publish_timeout` (or
    /// `reconnect_initial_delay`, if longer), so they go out within about that long once the
    /// backplane is back.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Redis only: how long connecting (TCP, TLS, `HELLO`/`AUTH`, a first `PING`) may take, at
    /// `CacheBuilder::connect` and for each reconnection attempt.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Redis only: how often the subscribing connection is pinged, so a connection that died
    /// silently (a network partition) is noticed within this plus `publish_timeout`.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Redis only: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7.0). Every instance on
    /// the channel must agree. Default `false`.
    pub sharded: bool,
    /// Redis only: messages buffered between the subscribing connection and the cache; past
    /// it they are dropped and this instance clears itself (cause `lagged`). Default 1,024.
    pub subscriber_queue: usize,
    /// Redis only: a PEM file with the certificate authority of a `rediss://` server with a
    /// private CA, read at `CacheBuilder::connect`. Default: none (the
    /// Mozilla root certificates).
    pub tls_ca_file: Option<PathBuf>,
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
        let Some(current) = self
            .signing_key
            .clone()
            .or_else(|| from_env("NEARCACHE_SIGNING_KEY"))
        else {
            return Ok(None);
        };
        let previous = self
            .previous_signing_key
            .clone()
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

    /// The channel in use: `channel`, or `nearcache:{app}:invalidations`.
    pub fn channel_name(&self) -> String {
        match &self.channel {
            Some(channel) => channel.clone(),
            None => format!("nearcache:{}:invalidations", self.app),
        }
    }
}

impl Default for BackplaneOptions {
    fn default() -> Self {
        BackplaneOptions {
            redis_url: None,
            channel: None,
            app: "default".to_owned(),
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
            replay_log_len: 100_000,
            reconnect_initial_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            sharded: false,
            subscriber_queue: 1024,
            tls_ca_file: None,
        }
    }
}

impl fmt::Debug for BackplaneOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackplaneOptions")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("channel", &self.channel_name())
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("publish_timeout", &self.publish_timeout)
            .field("heartbeat_echo_intervals", &self.heartbeat_echo_intervals)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "***"))
            .field(
                "previous_signing_key",
                &self.previous_signing_key.as_ref().map(|_| "***"),
            )
            .field("outbox_capacity", &self.outbox_capacity)
            .field("max_batch", &self.max_batch)
            .field("max_staleness", &self.max_staleness)
            .field("on_loss", &self.on_loss)
            .field("replay", &self.replay)
            .field("replay_timeout", &self.replay_timeout)
            .field("replay_log_len", &self.replay_log_len)
            .field("reconnect_initial_delay", &self.reconnect_initial_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("sharded", &self.sharded)
            .field("subscriber_queue", &self.subscriber_queue)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`; anything without credentials as is.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string(&CacheOptions::default()).unwrap();
        let back: CacheOptions = toml::from_str(&text).unwrap();
        assert_eq!(back, CacheOptions::default());
    }

    #[test]
    fn the_former_expiration_names_still_load() {
        let old: CacheOptions =
            toml::from_str("sliding_expiration = \"15m\"\nabsolute_expiration = \"1h\"\n").unwrap();
        let new: CacheOptions =
            toml::from_str("time_to_idle = \"15m\"\ntime_to_live = \"1h\"\n").unwrap();
        assert_eq!(old, new);
        assert_eq!(
            (new.time_to_idle, new.time_to_live),
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
        assert!(
            toml::from_str::<CacheOptions>("time_to_idle = \"1m\"\nsliding_expiration = \"2m\"\n")
                .is_err()
        );
        // Written out, only the new names appear.
        let text = toml::to_string(&new).unwrap();
        assert!(
            text.contains("time_to_idle") && !text.contains("sliding_expiration"),
            "{text}"
        );
    }

    #[test]
    fn human_durations_and_unknown_fields() {
        let options: CacheOptions = toml::from_str(
            "time_to_live = \"1h 30m\"\n[backplane]\npublish_timeout = \"250ms\"\non_loss = \"none\"\n",
        )
        .unwrap();
        assert_eq!(options.time_to_live, Some(Duration::from_secs(5400)));
        assert_eq!(
            options.backplane.publish_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(options.backplane.on_loss, LossPolicy::None);
        let err = toml::from_str::<CacheOptions>("max_capacty = 5").unwrap_err();
        assert!(err.to_string().contains("max_capacty"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let options = BackplaneOptions {
            redis_url: Some("redis://app:hunter2@127.0.0.1:6379/0".into()),
            ..BackplaneOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://app:***@127.0.0.1:6379/0"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn out_of_range_backplane_options_are_named() {
        assert!(BackplaneOptions::default().check().is_ok());
        type Spoil = fn(&mut BackplaneOptions);
        let cases: [(&str, Spoil); 7] = [
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
            options.fail_safe_max_duration,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(options.fail_safe_throttle, Duration::from_secs(10));
        assert_eq!(options.hard_timeout, Some(Duration::from_millis(1500)));
        let options: CacheOptions = toml::from_str(
            "soft_timeout = \"100ms\"\nhard_timeout = \"2s\"\nhard_timeout_action = \"background\"\n",
        )
        .unwrap();
        assert_eq!(options.soft_timeout, Some(Duration::from_millis(100)));
        assert_eq!(options.hard_timeout_action, OnHardTimeout::Background);
        let defaults = CacheOptions::default();
        assert_eq!(
            defaults.fail_safe_max_duration, None,
            "fail-safe is off by default"
        );
        assert_eq!(defaults.fail_safe_throttle, Duration::from_secs(30));
        assert_eq!(defaults.soft_timeout, None);
        assert_eq!(defaults.hard_timeout_action, OnHardTimeout::Cancel);
    }

    #[test]
    fn default_channel_is_namespaced_by_app() {
        let mut options = BackplaneOptions::default();
        assert_eq!(options.channel_name(), "nearcache:default:invalidations");
        options.app = "shop".into();
        assert_eq!(options.channel_name(), "nearcache:shop:invalidations");
        options.channel = Some("custom".into());
        assert_eq!(options.channel_name(), "custom");
    }
}
