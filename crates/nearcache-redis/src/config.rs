//! [`RedisConfig`]: everything a [`RedisBackplane`](crate::RedisBackplane) needs to know,
//! with defaults that suit one Redis node on a local network.
//!
//! The one definition of the Redis backplane's settings and their defaults. It deserializes
//! with serde (human durations such as `"5s"`), so the `nearcache` facade reads it as the
//! `[backplane.redis]` section of its configuration instead of keeping copies of these fields.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RedisBackplaneError;
use crate::redact::{RedactedUrl, RedisUrl};

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
/// fields with struct update syntax, or deserialize it (every field but [`url`](Self::url)
/// has a default, unknown fields are refused). Every field's default is listed on the field.
///
/// ```
/// use std::time::Duration;
/// use nearcache_redis::RedisConfig;
///
/// let config = RedisConfig {
///     url: "redis://cache.internal:6379".into(),
///     publish_timeout: Duration::from_millis(250),
///     ..RedisConfig::for_app("shop")
/// };
/// assert_eq!(config.channel_name(), "nearcache:shop:invalidations");
///
/// let read: RedisConfig = toml::from_str(r#"
///     url = "redis://cache.internal:6379"
///     app = "shop"
///     ping_interval = "500ms"
/// "#).unwrap();
/// assert_eq!(read.channel_name(), "nearcache:shop:invalidations");
/// assert_eq!(read.ping_interval, Duration::from_millis(500));
/// ```
///
/// The `Debug` output never shows the password of the URL:
///
/// ```
/// let config = nearcache_redis::RedisConfig::new("redis://app:s3cret@10.0.0.5:6379");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// the crate's `tls` feature. Never shown with its password (see [`RedisUrl`]). Default:
    /// `redis://127.0.0.1:6379` in Rust ([`RedisConfig::default`]); none in a config file: a
    /// file that names no `url` leaves it empty, and connecting refuses an empty URL, so a
    /// forgotten URL fails at startup instead of reaching whatever Redis listens on localhost.
    ///
    /// ```
    /// let config = nearcache_redis::RedisConfig {
    ///     url: "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000".into(),
    ///     ..nearcache_redis::RedisConfig::for_app("shop")
    /// };
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    #[serde(default = "RedisUrl::unset")]
    pub url: RedisUrl,
    /// The application name that names the default channel,
    /// [`channel_for_app`]`(app)`. Default [`DEFAULT_APP`] (`"default"`).
    pub app: String,
    /// The pub/sub channel, when it is not the application's default. Every instance that
    /// shares data must use the same one. Default: none, which means
    /// [`channel_for_app`]`(app)`; [`channel_name`](Self::channel_name) says which is used.
    pub channel: Option<String>,
    /// How long connecting (TCP, TLS, `HELLO`/`AUTH` and a first `PING`) may take, at
    /// [`connect`](crate::RedisBackplane::connect_with) and for each reconnection attempt.
    /// Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one `PUBLISH` may wait for Redis's acknowledgement before it fails with
    /// [`BackplaneError::Timeout`](nearcache_backplane::BackplaneError::Timeout). Also bounds
    /// the subscriber's liveness `PING`. Default: 1 s.
    ///
    /// Not read from configuration: the `nearcache` facade sets it from its backplane-wide
    /// `publish_timeout`, which also bounds how long its invalidations wait.
    #[serde(skip)]
    pub publish_timeout: Duration,
    /// The subscriber's delays between reconnection attempts. Default: see
    /// [`ReconnectBackoff`].
    ///
    /// Not read from configuration: the `nearcache` facade sets `initial` and `max` from its
    /// backplane-wide `reconnect_initial_delay` and `reconnect_max_delay`, which also pace its
    /// own retries.
    #[serde(skip)]
    pub reconnect: ReconnectBackoff,
    /// How often the subscriber sends `PING` on its connection to notice a connection that died
    /// without closing (a half-open TCP connection gives no other sign). One `PING` per interval
    /// per instance. Default: 1 s.
    #[serde(with = "humantime_serde")]
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
    /// A PEM file with the certificate authority that signed the server's certificate, for
    /// `rediss://` servers with a private CA; read at connect. Needs the `tls` feature.
    /// Default: none (the Mozilla root certificates, or [`tls_ca_pem`](Self::tls_ca_pem)).
    pub tls_ca_file: Option<PathBuf>,
    /// The same certificates given as PEM bytes instead of a file (not read from
    /// configuration). At most one of the two. `None` with no file trusts the Mozilla root
    /// certificates (webpki-roots). Default: `None`.
    #[serde(skip)]
    pub tls_ca_pem: Option<Vec<u8>>,
    /// How many payloads the replay log keeps, approximately (`XADD … MAXLEN ~ n`): a Redis
    /// Stream `{channel}:log` (plus a small hash `{channel}:log:head`) on the channel's hash
    /// slot, appended by the same script that publishes. With it, an instance that lost
    /// messages reads exactly those back instead of clearing its cache; 0 turns it off
    /// (plain `PUBLISH`, every loss clears). Each entry costs about its payload plus ~100
    /// bytes of Redis memory. Size it to cover the longest outage to be repaired: messages
    /// published per second by the whole fleet times the outage in seconds.
    /// Default: 100,000.
    pub replay_log_len: usize,
}

impl RedisConfig {
    /// The default configuration with `url` as the server.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: RedisUrl::new(url),
            ..Self::default()
        }
    }

    /// The default configuration with the channel of application `app`
    /// (`nearcache:{app}:invalidations`, see [`channel_for_app`]).
    pub fn for_app(app: &str) -> Self {
        Self {
            app: app.to_owned(),
            ..Self::default()
        }
    }

    /// The channel in use: [`channel`](Self::channel), else [`channel_for_app`]`(app)`.
    pub fn channel_name(&self) -> String {
        match &self.channel {
            Some(channel) => channel.clone(),
            None => channel_for_app(&self.app),
        }
    }

    /// The URL with its password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> RedactedUrl {
        self.url.redacted()
    }

    /// The CA certificates to trust: [`tls_ca_pem`](Self::tls_ca_pem), else the contents of
    /// [`tls_ca_file`](Self::tls_ca_file) (a few KiB, read once per connect).
    pub(crate) fn tls_ca(&self) -> Result<Option<Vec<u8>>, RedisBackplaneError> {
        match (&self.tls_ca_pem, &self.tls_ca_file) {
            (Some(_), Some(_)) => Err(RedisBackplaneError::InvalidConfig {
                reason: "both tls_ca_pem and tls_ca_file are set; give the CA one way".to_owned(),
            }),
            (Some(pem), None) => Ok(Some(pem.clone())),
            (None, Some(path)) => {
                std::fs::read(path)
                    .map(Some)
                    .map_err(|source| RedisBackplaneError::TlsCaFile {
                        path: path.clone(),
                        source,
                    })
            }
            (None, None) => Ok(None),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: RedisUrl::new("redis://127.0.0.1:6379"),
            app: DEFAULT_APP.to_owned(),
            channel: None,
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(1),
            reconnect: ReconnectBackoff::default(),
            ping_interval: Duration::from_secs(1),
            sharded: false,
            subscriber_queue: 1024,
            max_payload: 1024 * 1024,
            tls_ca_file: None,
            tls_ca_pem: None,
            replay_log_len: 100_000,
        }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_channel_is_namespaced_by_app() {
        assert_eq!(
            RedisConfig::default().channel_name(),
            "nearcache:default:invalidations"
        );
        let shop = RedisConfig::for_app("shop");
        assert_eq!(shop.channel_name(), "nearcache:shop:invalidations");
        let custom = RedisConfig {
            channel: Some("custom".into()),
            ..shop
        };
        assert_eq!(custom.channel_name(), "custom");
    }

    #[test]
    fn a_config_file_reads_every_setting_and_refuses_unknown_ones() {
        let config: RedisConfig = toml::from_str(
            r#"
            url = "rediss://app:pw@redis.internal:6380/1"
            app = "shop"
            channel = "custom"
            connect_timeout = "1500ms"
            ping_interval = "300ms"
            sharded = true
            subscriber_queue = 99
            max_payload = 2048
            tls_ca_file = "/etc/ssl/redis/ca.pem"
            replay_log_len = 7
            "#,
        )
        .unwrap();
        assert_eq!(
            config,
            RedisConfig {
                url: "rediss://app:pw@redis.internal:6380/1".into(),
                app: "shop".into(),
                channel: Some("custom".into()),
                connect_timeout: Duration::from_millis(1500),
                ping_interval: Duration::from_millis(300),
                sharded: true,
                subscriber_queue: 99,
                max_payload: 2048,
                tls_ca_file: Some("/etc/ssl/redis/ca.pem".into()),
                replay_log_len: 7,
                ..RedisConfig::default()
            }
        );
        // Written out, the password is redacted (as in `Debug`); the rest reads back the same.
        let text = toml::to_string(&config).unwrap();
        assert!(!text.contains(":pw@"), "{text}");
        assert_eq!(
            toml::from_str::<RedisConfig>(&text).unwrap(),
            RedisConfig {
                url: "rediss://app:***@redis.internal:6380/1".into(),
                ..config
            }
        );
        let unknown = toml::from_str::<RedisConfig>("redis_url = \"redis://h\"").unwrap_err();
        assert!(unknown.to_string().contains("redis_url"), "{unknown}");
    }

    #[test]
    fn a_ca_file_is_read_and_a_missing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("nearcache-redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let from_file = RedisConfig {
            tls_ca_file: Some(ca.clone()),
            ..RedisConfig::default()
        };
        let read = from_file.tls_ca();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            read.unwrap(),
            Some(b"-----BEGIN CERTIFICATE-----\n".to_vec())
        );
        let missing = RedisConfig {
            tls_ca_file: Some("/nonexistent/nearcache/ca.pem".into()),
            ..RedisConfig::default()
        };
        let err = missing.tls_ca().unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/nearcache/ca.pem"),
            "{err}"
        );
        let both = RedisConfig {
            tls_ca_pem: Some(Vec::new()),
            ..missing
        };
        assert!(matches!(
            both.tls_ca(),
            Err(RedisBackplaneError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn an_unreadable_ca_file_keeps_the_io_error_as_its_source_and_says_it_once() {
        let missing = RedisConfig {
            tls_ca_file: Some("/nonexistent/nearcache/ca.pem".into()),
            ..RedisConfig::default()
        };
        let err = missing.tls_ca().unwrap_err();
        let source = std::error::Error::source(&err)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(source, Some(std::io::ErrorKind::NotFound), "{err:?}");
        let io_text = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let shown = err.to_string();
        assert!(
            shown.contains("/nonexistent/nearcache/ca.pem") && !shown.contains("os error"),
            "{shown} (the io error {io_text} is the source, not part of the text)"
        );
    }

    #[test]
    fn new_keeps_the_other_defaults() {
        let config = RedisConfig::new("redis://10.1.2.3:7000");
        assert_eq!(config.url.as_str(), "redis://10.1.2.3:7000");
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
