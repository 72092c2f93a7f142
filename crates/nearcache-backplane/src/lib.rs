//! How nearcache instances tell each other to evict: the [`Backplane`] trait, the
//! invalidation [`wire`] format, and [`InMemoryBackplane`], an in-process bus.
//!
//! **Who depends on this crate.** Applications depend on `nearcache`, which re-exports what
//! they need; backplane authors depend on `nearcache-backplane` (and implement
//! [`Backplane`]); `nearcache-redis` is one of them. This crate is part of the stable core:
//! few dependencies, rare breaking changes.
//!
//! # The contract in short
//!
//! - A backplane is a dumb transport of opaque payloads: [`Backplane::publish`] hands one
//!   to the transport, [`Backplane::subscribe`] yields a [`Subscription`] of
//!   [`BackplaneEvent`]s. Sequencing, batching, heartbeats and loss detection live in the
//!   facade, above every backplane.
//! - Per-publisher order; delivery at most once; losses it can know of are reported as
//!   [`Disconnected`](BackplaneEvent::Disconnected) /
//!   [`Reconnected`](BackplaneEvent::Reconnected) / [`Lagged`](BackplaneEvent::Lagged), and the
//!   receiving cache clears itself (loss means clear) — unless the backplane keeps a
//!   [`ReplayLog`] ([`Backplane::replay_log`]): then it reads exactly what it missed, and
//!   clears only when the log cannot tell.
//! - A failed publish may or may not have gone out; the facade's outbox retries and
//!   receivers drop duplicates by sequence number. Publishes are bounded in time and cancel
//!   safe.
//! - Messages carry invalidations only — keys and region names, never values — behind a
//!   versioned header and a size limit; a malformed or foreign payload is a typed
//!   [`DecodeError`](wire::DecodeError), counted and dropped, never a crash.
//!
//! The full contract, clause by clause, is on [`Backplane`].
//!
//! # The wire format
//!
//! One [`wire::Message`] per payload: a batch of [`wire::Op`]s from one origin.
//!
//! | field | size | meaning |
//! |---|---|---|
//! | magic | 3 bytes, `b"NCB"` | ours; anything else is [`Foreign`](wire::DecodeError::Foreign) |
//! | version | 1 byte, `1` (`2`: signed) | the format; others are [`UnsupportedVersion`](wire::DecodeError::UnsupportedVersion) |
//! | `origin` | 16 bytes | the sender's random [`InstanceId`](wire::InstanceId) |
//! | `seq` | varint | the sender's message number, 1, 2, 3, … (a heartbeat repeats the last) |
//! | `sent_at_unix_micros` | varint | send time, for the propagation-lag histogram |
//! | `origin_started_unix_ms` | varint | the sender's start time (its incarnation) |
//! | `ops` | varint count, then each op | `Remove { keys }`, `ExpireRegion { region }`, `ExpireRegionKey { region, key }`, `Clear`; none for a heartbeat; `Hello` / `Goodbye` alone when the origin starts listening / shuts down |
//!
//! The body after the 4-byte header is bincode 2 (`config::standard()`); the byte-level
//! layout, the size limits ([`wire::WireLimits`], 1 MiB by default) and why the codec can be
//! swapped are in [`wire::codec`]. [`wire::MessageBuilder`] fills messages up to the limits.
//! A signed message (version 2, [`wire::auth`]) carries a 32-byte HMAC-SHA256 tag between
//! the header and the body.
//!
//! # Example: the in-process bus
//!
//! ```
//! use nearcache_backplane::wire::{self, InstanceId, Message, Op};
//! use nearcache_backplane::{Backplane, BackplaneEvent, InMemoryBackplane};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = InMemoryBackplane::new();
//! let (instance_a, instance_b) = (bus.connection(), bus.connection());
//! let mut on_b = instance_b.subscribe().await?;
//!
//! let message = Message {
//!     origin: InstanceId::random(),
//!     seq: 1,
//!     sent_at_unix_micros: 0,
//!     origin_started_unix_ms: 0,
//!     ops: vec![Op::Remove { keys: vec!["ProductService:get-42".into()] }],
//! };
//! instance_a.publish(wire::encode(&message)?).await?;
//!
//! let Some(BackplaneEvent::Message(payload)) = on_b.recv().await else {
//!     unreachable!("the bus delivers before publish returns");
//! };
//! assert_eq!(wire::decode(&payload)?, message);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backplane;
mod memory;
pub mod replay;
mod subscription;
pub mod wire;

pub use backplane::{Backplane, BackplaneError, BackplaneEvent};
pub use memory::InMemoryBackplane;
#[cfg(feature = "test-util")]
pub use memory::PublishGate;
pub use replay::{LogEntry, LogPosition, LogRead, ReplayLog, Uncovered};
pub use subscription::{EventSender, LinkHealth, Subscription};
