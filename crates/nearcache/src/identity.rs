//! [`Identity`]: how one cache names itself in logs, spans and metrics.
//!
//! Two caches in one process must be told apart, and so must two instances of a service:
//! every span and metric series carries the cache's name and its instance id. Keys may hold
//! personal data, so a key is shown as it is only when `log_keys` is on; otherwise a short
//! stable hash stands in for it — the same on every instance and every run, so one key can
//! still be followed across a fleet's logs without being revealed.

use std::sync::Arc;

use nearcache_backplane::wire::InstanceId;
use nearcache_store::stable_key_hash;

/// The name, instance id and key policy of one cache.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The `cache` label.
    pub(crate) name: Arc<str>,
    /// The `instance` label: this instance's id on the backplane (a cache without one still
    /// gets an id, so its series are labelled the same way).
    pub(crate) instance: InstanceId,
    /// The instance id as text, made once.
    pub(crate) instance_text: Arc<str>,
    log_keys: bool,
}

impl Identity {
    pub(crate) fn new(name: String, instance: InstanceId, log_keys: bool) -> Self {
        Identity {
            name: name.into(),
            instance,
            instance_text: instance.to_string().into(),
            log_keys,
        }
    }

    /// What logs and spans show for `key`: the key itself when `log_keys` is on, else
    /// `#` and 16 hex digits of its hash (the store's log events show the same).
    pub(crate) fn key(&self, key: &str) -> String {
        if self.log_keys {
            key.to_owned()
        } else {
            format!("#{:016x}", stable_key_hash(key))
        }
    }

    /// The span every background task of this cache runs in, so each of its events carries
    /// the cache's name and instance. At error level so that no filter that lets an event
    /// through drops its context (a `warn` filter would disable an info span).
    pub(crate) fn span(&self, task: &'static str) -> tracing::Span {
        tracing::error_span!(
            "nearcache",
            cache = %self.name,
            instance = %self.instance_text,
            task
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hidden_unless_allowed() {
        let id = InstanceId::random();
        let hidden = Identity::new("shop".into(), id, false);
        let shown = Identity::new("shop".into(), id, true);
        let key = "User:get-alice@example.com";
        assert_eq!(shown.key(key), key);
        let hash = hidden.key(key);
        assert!(!hash.contains("alice"), "{hash}");
        assert_eq!(hash.len(), 17);
        assert_eq!(hash, hidden.key(key), "stable");
        assert_ne!(hash, hidden.key("User:get-bob@example.com"));
        // The store's log events show the same hash for the same key.
        assert_eq!(hash, format!("#{:016x}", stable_key_hash(key)));
    }
}
