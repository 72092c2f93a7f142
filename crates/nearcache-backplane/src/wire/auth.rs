//! Message authentication: an HMAC-SHA256 tag over each payload, with a shared key.
//!
//! Without it, anyone who can publish on the channel can make caches evict (harmless but
//! costly) and send messages under a real instance's name. With [`SigningKeys`] configured,
//! every message is sent signed (wire format version 2) and a receiver accepts only messages
//! whose tag verifies under one of its keys: unsigned or badly signed messages are refused
//! with [`DecodeError::Unauthenticated`] and counted. Two keys are accepted at once so a key
//! can be rotated without a flag day: give every instance the new key as `current` and the
//! old one as `previous`, then drop `previous` once all have the new one.
//!
//! # Layout of a signed message
//!
//! | bytes | field |
//! |---|---|
//! | 3 | magic `b"NCB"` |
//! | 1 | version `2` (signed) |
//! | 32 | HMAC-SHA256 over the magic, the version byte and the body, under the sender's current key |
//! | … | the body, exactly as in version 1 |
//!
//! A receiver without keys reads a signed message without checking it (so signing can be
//! turned on one instance at a time); a receiver with keys refuses unsigned ones. The tag
//! is compared in constant time (`hmac`'s `verify_slice`).

use std::fmt;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{self, DecodeError, EncodeError, HEADER_LEN, MAGIC};
use super::limits::WireLimits;
use super::message::Message;

type HmacSha256 = Hmac<Sha256>;

/// The wire format version of a signed message.
pub const SIGNED_VERSION: u8 = 2;

/// Bytes a signature adds to a message.
pub const SIGNATURE_LEN: usize = 32;

/// Shortest key accepted, in bytes: HMAC-SHA256 keys shorter than this are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// The shared secret(s) of a channel: `current` signs and verifies, `previous` (during a
/// rotation) only verifies. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

/// Why [`SigningKeys::new`] refused a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is too short to be secret.
    #[error(
        "a signing key of {len} bytes is too short; use at least {MIN_KEY_LEN} random bytes (e.g. `openssl rand -base64 32`)"
    )]
    TooShort {
        /// The key's length in bytes.
        len: usize,
    },
}

impl SigningKeys {
    /// Keys that sign with `current` and also accept messages signed with `previous`.
    ///
    /// # Errors
    ///
    /// [`KeyError::TooShort`] when either key is shorter than [`MIN_KEY_LEN`] bytes.
    pub fn new(current: impl Into<Vec<u8>>, previous: Option<Vec<u8>>) -> Result<Self, KeyError> {
        let current = current.into();
        for key in std::iter::once(&current).chain(previous.as_ref()) {
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort { len: key.len() });
            }
        }
        Ok(Self { current, previous })
    }

    fn tag(key: &[u8], signed_header: &[u8], body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        mac.update(signed_header);
        mac.update(body);
        mac
    }

    /// Whether `tag` is the signature of `body` under one of the keys.
    fn verifies(&self, tag: &[u8], body: &[u8]) -> bool {
        let header = signed_header();
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| Self::tag(key, &header, body).verify_slice(tag).is_ok())
    }
}

/// `Hmac::new_from_slice` accepts every key length; this is never reached.
#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC accepts keys of any length")
}

fn signed_header() -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], SIGNED_VERSION]
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("current", &"***")
            .field("previous", &self.previous.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Encodes `message` signed with `keys`' current key, under `limits` (the signature comes on
/// top of `limits.max_payload_bytes()`).
///
/// # Errors
///
/// As [`encode_with`](super::encode_with).
pub fn encode_signed(
    message: &Message,
    limits: &WireLimits,
    keys: &SigningKeys,
) -> Result<Bytes, EncodeError> {
    let unsigned = codec::encode_with(message, limits)?;
    let body = &unsigned[HEADER_LEN..];
    let header = signed_header();
    let tag = SigningKeys::tag(&keys.current, &header, body)
        .finalize()
        .into_bytes();
    let mut out = Vec::with_capacity(unsigned.len() + SIGNATURE_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&tag);
    out.extend_from_slice(body);
    Ok(Bytes::from(out))
}

/// Decodes a payload under `limits`, requiring a valid signature when `keys` is `Some`.
///
/// # Errors
///
/// As [`decode_with`](super::decode_with), plus [`DecodeError::Unauthenticated`] when keys
/// are configured and the message is unsigned or its signature does not verify.
pub fn decode_authenticated(
    bytes: &[u8],
    limits: &WireLimits,
    keys: Option<&SigningKeys>,
) -> Result<Message, DecodeError> {
    let version = codec::check_header(bytes, limits, SIGNATURE_LEN)?;
    match (version, keys) {
        (codec::VERSION, None) => codec::decode_body(&bytes[HEADER_LEN..], limits),
        (codec::VERSION, Some(_)) => Err(DecodeError::Unauthenticated),
        (SIGNED_VERSION, keys) => {
            let Some((tag, body)) = bytes[HEADER_LEN..].split_at_checked(SIGNATURE_LEN) else {
                return Err(DecodeError::Truncated);
            };
            if let Some(keys) = keys
                && !keys.verifies(tag, body)
            {
                return Err(DecodeError::Unauthenticated);
            }
            if bytes.len() - SIGNATURE_LEN > limits.max_payload_bytes() {
                return Err(DecodeError::TooLarge {
                    size: bytes.len(),
                    limit: limits.max_payload_bytes() + SIGNATURE_LEN,
                });
            }
            codec::decode_body(body, limits)
        }
        (other, _) => Err(DecodeError::UnsupportedVersion(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::{InstanceId, Op};

    fn message() -> Message {
        Message {
            origin: InstanceId::from_u128(42),
            seq: 7,
            sent_at_unix_micros: 1,
            origin_started_unix_ms: 2,
            ops: vec![Op::Remove {
                keys: vec!["k".into()],
            }],
        }
    }

    fn keys(current: &[u8; 16], previous: Option<&[u8; 16]>) -> SigningKeys {
        SigningKeys::new(current.to_vec(), previous.map(|k| k.to_vec())).unwrap()
    }

    const OLD: &[u8; 16] = b"old-key-16-bytes";
    const NEW: &[u8; 16] = b"new-key-16-bytes";
    const EVIL: &[u8; 16] = b"not-the-real-key";

    #[test]
    fn signed_messages_round_trip_and_rotation_accepts_both_keys() {
        let limits = WireLimits::DEFAULT;
        let signed_old = encode_signed(&message(), &limits, &keys(OLD, None)).unwrap();
        let signed_new = encode_signed(&message(), &limits, &keys(NEW, None)).unwrap();
        assert_eq!(signed_old[3], SIGNED_VERSION);
        let rotating = keys(NEW, Some(OLD));
        for signed in [&signed_old, &signed_new] {
            assert_eq!(
                decode_authenticated(signed, &limits, Some(&rotating)),
                Ok(message())
            );
        }
        assert_eq!(
            decode_authenticated(&signed_old, &limits, Some(&keys(NEW, None))),
            Err(DecodeError::Unauthenticated),
            "the old key is refused once it is dropped"
        );
    }

    #[test]
    fn unsigned_forged_and_tampered_messages_are_refused_with_a_key() {
        let limits = WireLimits::DEFAULT;
        let ours = keys(NEW, None);
        let unsigned = codec::encode(&message()).unwrap();
        assert_eq!(
            decode_authenticated(&unsigned, &limits, Some(&ours)),
            Err(DecodeError::Unauthenticated)
        );
        let forged = encode_signed(&message(), &limits, &keys(EVIL, None)).unwrap();
        assert_eq!(
            decode_authenticated(&forged, &limits, Some(&ours)),
            Err(DecodeError::Unauthenticated)
        );
        let mut tampered = encode_signed(&message(), &limits, &ours).unwrap().to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_authenticated(&tampered, &limits, Some(&ours)),
            Err(DecodeError::Unauthenticated)
        );
        let mut truncated = encode_signed(&message(), &limits, &ours).unwrap().to_vec();
        truncated.truncate(HEADER_LEN + 10);
        assert_eq!(
            decode_authenticated(&truncated, &limits, Some(&ours)),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn without_a_key_both_versions_are_read() {
        let limits = WireLimits::DEFAULT;
        let signed = encode_signed(&message(), &limits, &keys(NEW, None)).unwrap();
        let unsigned = codec::encode(&message()).unwrap();
        assert_eq!(decode_authenticated(&signed, &limits, None), Ok(message()));
        assert_eq!(
            decode_authenticated(&unsigned, &limits, None),
            Ok(message())
        );
        assert_eq!(codec::decode(&signed), Ok(message()));
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        assert_eq!(
            SigningKeys::new(b"short".to_vec(), None),
            Err(KeyError::TooShort { len: 5 })
        );
        assert_eq!(
            SigningKeys::new(NEW.to_vec(), Some(b"x".to_vec())),
            Err(KeyError::TooShort { len: 1 })
        );
        let shown = format!("{:?}", keys(NEW, Some(OLD)));
        assert!(!shown.contains("key-16"), "{shown}");
    }
}
