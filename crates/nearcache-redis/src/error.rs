//! [`RedisBackplaneError`]: why [`RedisBackplane::connect`](crate::RedisBackplane::connect)
//! failed, in terms of what to fix.
//!
//! Redis errors are classified here once (refused, timed out, bad credentials, ...) so the
//! rest of the crate and its users match on variants instead of parsing messages. No variant
//! holds a password: URLs are [`RedactedUrl`]s and server messages are scrubbed.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::redact::RedactedUrl;

/// Why a [`RedisBackplane`](crate::RedisBackplane) could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackplaneError {
    /// `connect` was called outside a tokio runtime.
    #[error(
        "the Redis backplane needs a tokio runtime: call connect from within one (#[tokio::main], \
         Runtime::block_on) with the time and I/O drivers enabled"
    )]
    NoRuntime,
    /// The URL could not be understood.
    #[error(
        "invalid Redis URL {url}: {reason}; expected redis://[user][:password@]host[:port][/db] \
         or rediss://... for TLS"
    )]
    InvalidUrl {
        /// The URL, password hidden.
        url: RedactedUrl,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting of the [`RedisConfig`](crate::RedisConfig) cannot work.
    #[error("invalid Redis backplane configuration: {reason}")]
    InvalidConfig {
        /// Which setting and why.
        reason: String,
    },
    /// The URL asks for TLS (`rediss://`) but the crate was built without TLS support.
    #[error(
        "{url} asks for TLS but nearcache-redis was built without it: enable the `tls` feature \
         of nearcache-redis, or use redis://"
    )]
    TlsNotEnabled {
        /// The URL, password hidden.
        url: RedactedUrl,
    },
    /// Nothing answered at the address (connection refused, no route, DNS failure, TLS
    /// handshake failure).
    #[error(
        "Redis at {addr} is unreachable: {reason}; check that it runs and that the address is right"
    )]
    Unreachable {
        /// The address, `host:port`.
        addr: String,
        /// What the operating system or TLS said.
        reason: String,
    },
    /// The TLS handshake failed: the server's certificate is not trusted or does not match
    /// the host, or the server does not speak TLS on that port.
    #[error(
        "TLS with Redis at {addr} failed: {reason}; check the server's certificate and the host \
         name in the URL (for a private CA, set RedisConfig::tls_ca_file or tls_ca_pem)"
    )]
    Tls {
        /// The address, `host:port`.
        addr: String,
        /// What rustls said.
        reason: String,
    },
    /// Redis refused the credentials: a wrong password or user, no password where one is
    /// required, or an ACL user without the permissions the backplane needs.
    #[error(
        "Redis at {addr} refused the credentials: {reason}; check the user and password in the URL \
         (redis://user:password@host) and that the ACL user may PING, PUBLISH and SUBSCRIBE \
         (SPUBLISH, SSUBSCRIBE and CLUSTER|SLOTS on a cluster; also ROLE behind Sentinel)"
    )]
    Auth {
        /// The address, `host:port`.
        addr: String,
        /// What Redis said, without the password.
        reason: String,
    },
    /// Connecting took longer than [`connect_timeout`](crate::RedisConfig::connect_timeout).
    #[error(
        "Redis at {addr} did not answer within {after:?}; check the address, firewalls and the server's load"
    )]
    Timeout {
        /// The address, `host:port`.
        addr: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// None of the seed nodes of a `redis+cluster://` URL, or none of the Sentinels of a
    /// `redis+sentinel://` URL, answered.
    #[error(
        "none of the Redis nodes {nodes} is reachable ({reasons}); check that they run and that \
         the addresses in the URL are right (any one reachable node is enough)"
    )]
    NoNodeReachable {
        /// The nodes given, `host:port,…`.
        nodes: String,
        /// What each one said, without the password.
        reasons: String,
    },
    /// The Redis Cluster answered, but no node serves the channel's hash slot.
    #[error(
        "no Redis Cluster node serves hash slot {slot} of channel {channel} (asked {asked}); \
         the cluster is missing primaries or is being resharded: check `redis-cli --cluster \
         check` and CLUSTER INFO"
    )]
    SlotNotServed {
        /// The channel's hash slot.
        slot: u16,
        /// The channel.
        channel: String,
        /// The nodes that answered.
        asked: String,
    },
    /// The Sentinels answered, but none knows a primary by the name at the end of the URL.
    #[error(
        "the Sentinels at {asked} know no primary named {master:?}; check the name at the end of \
         the URL (redis+sentinel://host:26379/<name>) against SENTINEL MASTERS"
    )]
    UnknownMaster {
        /// The name in the URL.
        master: String,
        /// The Sentinels that answered.
        asked: String,
    },
    /// Redis answered, but not as the backplane needs (for example a server older than 6.0
    /// without RESP3).
    #[error("Redis at {addr} cannot serve the backplane: {reason}")]
    Server {
        /// The address, `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// How a Redis error reads to a user of the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    Auth,
    Unreachable,
    Timeout,
    Config,
    Server,
}

pub(crate) fn classify(err: &RedisError) -> ErrorClass {
    match err.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return ErrorClass::Auth;
        }
        ErrorKind::InvalidClientConfig => return ErrorClass::Config,
        _ => {}
    }
    if matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
        return ErrorClass::Auth;
    }
    if err.is_timeout() {
        return ErrorClass::Timeout;
    }
    if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        return ErrorClass::Unreachable;
    }
    ErrorClass::Server
}

/// A Redis error's text with the password removed, should a server or library ever echo it.
pub(crate) fn describe(err: &RedisError, password: Option<&str>) -> String {
    scrub(err.to_string(), password)
}

pub(crate) fn scrub(text: String, password: Option<&str>) -> String {
    match password {
        Some(password) if !password.is_empty() && text.contains(password) => {
            text.replace(password, "***")
        }
        _ => text,
    }
}

impl RedisBackplaneError {
    /// The typed error for a Redis error met while connecting to `addr`.
    pub(crate) fn from_redis(
        err: &RedisError,
        addr: &str,
        url: &RedactedUrl,
        password: Option<&str>,
        timeout: Duration,
    ) -> Self {
        let reason = describe(err, password);
        let addr = addr.to_owned();
        match classify(err) {
            ErrorClass::Auth => Self::Auth { addr, reason },
            ErrorClass::Unreachable => Self::Unreachable { addr, reason },
            ErrorClass::Timeout => Self::Timeout {
                addr,
                after: timeout,
            },
            ErrorClass::Config => Self::InvalidUrl {
                url: url.clone(),
                reason,
            },
            ErrorClass::Server if err.kind() == ErrorKind::RESP3NotSupported => Self::Server {
                addr,
                reason: format!(
                    "{reason}; the backplane needs RESP3 (Redis 6.0 or newer, or a compatible server)"
                ),
            },
            ErrorClass::Server => Self::Server { addr, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_redis_errors() {
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert_eq!(classify(&io), ErrorClass::Unreachable);
        let auth: RedisError = (ErrorKind::AuthenticationFailed, "nope").into();
        assert_eq!(classify(&auth), ErrorClass::Auth);
        let config: RedisError = (ErrorKind::InvalidClientConfig, "bad").into();
        assert_eq!(classify(&config), ErrorClass::Config);
        let timeout: RedisError = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert_eq!(classify(&timeout), ErrorClass::Timeout);
    }

    #[test]
    fn scrub_removes_the_password() {
        assert_eq!(
            scrub("bad pw hunter2 here".to_owned(), Some("hunter2")),
            "bad pw *** here"
        );
        assert_eq!(scrub("same".to_owned(), Some("")), "same");
        assert_eq!(scrub("same".to_owned(), None), "same");
    }

    #[test]
    fn messages_say_what_to_do() {
        let err = RedisBackplaneError::TlsNotEnabled {
            url: RedactedUrl::new("rediss://u:secret@h"),
        };
        let text = err.to_string();
        assert!(text.contains("`tls` feature"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let err = RedisBackplaneError::Auth {
            addr: "h:1".to_owned(),
            reason: "WRONGPASS".to_owned(),
        };
        assert!(err.to_string().contains("check the user and password"));
    }
}
