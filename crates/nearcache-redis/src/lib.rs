//! A [`Backplane`](nearcache_backplane::Backplane) over Redis pub/sub: the production
//! transport of nearcache.
//!
//! Applications usually reach it through the `nearcache` facade (feature `redis`); depend on
//! this crate directly to configure it in full or to use it with your own cache.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nearcache_redis::RedisBackplaneError> {
//! use nearcache_redis::{RedisBackplane, RedisConfig};
//!
//! let backplane = RedisBackplane::connect_with(RedisConfig {
//!     url: "redis://cache-user:secret@10.0.0.5:6379".to_owned(),
//!     ..RedisConfig::for_app("shop") // channel nearcache:shop:invalidations
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # What it does, and what it leaves to the facade
//!
//! A backplane is a dumb transport: payloads are opaque bytes. This crate keeps two
//! connections to Redis — one publishing, one dedicated to the subscription — and keeps them
//! alive: the subscriber reconnects with backoff and tells the cache when it may have missed
//! messages ([`BackplaneEvent::Disconnected`], then [`BackplaneEvent::Reconnected`]), and
//! publishing fails fast and bounded while Redis is down. Encoding, sequence numbers,
//! heartbeats, batching and the outbox of unsent invalidations are the facade's, so every
//! backplane gets them alike.
//!
//! # Requirements
//!
//! * A tokio runtime with the time and I/O drivers.
//! * Redis 6.0 or newer (the connections speak RESP3); Redis 7.0 or newer for
//!   [`sharded`](RedisConfig::sharded) pub/sub.
//! * For `rediss://`, the `tls` feature (rustls with the ring provider, installed as the
//!   process default unless the application installed another).
//!
//! [`BackplaneEvent::Disconnected`]: nearcache_backplane::BackplaneEvent::Disconnected
//! [`BackplaneEvent::Reconnected`]: nearcache_backplane::BackplaneEvent::Reconnected
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod backplane;
mod config;
mod error;
mod publisher;
mod redact;
mod resolve;
mod slot;
mod status;
mod subscriber;
mod target;
#[cfg(feature = "tls")]
mod tls;
mod topology;

pub use backplane::RedisBackplane;
pub use config::{DEFAULT_APP, ReconnectBackoff, RedisConfig, channel_for_app};
pub use error::RedisBackplaneError;
pub use redact::RedactedUrl;
pub use status::{ConnectionStatus, LinkState};
