//! [`MessageBuilder`]: fills one message up to the [`WireLimits`] and says when the next
//! invalidation must go into the next message, so an outbox can split a burst of any size
//! into messages every peer accepts.

use super::codec::{FIXED_FIELDS_MAX_LEN, HEADER_LEN, TAG_LEN, len_varint, op_len, str_len};
use super::limits::{LimitExceeded, WireLimits};
use super::message::{InstanceId, Message, Op};

/// Accumulates ops for one message while tracking its encoded size, op count and key count.
///
/// Consecutive removes share one [`Op::Remove`], so a burst of key removals costs a length
/// prefix plus the key bytes per key. The size is tracked incrementally (O(1) per push) and
/// is an upper bound on the final encoding that is never more than 24 bytes over: the three
/// header integers are reserved at their largest (9 bytes each) because their values are
/// only known at [`build`](Self::build).
///
/// ```
/// use nearcache_backplane::wire::{self, InstanceId, MessageBuilder, PushError, WireLimits};
///
/// let limits = WireLimits::default().with_max_payload_bytes(128);
/// let mut builder = MessageBuilder::new(limits);
/// let mut messages = Vec::new();
/// for i in 0..20 {
///     let key = format!("Products:get-{i}");
///     if let Err(PushError::Full(key)) = builder.push_remove(key) {
///         // This message is full: send it, start the next one with the key that did not fit.
///         let full = std::mem::replace(&mut builder, MessageBuilder::new(limits));
///         messages.push(full.build(InstanceId::random(), messages.len() as u64 + 1, 0, 0));
///         builder.push_remove(key).expect("an empty builder takes any valid key");
///     }
/// }
/// messages.push(builder.build(InstanceId::random(), messages.len() as u64 + 1, 0, 0));
/// assert!(messages.len() > 1);
/// for message in &messages {
///     assert!(wire::encode_with(message, &limits)?.len() <= 128);
/// }
/// assert_eq!(messages.iter().map(|m| m.key_count()).sum::<usize>(), 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    limits: WireLimits,
    ops: Vec<Op>,
    keys: usize,
    /// Encoded bytes of all ops.
    ops_len: usize,
}

/// Why [`MessageBuilder`] did not take a value; the value is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError<T> {
    /// The message is full. Send it and push the value into a new, empty builder, which
    /// always takes it (it would have been [`Unsendable`](Self::Unsendable) otherwise).
    #[error("the message is full; send it and start a new one")]
    Full(T),
    /// The value can never be sent under these limits, not even alone in a message (a key
    /// longer than [`WireLimits::max_key_bytes`], an empty region name, …). Peers will not
    /// learn of it from this op: fall back to a coarser one that covers it (a region expiry,
    /// or [`Op::Clear`]) and report the cause.
    #[error("cannot be sent under the wire limits: {reason}")]
    Unsendable {
        /// The value.
        value: T,
        /// The bound it breaks.
        reason: LimitExceeded,
    },
}

impl<T> PushError<T> {
    /// The value that was not taken.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(value) | PushError::Unsendable { value, .. } => value,
        }
    }

    /// The same error around another value (e.g. the caller's own form of the op).
    pub fn map_value<U>(self, f: impl FnOnce(T) -> U) -> PushError<U> {
        match self {
            PushError::Full(value) => PushError::Full(f(value)),
            PushError::Unsendable { value, reason } => PushError::Unsendable {
                value: f(value),
                reason,
            },
        }
    }
}

/// What a push would change, computed before anything is changed.
struct Growth {
    ops: usize,
    keys: usize,
    ops_len: usize,
}

impl MessageBuilder {
    /// An empty builder for messages under `limits`.
    #[must_use]
    pub fn new(limits: WireLimits) -> Self {
        Self {
            limits,
            ops: Vec::new(),
            keys: 0,
            ops_len: 0,
        }
    }

    /// Adds one key to remove, to the trailing [`Op::Remove`] if the last op is one.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] when the message cannot take another key; [`PushError::Unsendable`]
    /// when the key breaks [`WireLimits`] on its own. The key is handed back in both.
    pub fn push_remove(&mut self, key: String) -> Result<(), PushError<String>> {
        if let Err(reason) = self.limits.check_key(&key) {
            return Err(PushError::Unsendable { value: key, reason });
        }
        let growth = match self.ops.last() {
            Some(Op::Remove { keys }) => Growth {
                ops: 0,
                keys: 1,
                ops_len: str_len(&key) + len_varint(keys.len() + 1) - len_varint(keys.len()),
            },
            _ => Growth {
                ops: 1,
                keys: 1,
                ops_len: TAG_LEN + len_varint(1) + str_len(&key),
            },
        };
        if let Err(reason) = self.check(&growth) {
            return Err(self.refuse(key, reason));
        }
        self.apply(&growth);
        match self.ops.last_mut() {
            Some(Op::Remove { keys }) if growth.ops == 0 => keys.push(key),
            _ => self.ops.push(Op::Remove { keys: vec![key] }),
        }
        Ok(())
    }

    /// Adds one op. A [`Op::Remove`] is merged into a trailing one, all its keys or none;
    /// push large removes key by key with [`push_remove`](Self::push_remove) so they can
    /// be split.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] when the message cannot take the op; [`PushError::Unsendable`]
    /// when the op does not fit even alone. The op is handed back in both.
    pub fn push(&mut self, op: Op) -> Result<(), PushError<Op>> {
        if let Err(reason) = self.check_op(&op) {
            return Err(PushError::Unsendable { value: op, reason });
        }
        let growth = match (&op, self.ops.last()) {
            (Op::Remove { keys: new }, Some(Op::Remove { keys: old })) => Growth {
                ops: 0,
                keys: new.len(),
                ops_len: new.iter().map(|k| str_len(k)).sum::<usize>()
                    + len_varint(old.len() + new.len())
                    - len_varint(old.len()),
            },
            _ => Growth {
                ops: 1,
                keys: op.key_count(),
                ops_len: op_len(&op),
            },
        };
        if let Err(reason) = self.check(&growth) {
            return Err(self.refuse(op, reason));
        }
        self.apply(&growth);
        match (op, self.ops.last_mut()) {
            (Op::Remove { keys: new }, Some(Op::Remove { keys })) => keys.extend(new),
            (op, _) => self.ops.push(op),
        }
        Ok(())
    }

    /// An upper bound on the encoded size of the message built so far, in bytes (at most
    /// 24 bytes over the exact size).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        Self::len_with(self.ops.len(), self.ops_len)
    }

    /// Whether no op has been pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Ops pushed so far (consecutive removes count as one).
    #[must_use]
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Keys pushed so far (see [`Op::key_count`]).
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// The limits this builder fills up to.
    #[must_use]
    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// The message, with the header fields known only at send time. It encodes under the
    /// builder's limits (unless `ops` was empty and nothing else fits, which cannot happen:
    /// any heartbeat fits [`WireLimits::MIN_PAYLOAD_BYTES`]).
    #[must_use]
    pub fn build(
        self,
        origin: InstanceId,
        seq: u64,
        sent_at_unix_micros: u64,
        origin_started_unix_ms: u64,
    ) -> Message {
        Message {
            origin,
            seq,
            sent_at_unix_micros,
            origin_started_unix_ms,
            ops: self.ops,
        }
    }

    /// The ops pushed so far, for callers that build the [`Message`] themselves.
    #[must_use]
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    fn len_with(ops: usize, ops_len: usize) -> usize {
        HEADER_LEN + FIXED_FIELDS_MAX_LEN + len_varint(ops) + ops_len
    }

    fn check_op(&self, op: &Op) -> Result<(), LimitExceeded> {
        match op {
            Op::Remove { keys } => keys.iter().try_for_each(|key| self.limits.check_key(key)),
            Op::ExpireRegion { region } => self.limits.check_region(region),
            Op::ExpireRegionKey { region, key } => {
                self.limits.check_region(region)?;
                self.limits.check_key(key)
            }
            Op::Clear | Op::Goodbye | Op::Hello => Ok(()),
        }
    }

    fn check(&self, growth: &Growth) -> Result<(), LimitExceeded> {
        let ops = self.ops.len() + growth.ops;
        self.limits.check_counts(ops, self.keys + growth.keys)?;
        let size = Self::len_with(ops, self.ops_len + growth.ops_len);
        if size > self.limits.max_payload_bytes() {
            return Err(LimitExceeded::Payload {
                size,
                max: self.limits.max_payload_bytes(),
            });
        }
        Ok(())
    }

    /// Full if there is something to send first, unsendable if even an empty message
    /// cannot take it.
    fn refuse<T>(&self, value: T, reason: LimitExceeded) -> PushError<T> {
        if self.is_empty() {
            PushError::Unsendable { value, reason }
        } else {
            PushError::Full(value)
        }
    }

    fn apply(&mut self, growth: &Growth) {
        self.keys += growth.keys;
        self.ops_len += growth.ops_len;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::wire::{decode_with, encode_with};
    use proptest::prelude::*;

    fn build(builder: MessageBuilder, seq: u64) -> Message {
        builder.build(InstanceId::from_u128(seq.into()), seq, u64::MAX, u64::MAX)
    }

    #[test]
    fn consecutive_removes_share_one_op() {
        let mut builder = MessageBuilder::new(WireLimits::default());
        builder.push_remove("a".into()).unwrap();
        builder
            .push(Op::Remove {
                keys: vec!["b".into(), "c".into()],
            })
            .unwrap();
        builder.push(Op::Clear).unwrap();
        builder.push_remove("d".into()).unwrap();
        assert_eq!((builder.op_count(), builder.key_count()), (3, 4));
        assert_eq!(
            builder.into_ops(),
            vec![
                Op::Remove {
                    keys: vec!["a".into(), "b".into(), "c".into()]
                },
                Op::Clear,
                Op::Remove {
                    keys: vec!["d".into()]
                },
            ]
        );
    }

    #[test]
    fn a_key_too_long_for_any_message_is_unsendable() {
        let limits = WireLimits::default().with_max_key_bytes(4);
        let mut builder = MessageBuilder::new(limits);
        let err = builder.push_remove("12345".into()).unwrap_err();
        assert_eq!(
            err,
            PushError::Unsendable {
                value: "12345".into(),
                reason: LimitExceeded::KeyLength { len: 5, max: 4 }
            }
        );
        assert!(builder.is_empty());
        let err = builder
            .push(Op::ExpireRegion {
                region: String::new(),
            })
            .unwrap_err();
        assert!(matches!(
            err,
            PushError::Unsendable {
                reason: LimitExceeded::RegionLength { len: 0, .. },
                ..
            }
        ));
    }

    #[test]
    fn a_key_that_fits_the_key_limit_but_not_the_payload_is_unsendable() {
        let limits = WireLimits::default().with_max_payload_bytes(64);
        let mut builder = MessageBuilder::new(limits);
        let err = builder.push_remove("k".repeat(100)).unwrap_err();
        assert!(
            matches!(
                err,
                PushError::Unsendable {
                    reason: LimitExceeded::Payload { max: 64, .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn counts_fill_up() {
        let limits = WireLimits::default().with_max_ops(2).with_max_keys(3);
        let mut builder = MessageBuilder::new(limits);
        builder.push(Op::Clear).unwrap();
        builder.push_remove("a".into()).unwrap();
        builder.push_remove("b".into()).unwrap();
        assert_eq!(builder.push(Op::Clear), Err(PushError::Full(Op::Clear)));
        builder.push_remove("c".into()).unwrap();
        assert_eq!(
            builder.push_remove("d".into()),
            Err(PushError::Full("d".into()))
        );
        assert_eq!(builder.key_count(), 3);
    }

    /// A builder filled to the default 1 MiB limit encodes under it and round-trips.
    #[test]
    fn a_max_size_batch_encodes_under_the_limit() {
        let limits = WireLimits::default();
        let mut builder = MessageBuilder::new(limits);
        let mut i = 0u64;
        let rejected = loop {
            match builder.push_remove(format!("ProductService:search-{i:08}")) {
                Ok(()) => i += 1,
                Err(err) => break err,
            }
        };
        assert!(matches!(rejected, PushError::Full(_)));
        let hint = builder.encoded_len();
        let message = build(builder, u64::MAX);
        let bytes = encode_with(&message, &limits).unwrap();
        assert_eq!(
            bytes.len(),
            hint,
            "header fields at their largest: the hint is exact"
        );
        assert!(
            limits.max_payload_bytes() - bytes.len() < 32,
            "filled to within one key"
        );
        assert_eq!(decode_with(&bytes, &limits).unwrap(), message);
    }

    fn push_arbitrary(builder: &mut MessageBuilder, op: Op) -> bool {
        match op {
            Op::Remove { keys } if keys.len() == 1 => builder
                .push_remove(keys.into_iter().next().unwrap())
                .is_ok(),
            op => builder.push(op).is_ok(),
        }
    }

    /// Cheap to generate, and crosses the varint thresholds: keys and region names of
    /// 0–300 bytes, removes of up to 300 keys.
    fn op() -> impl Strategy<Value = Op> {
        let long = (any::<char>(), 0usize..300).prop_map(|(c, n)| c.to_string().repeat(n));
        prop_oneof![
            prop::collection::vec("[a-zé]{0,3}", 0..300).prop_map(|keys| Op::Remove { keys }),
            long.clone().prop_map(|key| Op::Remove { keys: vec![key] }),
            (1usize..300).prop_map(|n| Op::ExpireRegion {
                region: "r".repeat(n)
            }),
            long.prop_map(|key| Op::ExpireRegionKey {
                region: "r".into(),
                key
            }),
            Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is pushed, the built message encodes under the limits, its size is within
        /// the documented slack of the hint, and every key offered is either in a message or
        /// handed back.
        #[test]
        fn the_size_hint_bounds_the_encoding(
            ops in prop::collection::vec(op(), 0..40),
            payload in 64usize..4096,
            max_keys in 1usize..400,
            seq in any::<u64>(),
            sent in any::<u64>(),
        ) {
            let limits = WireLimits::default()
                .with_max_payload_bytes(payload)
                .with_max_keys(max_keys)
                .with_max_ops(50);
            let mut builder = MessageBuilder::new(limits);
            let mut pushed = 0;
            for op in ops {
                let keys = op.key_count();
                if push_arbitrary(&mut builder, op) {
                    pushed += keys;
                }
            }
            let hint = builder.encoded_len();
            prop_assert!(hint <= limits.max_payload_bytes());
            prop_assert_eq!(builder.key_count(), pushed);
            let message = builder.build(InstanceId::random(), seq, sent, 0);
            let bytes = encode_with(&message, &limits).unwrap();
            prop_assert!(bytes.len() <= hint && hint - bytes.len() <= 24, "{} vs {}", bytes.len(), hint);
            prop_assert_eq!(message.key_count(), pushed);
        }
    }
}
