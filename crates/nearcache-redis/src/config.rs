//! [`RedisConfig`]: everything a [`RedisBackplane`](crate::RedisBackplane) needs to know,
//! with defaults that suit one Redis node on a local network.

use std::fmt;
use std::time::Duration;

use crate::redact::RedactedUrl;

/// The application name used in the default channel when none is given.
pub const DEFAULT_APP: &str = "default";

/// The channel every instance of application `app` publishes and subscribes on:
/// `nearcache:{app}:invalidations`.
///
/// Give each application (each set of instances that must stay coherent with each other) its
/// own name, so two applications sharing one Redis do not evict each other's entries.
///
/// ```
/// assert_eq!(nearcache_redis::channel_for_app("shop"), "nearcache:shop:invalidations");
/// ```
pub fn channel_for_app(app: &str) -> String {
    format!("nearcache:{app}:invalidations")
}

/// How a [`RedisBackplane`](crate::RedisBackplane) connects, publishes and reconnects.
///
/// A plain struct: build it with [`RedisConfig::new`] or [`RedisConfig::for_app`] and change
/// fields with struct update syntax. Every field's default is listed on the field.
///
/// ```
/// use std::time::Duration;
/// use nearcache_redis::RedisConfig;
///
/// let config = RedisConfig {
///     url: "redis://cache.internal:6379".to_owned(),
///     publish_timeout: Duration::from_millis(250),
///     ..RedisConfig::for_app("shop")
/// };
/// assert_eq!(config.channel, "nearcache:shop:invalidations");
/// ```
///
/// The `Debug` output never shows the password of the URL:
///
/// ```
/// let config = nearcache_redis::RedisConfig::new("redis://app:s3cret@10.0.0.5:6379");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// Where Redis is. One of:
    ///
    /// * `redis://[user][:password@]host[:port][/db]`, or `rediss://…` for TLS: one node;
    /// * `redis+cluster://[user][:password@]host1[:port],host2[:port],…` (`rediss+cluster://`
    ///   for TLS): a Redis Cluster, given by any of its nodes (port 6379 by default). The
    ///   backplane publishes with `SPUBLISH` and subscribes with `SSUBSCRIBE` on the primary
    ///   that owns the channel's hash slot, and follows the slot when it moves or fails over
    ///   ([`sharded`](Self::sharded) is implied);
    /// * `redis+sentinel://[user][:password@]host1[:port],…/master-name`
    ///   (`rediss+sentinel://`): the primary that the Sentinels (port 26379 by default) name
    ///   `master-name`, followed through failovers. The credentials are the data nodes'; the
    ///   Sentinels are asked without.
    ///
    /// The user and password are sent with `AUTH` (ACL user when a user is given). TLS needs
    /// the crate's `tls` feature. Default: `redis://127.0.0.1:6379`.
    ///
    /// ```
    /// let config = nearcache_redis::RedisConfig {
    ///     url: "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000".to_owned(),
    ///     ..nearcache_redis::RedisConfig::for_app("shop")
    /// };
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    pub url: String,
    /// The pub/sub channel. Default: [`channel_for_app`]`("default")`, that is
    /// `nearcache:default:invalidations`; use [`RedisConfig::for_app`] to name yours.
    pub channel: String,
    /// How long connecting (TCP, TLS, `HELLO`/`AUTH` and a first `PING`) may take, at
    /// [`connect`](crate::RedisBackplane::connect_with) and for each reconnection attempt.
    /// Default: 5 s.
    pub connect_timeout: Duration,
    /// How long one `PUBLISH` may wait for Redis's acknowledgement before it fails with
    /// [`BackplaneError::Timeout`](nearcache_backplane::BackplaneError::Timeout). Also bounds
    /// the subscriber's liveness `PING`. Default: 1 s.
    pub publish_timeout: Duration,
    /// The subscriber's delays between reconnection attempts. Default: see
    /// [`ReconnectBackoff`].
    pub reconnect: ReconnectBackoff,
    /// How often the subscriber sends `PING` on its connection to notice a connection that died
    /// without closing (a half-open TCP connection gives no other sign). One `PING` per interval
    /// per instance. Default: 1 s.
    pub ping_interval: Duration,
    /// Use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7.0) instead of `PUBLISH`/`SUBSCRIBE`.
    ///
    /// On a Redis Cluster, sharded pub/sub routes the channel to the one shard that owns its
    /// hash slot instead of broadcasting every message across the whole cluster bus. With a
    /// `redis+cluster://` [`url`](Self::url) it is always on, and the backplane finds and
    /// follows the shard; with a one-node URL it talks to that node only (no `MOVED`
    /// following). On a single node it behaves exactly like classic pub/sub. Publishers and subscribers of one channel must agree on this switch:
    /// sharded and classic pub/sub do not see each other's messages. Default: `false`.
    pub sharded: bool,
    /// How many events the [`Subscription`](nearcache_backplane::Subscription) buffers before
    /// it drops messages and reports [`Lagged`](nearcache_backplane::BackplaneEvent::Lagged)
    /// (which makes the cache clear itself). Default: 1024.
    pub subscriber_queue: usize,
    /// The largest payload `publish` accepts, in bytes; larger ones fail with
    /// [`BackplaneError::TooLarge`](nearcache_backplane::BackplaneError::TooLarge) without
    /// being sent. Redis disconnects a subscriber whose output buffer passes
    /// `client-output-buffer-limit pubsub` (32 MiB hard limit by default), so one huge
    /// message would cut every subscriber off. With the `nearcache` facade keep it at least
    /// the wire format's largest message (1 MiB, `WireLimits::DEFAULT`): a batch refused here
    /// reaches the peers as a clear instead of its invalidations. Default: 1 MiB.
    pub max_payload: usize,
    /// PEM certificates of the certificate authority that signed the server's certificate,
    /// for `rediss://` servers with a private CA. `None` trusts the Mozilla root
    /// certificates (webpki-roots). Needs the `tls` feature. Default: `None`.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// How many payloads the replay log keeps, approximately (`XADD … MAXLEN ~ n`): a Redis
    /// Stream `{channel}:log` (plus a small hash `{channel}:log:head`) on the channel's hash
    /// slot, appended by the same script that publishes. With it, an instance that lost
    /// messages reads exactly those back instead of clearing its cache; 0 turns it off
    /// (plain `PUBLISH`, every loss clears). Each entry costs about its payload plus ~100
    /// bytes of Redis memory. Default: 100,000.
    pub replay_log_len: usize,
}

impl RedisConfig {
    /// The default configuration with `url` as the server.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The default configuration with the channel of application `app`
    /// (`nearcache:{app}:invalidations`, see [`channel_for_app`]).
    pub fn for_app(app: &str) -> Self {
        Self {
            channel: channel_for_app(app),
            ..Self::default()
        }
    }

    /// The URL with its password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> RedactedUrl {
        RedactedUrl::new(&self.url)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            channel: channel_for_app(DEFAULT_APP),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(1),
            reconnect: ReconnectBackoff::default(),
            ping_interval: Duration::from_secs(1),
            sharded: false,
            subscriber_queue: 1024,
            max_payload: 1024 * 1024,
            tls_ca_pem: None,
            replay_log_len: 100_000,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("channel", &self.channel)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("reconnect", &self.reconnect)
            .field("ping_interval", &self.ping_interval)
            .field("sharded", &self.sharded)
            .field("subscriber_queue", &self.subscriber_queue)
            .field("max_payload", &self.max_payload)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .field("replay_log_len", &self.replay_log_len)
            .finish()
    }
}

/// Exponential backoff between the subscriber's reconnection attempts.
///
/// Attempt `n` (from 0) waits `min(max, initial × 2ⁿ)`, shortened by a random fraction of up
/// to `jitter` so that many instances do not reconnect to a restarted Redis in lockstep.
/// The delay starts again from `initial` after a successful reconnection. No delay is shorter
/// than 10 ms, whatever the policy says, so a dead server never meets a busy loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectBackoff {
    /// The delay before the first reconnection attempt. Default: 100 ms.
    pub initial: Duration,
    /// The longest delay between two attempts. Default: 5 s.
    pub max: Duration,
    /// The largest fraction (0.0–1.0) by which a delay is randomly shortened; 0.0 disables
    /// jitter. Values outside 0.0–1.0 are clamped. Default: 0.5.
    pub jitter: f64,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_channel_is_namespaced() {
        assert_eq!(
            RedisConfig::default().channel,
            "nearcache:default:invalidations"
        );
        assert_eq!(
            RedisConfig::for_app("shop").channel,
            "nearcache:shop:invalidations"
        );
    }

    #[test]
    fn new_keeps_the_other_defaults() {
        let config = RedisConfig::new("redis://10.1.2.3:7000");
        assert_eq!(config.url, "redis://10.1.2.3:7000");
        assert_eq!(
            RedisConfig {
                url: RedisConfig::default().url,
                ..config
            },
            RedisConfig::default()
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let config = RedisConfig::new("rediss://alice:hunter2@redis.example:6380/2");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("rediss://alice:***@redis.example:6380/2"),
            "{debug}"
        );
    }
}
