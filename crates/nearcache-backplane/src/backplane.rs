//! The [`Backplane`] trait: how invalidations travel between instances.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::replay::ReplayLog;
use crate::subscription::Subscription;

/// A channel that carries encoded invalidation messages between cache instances.
///
/// A backplane is a dumb transport: it moves opaque payloads (encoded by
/// [`wire`](crate::wire)) from one instance to every instance subscribed to the same channel.
/// Sequencing, batching (group commit), heartbeats, loss detection and the outbox live above
/// it, in the `nearcache` facade, so every backplane gets them the same way and an
/// implementation stays a few hundred lines. The facade holds it as `Arc<dyn Backplane>`.
///
/// This is the contract; the facade relies on every clause.
///
/// # Ordering
///
/// Payloads that one instance publishes one after another (each `publish` awaited before the
/// next) reach every subscriber in that order. Nothing is promised across publishers. The
/// facade numbers each origin's messages, so a reordering shows up as a gap and costs a
/// needless clear — correct, but wasteful: keep per-publisher order.
///
/// # Delivery: at most once
///
/// Like Redis pub/sub, a payload may be lost (a dropped connection, a slow subscriber) and
/// is never redelivered. What a backplane must not do is lose payloads *silently where it
/// can know*: when its subscription breaks it says so ([`EventSender::link_lost`](crate::EventSender::link_lost)),
/// when it is back it says that ([`EventSender::link_restored`](crate::EventSender::link_restored)),
/// and when its own queue overflows the [`Subscription`] reports
/// [`BackplaneEvent::Lagged`] for you. Connection health is *state* with a generation, not
/// events in the payload queue: the subscription reports it as
/// [`BackplaneEvent::Disconnected`] / [`BackplaneEvent::Reconnected`], always ending in
/// agreement with the link, however full the queue. A subscription whose link is up but
/// which no longer receives (the server unsubscribed it) must be reported lost too. Losses it
/// cannot know of (the server dropped a message for a slow client) are caught above it by
/// sequence gaps and heartbeats. A backplane should not duplicate payloads; receivers drop
/// duplicates by sequence number anyway.
///
/// # Echo
///
/// A subscriber may receive its own publishes (Redis and the in-process bus both do). The
/// facade ignores messages whose origin is itself, so a backplane need not filter them.
///
/// # Publish
///
/// `publish` returns `Ok(())` once the payload has been handed to the transport (for Redis:
/// the `PUBLISH` was acknowledged), not once subscribers have it. An `Err` means it may or
/// may not have gone out: the caller keeps it in its outbox and tries again later
/// (receivers drop a duplicate by its sequence number). Implementations bound the time a
/// publish can take and return [`BackplaneError::Timeout`] past it, so no caller waits on a
/// dead server; they do not retry internally beyond that bound — the outbox does.
///
/// # Subscribe
///
/// Each call returns a new [`Subscription`] that sees everything published from then on.
/// The implementation keeps the [`EventSender`](crate::EventSender) half and feeds it from its connection,
/// never waiting (a full queue becomes `Lagged`, not back-pressure on the transport), and
/// keeps the subscription alive across reconnects. Dropping every `EventSender` ends the
/// subscription: that means the backplane is shut down for good.
///
/// # Replay (optional)
///
/// A backplane that keeps a bounded log of what it published returns it from
/// [`replay_log`](Backplane::replay_log); the receiver then repairs a loss by reading what it
/// missed, and falls back to a clear only when the log cannot cover the gap. The contract is
/// in [`replay`](crate::replay).
///
/// # Cancel safety
///
/// Dropping a `publish` future before it completes leaves the payload either sent or not
/// sent, never half-sent, and leaves the backplane usable. Dropping a `subscribe` future
/// leaves no subscription behind.
///
/// # A wrong implementation next to a right one
///
/// The loss that matters most is the one nobody reports: a receive loop that reconnects
/// quietly leaves the cache serving entries that peers invalidated while it was away.
///
/// ```
/// use bytes::Bytes;
/// use nearcache_backplane::{BackplaneEvent, EventSender};
/// # struct Connection;
/// # impl Connection {
/// #     async fn next_payload(&mut self) -> Result<Bytes, std::io::Error> { Ok(Bytes::new()) }
/// # }
/// # async fn connect() -> Connection { Connection }
///
/// // Wrong: after a reconnect the cache never learns that it missed payloads.
/// async fn receive_wrong(mut conn: Connection, events: EventSender) {
///     loop {
///         match conn.next_payload().await {
///             Ok(payload) => {
///                 if !events.send(BackplaneEvent::Message(payload)) {
///                     return; // the subscription was dropped
///                 }
///             }
///             Err(_) => conn = connect().await,
///         }
///     }
/// }
///
/// // Right: say when the link drops and when it is back; the cache clears itself.
/// async fn receive(mut conn: Connection, events: EventSender) {
///     loop {
///         match conn.next_payload().await {
///             Ok(payload) => {
///                 if !events.send(BackplaneEvent::Message(payload)) {
///                     return;
///                 }
///             }
///             Err(_) => {
///                 events.send(BackplaneEvent::Disconnected);
///                 conn = connect().await; // with backoff, in real code
///                 events.send(BackplaneEvent::Reconnected);
///             }
///         }
///     }
/// }
/// ```
///
/// # Example: a backplane that drops everything
///
/// ```
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use nearcache_backplane::{Backplane, BackplaneError, Subscription};
///
/// #[derive(Debug)]
/// struct Void;
///
/// #[async_trait]
/// impl Backplane for Void {
///     async fn publish(&self, _payload: Bytes) -> Result<(), BackplaneError> {
///         Ok(())
///     }
///     async fn subscribe(&self) -> Result<Subscription, BackplaneError> {
///         // A subscription whose sender is dropped at once: it ends immediately.
///         let (_sender, subscription) = Subscription::channel(16);
///         Ok(subscription)
///     }
/// }
/// ```
///
/// [`InMemoryBackplane`](crate::InMemoryBackplane) is the reference implementation.
#[async_trait]
pub trait Backplane: Send + Sync + fmt::Debug + 'static {
    /// Sends one payload to every subscriber of the channel (see the trait docs: `Ok` means
    /// handed to the transport; an `Err` means it may or may not have gone out).
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] when the transport is down,
    /// [`BackplaneError::Timeout`] when it did not answer in time,
    /// [`BackplaneError::TooLarge`] when the payload exceeds what the transport accepts,
    /// [`BackplaneError::Closed`] once the backplane is shut down.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: a dropped future has sent the payload whole or
    /// not at all.
    async fn publish(&self, payload: Bytes) -> Result<(), BackplaneError>;

    /// Starts receiving. The returned [`Subscription`] yields every payload published on the
    /// channel from now on, plus connection events. A cache calls this once, before it
    /// publishes anything.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] when the first subscription cannot be made (later
    /// losses are events on the subscription, not errors), [`BackplaneError::Closed`] once
    /// the backplane is shut down.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: a dropped future leaves no subscription behind.
    async fn subscribe(&self) -> Result<Subscription, BackplaneError>;

    /// The backplane's replay log, if it keeps one: every payload it publishes is also
    /// appended to a bounded log in the same atomic step, and delivered framed with its
    /// position ([`wire::logged`](crate::wire::logged)). With one, a receiver that lost
    /// messages reads exactly those again; without one (the default) every loss clears the
    /// receiver's cache. The full contract is in [`replay`](crate::replay).
    fn replay_log(&self) -> Option<&dyn ReplayLog> {
        None
    }
}

/// What a [`Subscription`] yields, and what the receiver must do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneEvent {
    /// A payload published by some instance (possibly this one). The receiver decodes it
    /// ([`wire::decode`](crate::wire::decode)); one that does not decode is counted and
    /// dropped, never a crash.
    Message(Bytes),
    /// The subscription was lost; payloads published from now on are missed until
    /// [`Reconnected`](Self::Reconnected). The receiver keeps serving from its cache for at
    /// most its `max_staleness`, then bypasses it until the backplane is back.
    Disconnected,
    /// The subscription is back after a loss. Payloads published in between were missed, so
    /// the receiver must assume its cache is stale: it clears itself (loss means clear). It
    /// keeps the peers' sequence numbers, so a message lost after the resubscription still
    /// shows as a gap.
    Reconnected,
    /// The subscriber fell behind and `missed` payloads were dropped before it read them.
    /// The receiver clears itself, as for [`Reconnected`](Self::Reconnected).
    Lagged {
        /// How many payloads were dropped.
        missed: u64,
    },
}

/// Why a backplane operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The transport is down or refused the operation; the operation may be retried.
    ///
    /// Made with [`BackplaneError::unavailable`] or [`BackplaneError::unavailable_because`].
    #[error("backplane unavailable: {reason}; invalidations are kept and retried on reconnect")]
    #[non_exhaustive]
    Unavailable {
        /// What failed, in the transport's terms (the underlying error is the `source`).
        reason: String,
        /// The transport's own error (the client library's, the operating system's), when
        /// there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The transport did not answer within the configured time.
    #[error("backplane did not answer within {0:?}; check that the server is reachable")]
    Timeout(Duration),
    /// The payload is larger than the transport accepts.
    #[error("payload of {size} bytes exceeds the backplane limit of {limit} bytes")]
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The largest payload accepted.
        limit: usize,
    },
    /// The backplane was shut down.
    #[error("backplane is shut down")]
    Closed,
}

impl BackplaneError {
    /// [`Unavailable`](Self::Unavailable) for a failure of the transport's own making, with no
    /// underlying error.
    #[must_use]
    pub fn unavailable(reason: impl Into<String>) -> Self {
        BackplaneError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    /// [`Unavailable`](Self::Unavailable) because of `source` (the client library's error,
    /// say), which error reporters show below `reason`: `reason` says what failed, not
    /// `source`'s words again.
    #[must_use]
    pub fn unavailable_because(
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        BackplaneError::Unavailable {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}
