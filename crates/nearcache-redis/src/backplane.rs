//! [`RedisBackplane`]: the [`Backplane`] over Redis pub/sub, tying the publisher, the
//! subscriber task and the connection status together.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use nearcache_backplane::{
    Backplane, BackplaneError, LogPosition, LogRead, ReplayLog, Subscription,
};
use tokio::sync::watch;

use crate::config::RedisConfig;
use crate::error::{Failure, RedisBackplaneError};
use crate::publisher::Publisher;
use crate::status::{ConnectionStatus, StatusCell};
use crate::subscriber::Subscriber;
use crate::target::Target;
use crate::topology::Topology;

/// A [`Backplane`] over Redis pub/sub: one publishing connection, and one dedicated
/// subscribing connection per [`subscribe`](Backplane::subscribe) that reconnects on its own.
///
/// ```no_run
/// use nearcache_backplane::{Backplane, BackplaneEvent};
/// use nearcache_redis::{RedisBackplane, RedisConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let backplane = RedisBackplane::connect_with(RedisConfig {
///     url: "redis://:password@127.0.0.1:6379".into(),
///     ..RedisConfig::for_app("shop")
/// })
/// .await?;
/// let mut events = backplane.subscribe().await?;
/// backplane.publish(bytes::Bytes::from_static(b"opaque payload")).await?;
/// while let Some(event) = events.recv().await {
///     match event {
///         BackplaneEvent::Message(payload) => { /* decode and apply */ }
///         BackplaneEvent::Reconnected | BackplaneEvent::Lagged { .. } => { /* clear */ }
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Delivery and loss
///
/// Redis pub/sub is at-most-once. Whenever the subscription may have missed payloads, the
/// [`Subscription`] yields [`Disconnected`](nearcache_backplane::BackplaneEvent::Disconnected)
/// when the loss is noticed (socket closed, or a `PING` unanswered for
/// [`publish_timeout`](RedisConfig::publish_timeout); checked every
/// [`ping_interval`](RedisConfig::ping_interval)) and
/// [`Reconnected`](nearcache_backplane::BackplaneEvent::Reconnected) once a new subscription
/// is confirmed by the server, ahead of its first payload. Payloads are delivered verbatim,
/// in the order Redis delivered them; this backplane never decodes them.
///
/// # Publishing
///
/// Each [`publish`](Backplane::publish) is one `PUBLISH` (`SPUBLISH` when
/// [`sharded`](RedisConfig::sharded)) on a shared multiplexed connection, bounded by
/// [`publish_timeout`](RedisConfig::publish_timeout). While Redis is down it fails at once
/// with [`BackplaneError::Unavailable`] (or with [`BackplaneError::Timeout`] while a
/// connection attempt hangs) and the connection is re-established in the background; the
/// caller keeps and retries what failed.
///
/// # Lifetime
///
/// Needs a tokio runtime (with time and I/O enabled). Dropping the backplane closes the
/// publishing connection; a subscription's connection and task live until that
/// [`Subscription`] is dropped, and end at once when it is (also in the middle of an
/// outage's backoff or reconnection attempt). Nothing blocks or panics in `Drop`.
///
/// The URL's password never appears in `Debug`, `Display`, errors or logs.
pub struct RedisBackplane {
    config: RedisConfig,
    /// `config.channel_name()`, worked out once.
    channel: String,
    target: Arc<Target>,
    publisher: Publisher,
    status: Arc<StatusCell>,
    runtime: tokio::runtime::Handle,
}

impl RedisBackplane {
    /// Connects to the Redis at `url` with the default [`RedisConfig`] (channel
    /// `nearcache:default:invalidations`).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever connection it had opened.
    pub async fn connect(url: &str) -> Result<Self, RedisBackplaneError> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with `config`: validates it, opens the publishing connection and checks it
    /// with an authenticated `PING`, all within
    /// [`connect_timeout`](RedisConfig::connect_timeout). The subscribing connection is opened
    /// by [`subscribe`](Backplane::subscribe).
    ///
    /// # Errors
    ///
    /// * [`RedisBackplaneError::NoRuntime`] outside a tokio runtime;
    /// * [`RedisBackplaneError::InvalidUrl`], [`RedisBackplaneError::InvalidConfig`],
    ///   [`RedisBackplaneError::TlsNotEnabled`] for a configuration that cannot work;
    /// * [`RedisBackplaneError::Unreachable`] when nothing answers at the address;
    /// * [`RedisBackplaneError::Tls`] when the TLS handshake fails (untrusted certificate);
    /// * [`RedisBackplaneError::Auth`] for a wrong or missing password or user;
    /// * [`RedisBackplaneError::Timeout`] when connecting takes longer than `connect_timeout`;
    /// * [`RedisBackplaneError::Server`] when the server cannot serve (e.g. no RESP3);
    /// * for `redis+cluster://` and `redis+sentinel://` URLs,
    ///   [`RedisBackplaneError::NoNodeReachable`] when no seed or Sentinel answers,
    ///   [`RedisBackplaneError::SlotNotServed`] when no cluster node serves the channel's slot,
    ///   [`RedisBackplaneError::UnknownMaster`] when the Sentinels know no primary by the URL's
    ///   name.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever connection it had opened.
    pub async fn connect_with(mut config: RedisConfig) -> Result<Self, RedisBackplaneError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisBackplaneError::NoRuntime)?;
        let target = Arc::new(Target::new(&config)?);
        if matches!(target.parsed.topology, Topology::Cluster { .. }) {
            // On a cluster the channel lives on the shard owning its slot.
            config.sharded = true;
        }
        let status = Arc::new(StatusCell::new());
        let publisher = Publisher::connect(target.clone(), &config, status.clone()).await?;
        let channel = config.channel_name();
        tracing::debug!(url = %target.url, %channel, "redis backplane connected");
        Ok(Self {
            config,
            channel,
            target,
            publisher,
            status,
            runtime,
        })
    }

    /// The configuration this backplane was made with (its `Debug` hides the password).
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key of the replay log's Redis Stream (`{channel}:log`), or `None` when
    /// [`RedisConfig::replay_log_len`] is 0. `XLEN` and `MEMORY USAGE` on it show its size.
    pub fn replay_log_key(&self) -> Option<&str> {
        self.publisher.log().map(crate::replay::LogKeys::stream)
    }

    /// The pub/sub channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The connections' current state; see [`ConnectionStatus`]. Cheap (a read lock).
    pub fn status(&self) -> ConnectionStatus {
        self.status.get()
    }

    /// Whether nothing is known to be down; see [`ConnectionStatus::is_connected`].
    pub fn is_connected(&self) -> bool {
        self.status.get().is_connected()
    }

    /// A receiver that is notified whenever the [`ConnectionStatus`] changes (for health
    /// endpoints and metrics; the facade's reaction to loss is driven by the subscription's
    /// events, not by this).
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status.watch()
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    /// Sends one `PUBLISH` (or `SPUBLISH`); `Ok` once Redis acknowledged it.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::TooLarge`] above [`max_payload`](RedisConfig::max_payload) (nothing
    /// sent), [`BackplaneError::Unavailable`] when the connection is down or Redis refused
    /// the command, [`BackplaneError::Timeout`] when Redis did not acknowledge within
    /// [`publish_timeout`](RedisConfig::publish_timeout). After an error the payload may or
    /// may not have been delivered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the payload is sent whole or not at all, and the connection stays usable.
    async fn publish(&self, payload: Bytes) -> Result<(), BackplaneError> {
        self.publisher.publish(&payload).await
    }

    /// Opens a dedicated subscribing connection, subscribes and waits for the server's
    /// confirmation, then hands the connection to a background task that keeps it alive.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] when the first subscription cannot be made within
    /// [`connect_timeout`](RedisConfig::connect_timeout) (unreachable, refused, or the ACL
    /// user may not subscribe to the channel).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the connection it was opening; no task is
    /// left behind.
    async fn subscribe(&self) -> Result<Subscription, BackplaneError> {
        let (events, subscription) = Subscription::channel(self.config.subscriber_queue);
        let subscriber = Subscriber::new(
            self.target.clone(),
            self.status.clone(),
            &self.config,
            events,
        );
        let task = subscriber
            .start()
            .await
            .map_err(Failure::into_unavailable)?;
        self.runtime.spawn(task);
        Ok(subscription)
    }

    /// The Redis Stream log, unless [`RedisConfig::replay_log_len`] is 0.
    fn replay_log(&self) -> Option<&dyn ReplayLog> {
        if self.publisher.log().is_some() {
            Some(self)
        } else {
            None
        }
    }
}

/// The Redis Stream next to the channel (see [`RedisConfig::replay_log_len`]); read on the
/// publishing connection, each round trip bounded by `publish_timeout`.
#[async_trait]
impl ReplayLog for RedisBackplane {
    async fn head(&self) -> Result<LogPosition, BackplaneError> {
        let Some(log) = self.publisher.log() else {
            return Err(no_log());
        };
        let reply = self
            .publisher
            .run_script::<redis::Value>(&log.head_cmd())
            .await?;
        crate::replay::parse_head(&reply)
    }

    async fn read_after(&self, after: &LogPosition) -> Result<LogRead, BackplaneError> {
        let Some(log) = self.publisher.log() else {
            return Err(no_log());
        };
        crate::replay::read_all(after, |from| async move {
            self.publisher
                .run_script::<redis::Value>(&log.read_cmd(&from))
                .await
        })
        .await
    }
}

fn no_log() -> BackplaneError {
    BackplaneError::unavailable("this redis backplane keeps no replay log (replay_log_len is 0)")
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("url", &self.target.url)
            .field("channel", &self.channel)
            .field("sharded", &self.config.sharded)
            .field("status", &self.status.get())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn connect_outside_a_runtime_is_an_error_not_a_panic() {
        let mut connect = pin!(RedisBackplane::connect("redis://127.0.0.1:1"));
        let mut cx = Context::from_waker(Waker::noop());
        match connect.as_mut().poll(&mut cx) {
            Poll::Ready(Err(RedisBackplaneError::NoRuntime)) => {}
            other => panic!("expected NoRuntime, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bad_config_fails_before_connecting() {
        let err = RedisBackplane::connect_with(RedisConfig {
            url: "redis://:pw@127.0.0.1:1".into(),
            channel: Some(String::new()),
            ..RedisConfig::default()
        })
        .await
        .err();
        assert!(
            matches!(err, Some(RedisBackplaneError::InvalidConfig { .. })),
            "{err:?}"
        );
    }
}
