//! [`Target`]: a validated [`RedisConfig`] turned into a `redis::Client`, plus what errors and
//! logs may show of it.
//!
//! Both connections are RESP3: the subscriber needs it (messages arrive as push frames on a
//! connection that can still answer `PING`, and `SSUBSCRIBE` works the same way as
//! `SUBSCRIBE`), and the publisher then notices a dropped connection from the driver's
//! disconnect push instead of from the next failing publish. RESP3 needs Redis 6.0 or newer.

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion};

use crate::config::RedisConfig;
use crate::error::{RedisBackplaneError, RedisCause};
use crate::redact::RedactedUrl;
use crate::topology::{self, Parsed, Topology};

/// Where and how to connect, checked once at `connect`.
pub(crate) struct Target {
    /// The client of the node given by the URL; for a cluster or Sentinel URL, of the first
    /// seed or Sentinel (used only to check the URL: connections go where
    /// [`resolve`](Self::resolve) says).
    pub(crate) client: redis::Client,
    /// `host:port` (the list of seeds or Sentinels for those URLs), for errors and logs.
    pub(crate) addr: String,
    pub(crate) url: RedactedUrl,
    pub(crate) parsed: Parsed,
    is_tls: bool,
    /// Kept only to scrub it from error texts.
    password: Option<String>,
    tls_ca_pem: Option<Vec<u8>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// Which seed or Sentinel to ask first (see `Target::resolve`).
    pub(crate) first_to_ask: AtomicUsize,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A client for one node, and what errors may show of it.
pub(crate) struct Node {
    pub(crate) client: redis::Client,
    /// `host:port`.
    pub(crate) addr: String,
    is_tls: bool,
    password: Option<String>,
}

impl Target {
    /// Validates `config` and builds the client. Does not connect.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, RedisBackplaneError> {
        let url = config.redacted_url();
        check_settings(config)?;
        let tls_ca_pem = config.tls_ca()?;
        let parsed = topology::parse(&config.url, &config.channel_name()).map_err(|reason| {
            RedisBackplaneError::InvalidUrl {
                url: url.clone(),
                reason,
                source: None,
            }
        })?;
        let wants_tls = parsed.is_tls() || has_tls_scheme(&config.url);
        if wants_tls && !cfg!(feature = "tls") {
            return Err(RedisBackplaneError::TlsNotEnabled { url });
        }
        if tls_ca_pem.is_some() && !wants_tls {
            return Err(RedisBackplaneError::InvalidConfig {
                reason: format!(
                    "a TLS CA (tls_ca_file or tls_ca_pem) is set but {url} is not a rediss:// URL"
                ),
            });
        }
        let invalid = |cause: RedisCause| RedisBackplaneError::InvalidUrl {
            url: url.clone(),
            reason: "redis-rs does not accept it".to_owned(),
            source: Some(cause),
        };
        let (first, addr, password) = match &parsed.topology {
            Topology::Single => {
                let node = open_node(&parsed.first, tls_ca_pem.clone(), true).map_err(invalid)?;
                let (addr, password) = (node.addr.clone(), node.password.clone());
                (node, addr, password)
            }
            Topology::Cluster { seeds: hosts, .. }
            | Topology::Sentinel {
                sentinels: hosts, ..
            } => {
                // Parse one data node's URL for the credentials, and the first host's.
                let sample = open_node(&parsed.node_url(&hosts[0]), None, true).map_err(invalid)?;
                let first = match &parsed.topology {
                    Topology::Sentinel { .. } => {
                        open_node(&parsed.first, tls_ca_pem.clone(), false)
                    }
                    _ => open_node(&parsed.first, tls_ca_pem.clone(), true),
                }
                .map_err(invalid)?;
                (first, hosts.join(","), sample.password)
            }
        };
        Ok(Self {
            client: first.client,
            addr,
            url,
            parsed,
            is_tls: first.is_tls,
            password,
            tls_ca_pem,
            connect_timeout: config.connect_timeout,
            command_timeout: config.publish_timeout,
            first_to_ask: AtomicUsize::new(0),
        })
    }

    /// The node of a one-node URL.
    pub(crate) fn single_node(&self) -> Node {
        Node {
            client: self.client.clone(),
            addr: self.addr.clone(),
            is_tls: self.is_tls,
            password: self.password.clone(),
        }
    }

    /// A client for data node `host:port`, with the URL's credentials and RESP3.
    pub(crate) fn data_node(&self, host_port: &str) -> Result<Node, String> {
        self.node_at(&self.parsed.node_url(host_port), true)
    }

    /// A client for Sentinel `host:port` (no credentials, RESP2).
    pub(crate) fn sentinel_node(&self, host_port: &str) -> Result<Node, String> {
        self.node_at(&self.parsed.sentinel_url(host_port), false)
    }

    /// A client for the node of `url`; `Err` is what redis-rs said, password scrubbed.
    fn node_at(&self, url: &str, resp3: bool) -> Result<Node, String> {
        open_node(url, self.tls_ca_pem.clone(), resp3).map_err(|cause| cause.to_string())
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The typed connect error for `err` met at data node `node` (for a one-node URL,
    /// [`single_node`](Self::single_node)).
    pub(crate) fn node_error(
        &self,
        node: &Node,
        err: &redis::RedisError,
        timeout: Duration,
    ) -> RedisBackplaneError {
        RedisBackplaneError::from_redis(
            err,
            &node.addr,
            node.is_tls,
            &self.url,
            self.password(),
            timeout,
        )
    }

    /// A one-line description of `err` for logs and [`BackplaneError`]s, password scrubbed.
    ///
    /// [`BackplaneError`]: nearcache_backplane::BackplaneError
    pub(crate) fn describe(&self, err: &redis::RedisError) -> String {
        crate::error::describe(err, self.password())
    }
}

/// Parses one node's URL and builds its client (RESP3 when `resp3`). `Err` is what redis-rs
/// said, password scrubbed.
fn open_node(url: &str, ca_pem: Option<Vec<u8>>, resp3: bool) -> Result<Node, RedisCause> {
    // redis-rs' URL errors name the part that is wrong, never the URL.
    let info = url
        .into_connection_info()
        .map_err(|err| RedisCause::new(err, None))?;
    let mut redis = info.redis_settings().clone();
    if resp3 {
        redis = redis.set_protocol(ProtocolVersion::RESP3);
    }
    let password = redis.password().map(str::to_owned);
    let info = info.set_redis_settings(redis);
    let addr = info.addr().to_string();
    let is_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let ca_pem = if is_tls { ca_pem } else { None };
    let client = build_client(info, is_tls, ca_pem)
        .map_err(|err| RedisCause::new(err, password.as_deref()))?;
    Ok(Node {
        client,
        addr,
        is_tls,
        password,
    })
}

fn has_tls_scheme(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

fn check_settings(config: &RedisConfig) -> Result<(), RedisBackplaneError> {
    let invalid = |reason: &str| {
        Err(RedisBackplaneError::InvalidConfig {
            reason: reason.to_owned(),
        })
    };
    if config.url.is_empty() {
        return invalid(
            "url is empty; set it to the Redis server, e.g. url = \"redis://redis.internal:6379\"",
        );
    }
    if config.channel.as_ref().is_some_and(String::is_empty) {
        return invalid(
            "channel is empty; leave it unset for the default, or use RedisConfig::for_app(\"your-app\")",
        );
    }
    if config.connect_timeout.is_zero() {
        return invalid("connect_timeout is zero; every connection attempt would time out");
    }
    if config.publish_timeout.is_zero() {
        return invalid("publish_timeout is zero; every publish would time out");
    }
    if config.ping_interval.is_zero() {
        return invalid("ping_interval is zero; use at least a few milliseconds");
    }
    if config.max_payload == 0 {
        return invalid("max_payload is zero; every publish would be refused");
    }
    Ok(())
}

#[cfg(feature = "tls")]
fn build_client(
    info: redis::ConnectionInfo,
    is_tls: bool,
    ca_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    if is_tls {
        crate::tls::ensure_crypto_provider();
    }
    match ca_pem {
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        None => redis::Client::open(info),
    }
}

#[cfg(not(feature = "tls"))]
fn build_client(
    info: redis::ConnectionInfo,
    _is_tls: bool,
    _ca_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    // `Target::new` refused rediss:// (and with it `tls_ca_pem`) already.
    redis::Client::open(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(config: RedisConfig) -> RedisBackplaneError {
        match Target::new(&config) {
            Ok(target) => panic!("expected an error, got {target:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn parses_a_url_with_credentials() {
        let target = Target::new(&RedisConfig::new("redis://bob:pw1@127.0.0.1:7001/3"))
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(target.addr, "127.0.0.1:7001");
        assert_eq!(target.password(), Some("pw1"));
        assert!(!format!("{target:?}").contains("pw1"));
    }

    #[test]
    fn invalid_urls_are_typed_and_redacted() {
        for url in [
            "http://u:topsecret@host",
            "redis://u:topsecret@",
            "not a url",
            "redis+cluster://u:topsecret@h1:99999",
            "redis+sentinel://u:topsecret@s1",
        ] {
            let err = error_of(RedisConfig::new(url));
            assert!(
                matches!(err, RedisBackplaneError::InvalidUrl { .. }),
                "{url}: {err:?}"
            );
            // Nowhere in the chain a reporter prints, nor in the debug output.
            let mut chain = format!("{err:?}");
            let mut at: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(err) = at {
                chain.push_str(&format!(" / {err}"));
                at = err.source();
            }
            assert!(!chain.contains("topsecret"), "{chain}");
        }
    }

    #[test]
    fn topology_urls_keep_the_nodes_and_hide_the_password() {
        let target = Target::new(&RedisConfig::new(
            "redis+cluster://app:pw1@127.0.0.1:7000,127.0.0.1:7001",
        ))
        .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(target.addr, "127.0.0.1:7000,127.0.0.1:7001");
        assert_eq!(target.password(), Some("pw1"));
        assert!(!format!("{target:?}").contains("pw1"));
        let node = target
            .data_node("10.0.0.9:7005")
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(node.addr, "10.0.0.9:7005");
        let target = Target::new(&RedisConfig::new("redis+sentinel://:pw2@s1,s2:5000/shop"))
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(target.addr, "s1:26379,s2:5000");
        assert_eq!(target.password(), Some("pw2"), "the data nodes' password");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_topologies_without_the_feature_name_the_feature() {
        for url in ["rediss+cluster://h1,h2", "rediss+sentinel://s1/name"] {
            let err = error_of(RedisConfig::new(url));
            assert!(
                matches!(err, RedisBackplaneError::TlsNotEnabled { .. }),
                "{url}: {err:?}"
            );
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_the_feature() {
        let err = error_of(RedisConfig::new("rediss://:pw@host:6380"));
        assert!(
            matches!(err, RedisBackplaneError::TlsNotEnabled { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("`tls` feature"), "{err}");
        let err = error_of(RedisConfig::new("REDISS://host"));
        assert!(matches!(err, RedisBackplaneError::TlsNotEnabled { .. }));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_build_a_client() {
        let target = Target::new(&RedisConfig::new("rediss://:pw@localhost:6380"))
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(target.addr, "localhost:6380");
    }

    #[test]
    fn ca_without_tls_is_a_config_error() {
        let err = error_of(RedisConfig {
            tls_ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..RedisConfig::default()
        });
        assert!(
            matches!(err, RedisBackplaneError::InvalidConfig { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_config_file_without_a_url_is_refused_not_sent_to_localhost() {
        let config: RedisConfig =
            toml::from_str("app = \"shop\"").unwrap_or_else(|e| panic!("{e}"));
        let err = error_of(config);
        assert!(
            matches!(&err, RedisBackplaneError::InvalidConfig { reason } if reason.contains("url")),
            "{err:?}"
        );
    }

    #[test]
    fn unusable_settings_are_refused() {
        let zero = std::time::Duration::ZERO;
        for config in [
            RedisConfig {
                channel: Some(String::new()),
                ..RedisConfig::default()
            },
            RedisConfig {
                connect_timeout: zero,
                ..RedisConfig::default()
            },
            RedisConfig {
                publish_timeout: zero,
                ..RedisConfig::default()
            },
            RedisConfig {
                ping_interval: zero,
                ..RedisConfig::default()
            },
            RedisConfig {
                max_payload: 0,
                ..RedisConfig::default()
            },
        ] {
            let err = error_of(config);
            assert!(
                matches!(err, RedisBackplaneError::InvalidConfig { .. }),
                "{err:?}"
            );
        }
    }
}
