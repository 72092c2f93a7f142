//! The invalidation message that travels on a backplane, and its codec.
//!
//! A [`Message`] is a batch of [`Op`]s from one origin [`InstanceId`], numbered by a
//! per-origin sequence so receivers notice gaps. [`encode`] and [`decode`] turn it into bytes
//! and back behind a versioned header; [`WireLimits`] bounds what either side accepts, and
//! [`MessageBuilder`] fills a message up to those bounds. The byte layout is documented in
//! [`codec`]; [`auth`] adds an optional HMAC signature (format version 2); [`logged`] frames a
//! payload with its position in a backplane's replay log.

pub mod auth;
pub mod codec;
pub mod logged;

mod builder;
mod limits;
mod message;

pub use auth::{KeyError, SigningKeys, decode_authenticated, encode_signed};
pub use builder::{MessageBuilder, PushError};
pub use codec::{DecodeError, EncodeError, decode, decode_with, encode, encode_with};
pub use limits::{LimitExceeded, WireLimits};
pub use message::{InstanceId, Message, Op, ParseInstanceIdError};
