//! [`WireLimits`]: how big a message may be, checked when encoding, when building a batch and
//! when decoding, so that a sender never emits what its peers would refuse and a receiver
//! never spends more than a bounded amount of memory on a hostile payload.

/// Bounds on one message. Every instance on a channel must use the same limits: a message
/// that one instance may send but another refuses is an invalidation lost.
///
/// ```
/// use nearcache_backplane::wire::WireLimits;
///
/// let limits = WireLimits::default().with_max_payload_bytes(64 * 1024);
/// assert_eq!(limits.max_payload_bytes(), 64 * 1024);
/// assert_eq!(limits.max_key_bytes(), WireLimits::DEFAULT.max_key_bytes());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireLimits {
    max_payload_bytes: usize,
    max_ops: usize,
    max_keys: usize,
    max_key_bytes: usize,
    max_region_bytes: usize,
}

impl WireLimits {
    /// The defaults: 1 MiB payloads, 65,536 ops and 262,144 keys per message, keys up to
    /// 16 KiB and region names up to 256 bytes.
    pub const DEFAULT: Self = Self {
        max_payload_bytes: 1024 * 1024,
        max_ops: 65_536,
        max_keys: 262_144,
        max_key_bytes: 16 * 1024,
        max_region_bytes: 256,
    };

    /// The smallest payload limit accepted: room for any heartbeat.
    pub const MIN_PAYLOAD_BYTES: usize = 64;

    /// The largest payload limit accepted (64 MiB): the decoder's memory budget is sized
    /// from it, and a pub/sub message this big already stalls every subscriber.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

    /// Largest encoded message, header included, in bytes. Values are clamped to
    /// [`MIN_PAYLOAD_BYTES`](Self::MIN_PAYLOAD_BYTES)..=[`MAX_PAYLOAD_BYTES`](Self::MAX_PAYLOAD_BYTES).
    #[must_use]
    pub const fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = if bytes < Self::MIN_PAYLOAD_BYTES {
            Self::MIN_PAYLOAD_BYTES
        } else if bytes > Self::MAX_PAYLOAD_BYTES {
            Self::MAX_PAYLOAD_BYTES
        } else {
            bytes
        };
        self
    }

    /// Most ops in one message (a `Remove` with many keys is one op).
    #[must_use]
    pub const fn with_max_ops(mut self, ops: usize) -> Self {
        self.max_ops = ops;
        self
    }

    /// Most key strings in one message, over all ops (removed keys and region sub-keys).
    #[must_use]
    pub const fn with_max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Longest key (or region sub-key), in bytes of UTF-8.
    #[must_use]
    pub const fn with_max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Longest region name, in bytes of UTF-8. Region names are never empty.
    #[must_use]
    pub const fn with_max_region_bytes(mut self, bytes: usize) -> Self {
        self.max_region_bytes = bytes;
        self
    }

    /// Largest encoded message, header included, in bytes.
    #[must_use]
    pub const fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Most ops in one message.
    #[must_use]
    pub const fn max_ops(&self) -> usize {
        self.max_ops
    }

    /// Most key strings in one message.
    #[must_use]
    pub const fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Longest key, in bytes.
    #[must_use]
    pub const fn max_key_bytes(&self) -> usize {
        self.max_key_bytes
    }

    /// Longest region name, in bytes.
    #[must_use]
    pub const fn max_region_bytes(&self) -> usize {
        self.max_region_bytes
    }

    /// Checks one key's length.
    pub(crate) fn check_key(&self, key: &str) -> Result<(), LimitExceeded> {
        if key.len() > self.max_key_bytes {
            return Err(LimitExceeded::KeyLength {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks one region name's length (1..=max).
    pub(crate) fn check_region(&self, region: &str) -> Result<(), LimitExceeded> {
        if region.is_empty() || region.len() > self.max_region_bytes {
            return Err(LimitExceeded::RegionLength {
                len: region.len(),
                max: self.max_region_bytes,
            });
        }
        Ok(())
    }

    /// Checks op and key counts.
    pub(crate) fn check_counts(&self, ops: usize, keys: usize) -> Result<(), LimitExceeded> {
        if ops > self.max_ops {
            return Err(LimitExceeded::Ops {
                count: ops,
                max: self.max_ops,
            });
        }
        if keys > self.max_keys {
            return Err(LimitExceeded::Keys {
                count: keys,
                max: self.max_keys,
            });
        }
        Ok(())
    }
}

impl Default for WireLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which bound of [`WireLimits`] a message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// Too many ops in one message.
    #[error(
        "{count} operations in one message, at most {max} allowed; split the batch (MessageBuilder does)"
    )]
    Ops {
        /// Ops in the message.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Too many keys in one message.
    #[error(
        "{count} keys in one message, at most {max} allowed; split the batch (MessageBuilder does)"
    )]
    Keys {
        /// Keys in the message.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A key is too long.
    #[error(
        "a key of {len} bytes, keys are at most {max} bytes; shorten the key or raise WireLimits::max_key_bytes on every instance"
    )]
    KeyLength {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A region name is empty or too long.
    #[error(
        "a region name of {len} bytes, region names are 1 to {max} bytes; fix Region::NAME or raise WireLimits::max_region_bytes on every instance"
    )]
    RegionLength {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The encoded message would exceed the payload limit.
    #[error(
        "an encoded message of {size} bytes, at most {max} allowed; split the batch or raise WireLimits::max_payload_bytes on every instance"
    )]
    Payload {
        /// The encoded size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_limit_is_clamped_to_a_sane_range() {
        let limits = WireLimits::default();
        assert_eq!(
            limits.with_max_payload_bytes(0).max_payload_bytes(),
            WireLimits::MIN_PAYLOAD_BYTES
        );
        assert_eq!(
            limits
                .with_max_payload_bytes(usize::MAX)
                .max_payload_bytes(),
            WireLimits::MAX_PAYLOAD_BYTES
        );
        assert_eq!(
            limits.with_max_payload_bytes(4096).max_payload_bytes(),
            4096
        );
    }

    #[test]
    fn checks_report_the_bound_they_hit() {
        let limits = WireLimits::default()
            .with_max_key_bytes(3)
            .with_max_region_bytes(2)
            .with_max_ops(1)
            .with_max_keys(2);
        assert_eq!(limits.check_key("abc"), Ok(()));
        assert_eq!(
            limits.check_key("abcd"),
            Err(LimitExceeded::KeyLength { len: 4, max: 3 })
        );
        assert_eq!(limits.check_region("ab"), Ok(()));
        assert_eq!(
            limits.check_region(""),
            Err(LimitExceeded::RegionLength { len: 0, max: 2 })
        );
        assert_eq!(
            limits.check_region("abc"),
            Err(LimitExceeded::RegionLength { len: 3, max: 2 })
        );
        assert_eq!(limits.check_counts(1, 2), Ok(()));
        assert_eq!(
            limits.check_counts(2, 0),
            Err(LimitExceeded::Ops { count: 2, max: 1 })
        );
        assert_eq!(
            limits.check_counts(1, 3),
            Err(LimitExceeded::Keys { count: 3, max: 2 })
        );
    }
}
