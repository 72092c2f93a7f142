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
//!     url: "redis://cache-user:secret@10.0.0.5:6379".into(),
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
//! # Deployments: one node, Redis Cluster, Sentinel
//!
//! The [`url`](RedisConfig::url) says which: `redis://host` (one node), `redis+cluster://h1,h2`
//! (a Redis Cluster, given by any of its nodes) or `redis+sentinel://s1,s2/primary-name` (the
//! primary that Sentinels name). For the last two, every connection attempt first asks where
//! to go — `CLUSTER SLOTS` for the primary serving the channel's hash slot, or `SENTINEL
//! GET-MASTER-ADDR-BY-NAME` and then `ROLE` on the node named — and connects there. The
//! subscriber is the same task for all three (one RESP3 connection, `SSUBSCRIBE` on a
//! cluster), so a slot that moves or a primary that fails over is met like any lost
//! connection: the server ends the subscription (an unsolicited `sunsubscribe`, or Sentinel's
//! `CLIENT KILL`, or a dead socket), the subscriber reports
//! [`BackplaneEvent::Disconnected`], resolves again with backoff and reports
//! [`BackplaneEvent::Reconnected`] once the new owner confirmed the subscription — the cache
//! clears what it may have missed. The publisher drops its connection at the first error
//! (`MOVED`, closed, timed out) and the next publish resolves anew.
//!
//! Why not the `redis` crate's own cluster and Sentinel clients (redis 1.8): its async
//! `ClusterConnection` does take RESP3 pushes and `SSUBSCRIBE`, and resubscribes by itself
//! after reconnecting or a topology refresh — but silently: nothing tells the caller that
//! messages were missed in between, and pushes reach the push sender without the node they
//! came from. The unsolicited `sunsubscribe` a slot migration sends is passed on as a push but
//! triggers neither a topology refresh nor a resubscription (only a dropped connection does),
//! so an idle subscriber stays deaf until some command happens to meet a `MOVED`. Its
//! `sentinel` module (`SentinelClient`) does resolve the primary, with a `ROLE` check, for
//! each connection it opens, and would do for the subscriber; resolving here takes the same
//! two commands without another feature of the crate, and gives the Sentinel path the typed
//! errors ([`RedisBackplaneError::UnknownMaster`], [`RedisBackplaneError::NoNodeReachable`])
//! and password scrubbing of the cluster path. What neither may do is sit under a
//! `ConnectionManager`, which reconnects to the address it was built with: after a failover
//! that is a replica, which accepts `PUBLISH` and forwards it nowhere.
//!
//! # Requirements
//!
//! * A tokio runtime with the time and I/O drivers.
//! * Redis 6.0 or newer (the connections speak RESP3); Redis 7.0 or newer for
//!   [`sharded`](RedisConfig::sharded) pub/sub and so for `redis+cluster://`.
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
mod replay;
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
pub use error::{RedisBackplaneError, RedisCause};
pub use redact::{RedactedUrl, RedisUrl};
pub use status::{ConnectionStatus, LinkState};
