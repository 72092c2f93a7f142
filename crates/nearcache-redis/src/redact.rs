//! [`RedactedUrl`]: a Redis URL that can be logged, because its password is gone; and
//! [`RedisUrl`], the URL itself, whose `Debug` shows only the redacted form.
//!
//! Every message, log line and `Debug` output of nearcache shows URLs through these types, so
//! a password given in `redis://user:password@host` never leaves the process by accident.
//! This is the one place that knows how to redact a URL.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// A Redis URL as given, password included: what the backplane connects with.
///
/// It holds a secret, so it shows itself only redacted: its `Debug` is the
/// [`RedactedUrl`]'s, it has no `Display`, and it serializes redacted too (a configuration
/// written out, for a "show me my configuration" endpoint or a JSON log line, does not carry
/// the password). It deserializes from the plain string, and dereferences to the full text
/// for code that needs it ([`as_str`](Self::as_str)): that is how to ask for the password.
///
/// ```
/// use nearcache_redis::RedisUrl;
///
/// let url = RedisUrl::from("redis://app:s3cret@10.0.0.5:6379");
/// assert_eq!(format!("{url:?}"), "\"redis://app:***@10.0.0.5:6379\"");
/// assert_eq!(url.as_str(), "redis://app:s3cret@10.0.0.5:6379");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.redacted().as_str())
    }
}

impl RedisUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// No URL: what a config file that names none reads as. Connecting refuses it.
    pub(crate) fn unset() -> Self {
        Self(String::new())
    }

    /// The URL as given, password included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> RedactedUrl {
        RedactedUrl::new(&self.0)
    }
}

impl Deref for RedisUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// A Redis URL with the password replaced by `***`; safe to log and show.
///
/// Everything between `://` and the last `@` is the user information: a `user:password`
/// keeps the user and hides the password; anything without a `:` is hidden whole (some write
/// `redis://password@host`). The rest of the URL is kept, so the address stays visible.
///
/// ```
/// use nearcache_redis::RedactedUrl;
///
/// let url = RedactedUrl::new("redis://app:s3cret@10.0.0.5:6379/1");
/// assert_eq!(url.to_string(), "redis://app:***@10.0.0.5:6379/1");
/// assert_eq!(RedactedUrl::new("redis://localhost").to_string(), "redis://localhost");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `url`. Works on any text, parseable or not, so an invalid URL can still be
    /// shown in an error.
    pub fn new(url: &str) -> Self {
        let (scheme, rest) = match url.find("://") {
            Some(at) => url.split_at(at + 3),
            None => ("", url),
        };
        // The last `@` ends the user information: a raw `@` or `/` in a password then still
        // falls inside the hidden part (over-redacting an odd URL beats leaking a password).
        let Some(at) = rest.rfind('@') else {
            return Self(url.to_owned());
        };
        let (userinfo, host) = rest.split_at(at);
        let shown = match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***"),
            None => "***".to_owned(),
        };
        Self(format!("{scheme}{shown}{host}"))
    }

    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(url: &str) -> String {
        RedactedUrl::new(url).to_string()
    }

    #[test]
    fn hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("redis://user:pw@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redact("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redact("redis://pw@host"), "redis://***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn odd_passwords_stay_hidden() {
        for url in [
            "redis://u:p@ss@host",
            "redis://u:pa/ss@host:1",
            "redis://u:p#ss:x@host",
            "u:p@ss@host",
            "redis://:p@ss?db=1@host",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("ss"), "{url} -> {shown}");
            assert!(
                shown.ends_with("@host") || shown.ends_with("@host:1"),
                "{shown}"
            );
        }
    }

    #[test]
    fn debug_and_display_agree() {
        let url = RedactedUrl::new("redis://a:b@c");
        assert_eq!(format!("{url:?}"), "\"redis://a:***@c\"");
        assert_eq!(url.as_str(), "redis://a:***@c");
    }
}
