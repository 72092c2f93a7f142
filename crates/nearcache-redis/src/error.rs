//! [`RedisBackplaneError`]: why [`RedisBackplane::connect`](crate::RedisBackplane::connect)
//! failed, in terms of what to fix.
//!
//! Redis errors are classified here once (refused, timed out, bad credentials, ...) so the
//! rest of the crate and its users match on variants instead of parsing messages. No variant
//! holds a password: URLs are [`RedactedUrl`]s and server messages are scrubbed.

use std::fmt;
use std::time::Duration;

use nearcache_backplane::BackplaneError;
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
        /// What redis-rs said of it, when it was redis-rs that refused it.
        #[source]
        source: Option<RedisCause>,
    },
    /// A setting of the [`RedisConfig`](crate::RedisConfig) cannot work.
    #[error("invalid Redis backplane configuration: {reason}")]
    InvalidConfig {
        /// Which setting and why.
        reason: String,
    },
    /// [`tls_ca_file`](crate::RedisConfig::tls_ca_file) could not be read; the I/O error
    /// is the `source()`.
    #[error("cannot read tls_ca_file {}; it must name a readable PEM file", path.display())]
    TlsCaFile {
        /// The file named.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
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
    /// Nothing answered at the address (connection refused, no route, DNS failure).
    #[error("Redis at {addr} is unreachable; check that it runs and that the address is right")]
    Unreachable {
        /// The address, `host:port`.
        addr: String,
        /// What the operating system said, through redis-rs.
        #[source]
        source: RedisCause,
    },
    /// The TLS handshake failed: the server's certificate is not trusted or does not match
    /// the host, or the server does not speak TLS on that port.
    #[error(
        "TLS with Redis at {addr} failed; check the server's certificate and the host name in \
         the URL (for a private CA, set RedisConfig::tls_ca_file or tls_ca_pem)"
    )]
    Tls {
        /// The address, `host:port`.
        addr: String,
        /// What rustls said, through redis-rs.
        #[source]
        source: RedisCause,
    },
    /// Redis refused the credentials: a wrong password or user, no password where one is
    /// required, or an ACL user without the permissions the backplane needs.
    #[error(
        "Redis at {addr} refused the credentials; check the user and password in the URL \
         (redis://user:password@host) and that the ACL user may PING, PUBLISH and SUBSCRIBE \
         (SPUBLISH, SSUBSCRIBE and CLUSTER|SLOTS on a cluster; also ROLE behind Sentinel)"
    )]
    Auth {
        /// The address, `host:port`.
        addr: String,
        /// What Redis said, without the password.
        #[source]
        source: RedisCause,
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
    ///
    /// Several nodes failed, each for its own reason, and an error has one `source()`: the
    /// reasons are in the text.
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
        /// What went wrong, and what to do.
        reason: String,
        /// What Redis answered, when it answered with an error.
        #[source]
        source: Option<RedisCause>,
    },
}

/// What Redis, or the network or TLS layer under it, said: the `source()` of a
/// [`RedisBackplaneError`], and of the backplane's
/// [`BackplaneError::Unavailable`](nearcache_backplane::BackplaneError::Unavailable).
///
/// It displays as redis-rs' own error, except that a password the server or the library
/// echoed is replaced by `***` (and the chain below it is then cut, as it may hold the
/// password too). Where redis-rs only wraps an I/O or TLS error and displays as that error,
/// `source()` skips to what is under it, so an error reporter that walks the chain
/// (`anyhow`, `eyre`) prints the operating system's words once.
#[derive(Clone)]
pub struct RedisCause {
    error: RedisError,
    /// The error's text with the password replaced, when the text held it.
    scrubbed: Option<String>,
}

impl RedisCause {
    /// `error`, with `password` to keep out of its text.
    pub(crate) fn new(error: RedisError, password: Option<&str>) -> Self {
        let text = error.to_string();
        let scrubbed = scrub(text.clone(), password);
        let scrubbed = (scrubbed != text).then_some(scrubbed);
        Self { error, scrubbed }
    }

    /// redis-rs' error, to match on its [`kind`](RedisError::kind) or
    /// [`code`](RedisError::code). Its own text is not scrubbed of the password.
    #[must_use]
    pub fn redis_error(&self) -> &RedisError {
        &self.error
    }
}

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scrubbed {
            Some(text) => f.write_str(text),
            None => fmt::Display::fmt(&self.error, f),
        }
    }
}

impl fmt::Debug for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisCause");
        match &self.scrubbed {
            Some(text) => debug.field("kind", &self.error.kind()).field("text", text),
            None => debug.field("error", &self.error),
        };
        debug.finish()
    }
}

impl std::error::Error for RedisCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.scrubbed.is_some() {
            return None;
        }
        let below = std::error::Error::source(&self.error)?;
        // redis-rs displays a wrapped I/O or TLS error as that error: skip to what is under
        // it, or the same words would stand twice in the chain.
        if below.to_string() == self.error.to_string() {
            below.source()
        } else {
            Some(below)
        }
    }
}

/// A publish or subscription that failed below the backplane: what failed, and the error
/// that made it fail, kept whole to become the `source()` of a
/// [`BackplaneError::Unavailable`].
#[derive(Debug)]
pub(crate) struct Failure {
    what: String,
    why: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Failure {
    /// A failure of our own making (a timeout of ours, a reply we cannot read).
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            why: None,
        }
    }

    /// `what` failed because of `why`.
    pub(crate) fn because(
        what: impl Into<String>,
        why: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            why: Some(Box::new(why)),
        }
    }

    /// The error a caller of the backplane gets.
    pub(crate) fn into_unavailable(self) -> BackplaneError {
        match self.why {
            Some(why) => BackplaneError::unavailable_because(self.what, why),
            None => BackplaneError::unavailable(self.what),
        }
    }
}

/// For logs: what failed and the whole chain of why, on one line.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        match &self.why {
            Some(why) => write!(f, ": {}", Chain(why.as_ref())),
            None => Ok(()),
        }
    }
}

/// An error and every error under it, `: `-joined on one line, for logs (whose fields show
/// one text, not a chain).
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut below = self.0.source();
        while let Some(err) = below {
            write!(f, ": {err}")?;
            below = err.source();
        }
        Ok(())
    }
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
    /// The typed error for a Redis error met while connecting to `addr` (over TLS when
    /// `is_tls`).
    pub(crate) fn from_redis(
        err: &RedisError,
        addr: &str,
        is_tls: bool,
        url: &RedactedUrl,
        password: Option<&str>,
        timeout: Duration,
    ) -> Self {
        let source = RedisCause::new(err.clone(), password);
        let addr = addr.to_owned();
        match classify(err) {
            ErrorClass::Auth => Self::Auth { addr, source },
            ErrorClass::Unreachable if is_tls && looks_like_tls(&source.to_string()) => {
                Self::Tls { addr, source }
            }
            ErrorClass::Unreachable => Self::Unreachable { addr, source },
            ErrorClass::Timeout => Self::Timeout {
                addr,
                after: timeout,
            },
            ErrorClass::Config => Self::InvalidUrl {
                url: url.clone(),
                reason: "redis-rs cannot connect with these settings".to_owned(),
                source: Some(source),
            },
            ErrorClass::Server if err.kind() == ErrorKind::RESP3NotSupported => Self::Server {
                addr,
                reason: "the backplane needs RESP3 (Redis 6.0 or newer, or a compatible server)"
                    .to_owned(),
                source: Some(source),
            },
            ErrorClass::Server => Self::Server {
                addr,
                reason: "it answered with an error".to_owned(),
                source: Some(source),
            },
        }
    }
}

/// Whether an I/O error's text comes from the TLS layer (rustls reports certificate and
/// handshake failures as I/O errors).
fn looks_like_tls(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["certificate", "handshake", "tls", "alert"]
        .iter()
        .any(|word| reason.contains(word))
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
        let wrongpass: RedisError = (ErrorKind::AuthenticationFailed, "WRONGPASS").into();
        let err = RedisBackplaneError::Auth {
            addr: "h:1".to_owned(),
            source: RedisCause::new(wrongpass, None),
        };
        assert!(err.to_string().contains("check the user and password"));
    }

    #[test]
    fn tls_failures_are_recognised() {
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(looks_like_tls("received fatal alert: HandshakeFailure"));
        assert!(!looks_like_tls("Connection refused (os error 111)"));
    }

    #[test]
    fn a_cause_that_echoes_the_password_shows_it_nowhere() {
        let echo: RedisError = (ErrorKind::Io, "failed", "pw hunter2 echoed".to_owned()).into();
        let cause = RedisCause::new(echo, Some("hunter2"));
        assert!(cause.to_string().contains("pw *** echoed"), "{cause}");
        assert!(!format!("{cause:?}").contains("hunter2"), "{cause:?}");
        assert!(std::error::Error::source(&cause).is_none());
    }

    #[test]
    fn a_wrapped_io_error_stands_once_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let cause = RedisCause::new(io.into(), None);
        assert_eq!(cause.to_string(), "refused here");
        // redis-rs' error displays as the I/O error and has it as its source: skipped.
        assert!(std::error::Error::source(&cause).is_none());
    }
}
