//! The subscribing connection and the task that keeps it alive.
//!
//! # Mechanism, and why
//!
//! Each subscription owns one dedicated RESP3 `MultiplexedConnection` (not a
//! `ConnectionManager`) whose push sender is a [`Gate`], plus one task that watches it and
//! rebuilds it. The alternatives fall short:
//!
//! * A `ConnectionManager` with automatic resubscription swallows the errors of its
//!   resubscribe, and after its retries are exhausted it reconnects only when a command is
//!   sent; we would still need our own pings, our own confirmation and our own backoff, with
//!   less control over which connection a push came from.
//! * A RESP2 `aio::PubSub` ends its stream on disconnect, which is clear, but it cannot send
//!   `SSUBSCRIBE`, so sharded mode would need a second mechanism.
//!
//! With a plain RESP3 connection the task owns the whole life cycle:
//!
//! 1. connect (bounded by `connect_timeout`) to the node [`Target::resolve`] names now, send
//!    `SUBSCRIBE` or `SSUBSCRIBE` and await the server's confirmation: the subscription is
//!    confirmed, not assumed;
//! 2. watch: the connection's driver pushes `Disconnection` when the socket closes (server
//!    killed, `CLIENT KILL`), a `PING` every `ping_interval` (bounded by
//!    `publish_timeout`) catches a connection that died silently, and an `unsubscribe` or
//!    `sunsubscribe` of our channel that we never asked for (we never unsubscribe: we drop
//!    the connection) is a lost link too — Redis Cluster sends one when the channel's slot
//!    moves, and the `PING`s would go on succeeding on a connection that receives nothing;
//! 3. on loss: retire the gate (the old connection can no longer deliver anything), mark the
//!    link lost ([`BackplaneEvent::Disconnected`]: health is state in the subscription, not
//!    an event in its queue), log one warning, then retry with exponential backoff and
//!    jitter (a debug line per failed attempt);
//! 4. on success: the gate marks the link restored ([`BackplaneEvent::Reconnected`], a new
//!    generation) from inside the connection driver at the moment the server's subscribe
//!    confirmation is read — not before the server confirmed it; one info line with the
//!    outage's length.
//!
//! Messages go from the connection driver straight into the bounded [`EventSender`] (no
//! intermediate queue, no copy: the payload's `Vec` becomes the `Bytes`). The task ends as
//! soon as the [`Subscription`](nearcache_backplane::Subscription) is dropped (it waits on
//! [`EventSender::closed`] next to everything else, also while backing off or reconnecting
//! during an outage); the connection closes with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nearcache_backplane::{BackplaneEvent, EventSender};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{ReconnectBackoff, RedisConfig};
use crate::error::{Failure, RedisCause};
use crate::resolve::ResolveError;
use crate::status::{LinkState, StatusCell};
use crate::target::Target;

/// Where one connection's pushes go: into the subscription while the connection is current,
/// nowhere once it is retired.
#[derive(Debug)]
struct Gate {
    state: Mutex<GateState>,
    /// Wakes the task: the connection dropped, the server unsubscribed us, or the
    /// subscription was dropped.
    lost: Notify,
    channel: Bytes,
}

#[derive(Debug)]
struct GateState {
    /// `None` once retired.
    events: Option<EventSender>,
    /// Send `Reconnected` when the server confirms the subscription (every connection but the
    /// first).
    announce_reconnect: bool,
    /// The server unsubscribed this connection from our channel without being asked.
    unsubscribed: bool,
}

impl Gate {
    fn new(events: EventSender, announce_reconnect: bool, channel: Bytes) -> Self {
        Self {
            state: Mutex::new(GateState {
                events: Some(events),
                announce_reconnect,
                unsubscribed: false,
            }),
            lost: Notify::new(),
            channel,
        }
    }

    /// Stops forwarding: whatever the old connection still reads is dropped. Returns whether
    /// this gate had sent `Reconnected` (the server confirmed it before it was given up).
    fn retire(&self) -> bool {
        let mut state = self.state.lock();
        let announced = state.events.is_some() && !state.announce_reconnect;
        state.events = None;
        announced
    }

    fn on_push(&self, info: PushInfo) {
        let mut guard = self.state.lock();
        let GateState {
            events: slot,
            announce_reconnect,
            unsubscribed,
        } = &mut *guard;
        let Some(events) = slot.as_ref() else {
            return;
        };
        let delivered = match info.kind {
            PushKind::Message | PushKind::SMessage => match payload_of(info.data) {
                Some(payload) => events.send(BackplaneEvent::Message(payload)),
                None => {
                    debug!("ignoring a pub/sub push without a payload");
                    true
                }
            },
            PushKind::Subscribe | PushKind::SSubscribe
                if self.is_ours(&info.data) && *announce_reconnect =>
            {
                *announce_reconnect = false;
                events.send(BackplaneEvent::Reconnected)
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe if self.is_ours(&info.data) => {
                // Nothing more will arrive on this connection: stop forwarding and let the
                // task report the loss and subscribe again.
                *unsubscribed = true;
                drop(guard);
                self.lost.notify_one();
                return;
            }
            PushKind::Disconnection => {
                drop(guard);
                self.lost.notify_one();
                return;
            }
            _ => true,
        };
        if !delivered {
            // The subscription was dropped: stop forwarding and let the task end.
            *slot = None;
            drop(guard);
            self.lost.notify_one();
        }
    }
}

impl Gate {
    /// Whether a (un)subscribe push, `[channel, count]`, is about our channel.
    fn is_ours(&self, data: &[Value]) -> bool {
        matches!(data.first(), Some(Value::BulkString(name)) if name[..] == self.channel[..])
    }

    /// Whether the server unsubscribed this connection from our channel.
    fn unsubscribed(&self) -> bool {
        self.state.lock().unsubscribed
    }
}

/// `[channel, payload]` → the payload, without copying it.
fn payload_of(data: Vec<Value>) -> Option<Bytes> {
    match data.into_iter().nth(1) {
        Some(Value::BulkString(payload)) => Some(Bytes::from(payload)),
        _ => None,
    }
}

/// The push sender handed to the connection; a cheap handle on its [`Gate`].
#[derive(Debug, Clone)]
struct PushGate(Arc<Gate>);

impl AsyncPushSender for PushGate {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        self.0.on_push(info);
        Ok(())
    }
}

/// One live, confirmed subscription connection.
struct Link {
    con: MultiplexedConnection,
    gate: Arc<Gate>,
}

/// Why a link ended.
enum Loss {
    /// The connection is gone or unresponsive; reconnect.
    Connection(String),
    /// The subscription was dropped; stop.
    SubscriptionDropped,
}

/// Everything the subscriber task needs; owned by the task.
#[derive(Debug)]
pub(crate) struct Subscriber {
    target: Arc<Target>,
    status: Arc<StatusCell>,
    events: EventSender,
    channel: Bytes,
    sharded: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
    ping_interval: Duration,
    reconnect: ReconnectBackoff,
}

impl Subscriber {
    pub(crate) fn new(
        target: Arc<Target>,
        status: Arc<StatusCell>,
        config: &RedisConfig,
        events: EventSender,
    ) -> Self {
        Self {
            target,
            status,
            events,
            channel: Bytes::from(config.channel_name()),
            sharded: config.sharded,
            connect_timeout: config.connect_timeout,
            command_timeout: config.publish_timeout,
            ping_interval: config.ping_interval,
            reconnect: config.reconnect,
        }
    }

    /// Makes the first subscription and returns the task that keeps it alive.
    ///
    /// # Errors
    ///
    /// Why the first subscription failed (password scrubbed).
    pub(crate) async fn start(self) -> Result<impl Future<Output = ()> + Send, Failure> {
        let link = self.open(false).await?;
        self.status.set_subscriber(LinkState::Up);
        debug!(addr = %self.target.addr, "redis subscription confirmed");
        Ok(self.run(link))
    }

    /// Connects and subscribes; `Ok` once the server confirmed the subscription.
    ///
    /// A reconnection that is given up after its gate sent `Reconnected` (the confirmation
    /// raced the timeout) sends `Disconnected` again, so the events keep alternating.
    async fn open(&self, announce_reconnect: bool) -> Result<Link, Failure> {
        let gate = Arc::new(Gate::new(
            self.events.clone(),
            announce_reconnect,
            self.channel.clone(),
        ));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_push_sender(PushGate(gate.clone()));
        let target = &self.target;
        let channel = &self.channel[..];
        let sharded = self.sharded;
        let subscribe = async move {
            // The URL's node, or the cluster's slot owner / Sentinel's primary of right now.
            let node = target.resolve().await.map_err(ResolveError::into_failure)?;
            let subscribe = async {
                let mut con = node
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                if sharded {
                    // One channel, so exactly one confirmation answers it.
                    redis::cmd("SSUBSCRIBE")
                        .arg(channel)
                        .exec_async(&mut con)
                        .await?;
                } else {
                    con.subscribe(channel).await?;
                }
                Ok::<_, redis::RedisError>(con)
            };
            subscribe.await.map_err(|err| {
                Failure::because(
                    format!("cannot subscribe at {}", node.addr),
                    RedisCause::new(err, target.password()),
                )
            })
        };
        let reason = match tokio::time::timeout(self.connect_timeout, subscribe).await {
            Ok(Ok(con)) => return Ok(Link { con, gate }),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::new(format!(
                "no subscription at {} within connect_timeout ({:?})",
                self.target.addr, self.connect_timeout
            )),
        };
        if gate.retire() && announce_reconnect {
            self.events.send(BackplaneEvent::Disconnected);
        }
        Err(reason)
    }

    /// Keeps the subscription alive until the subscription is dropped.
    async fn run(self, mut link: Link) {
        let mut rng = StdRng::from_os_rng();
        let mut backoff = Backoff::new(self.reconnect);
        loop {
            let loss = self.watch(&mut link).await;
            link.gate.retire();
            drop(link);
            let reason = match loss {
                Loss::SubscriptionDropped => {
                    debug!(addr = %self.target.addr, "redis subscription dropped; subscriber stops");
                    return;
                }
                Loss::Connection(reason) => reason,
            };
            self.status.set_subscriber(LinkState::Down);
            if !self.events.send(BackplaneEvent::Disconnected) {
                return;
            }
            warn!(
                addr = %self.target.addr,
                url = %self.target.url,
                reason,
                "redis subscription lost; reconnecting with backoff (messages published meanwhile are missed)"
            );
            let outage = Instant::now();
            backoff.reset();
            link = loop {
                let attempt = async {
                    tokio::time::sleep(backoff.next_delay(&mut rng)).await;
                    self.open(true).await
                };
                let attempt = tokio::select! {
                    attempt = attempt => attempt,
                    () = self.events.closed() => {
                        debug!(addr = %self.target.addr, "redis subscription dropped during an outage; subscriber stops");
                        return;
                    }
                };
                match attempt {
                    Ok(link) => break link,
                    Err(reason) => debug!(
                        addr = %self.target.addr,
                        attempt = backoff.attempts(),
                        %reason,
                        "redis subscriber reconnection attempt failed"
                    ),
                }
            };
            self.status.set_subscriber(LinkState::Up);
            info!(
                addr = %self.target.addr,
                outage = ?outage.elapsed(),
                attempts = backoff.attempts(),
                "redis subscription is back; the cache is told to clear what it may have missed"
            );
        }
    }

    /// Waits until the link is lost or the subscription dropped, pinging meanwhile.
    async fn watch(&self, link: &mut Link) -> Loss {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate; the link was just confirmed
        loop {
            tokio::select! {
                () = self.events.closed() => return Loss::SubscriptionDropped,
                () = link.gate.lost.notified() => {
                    return if self.events.is_closed() {
                        Loss::SubscriptionDropped
                    } else if link.gate.unsubscribed() {
                        Loss::Connection(
                            "the server unsubscribed this connection from the channel \
                             (a cluster slot migration, or an administrator)"
                                .to_owned(),
                        )
                    } else {
                        Loss::Connection("connection closed".to_owned())
                    };
                }
                _ = ping.tick() => {
                    let ping_cmd = redis::cmd("PING");
                    let pong = ping_cmd.query_async::<()>(&mut link.con);
                    match tokio::time::timeout(self.command_timeout, pong).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => return Loss::Connection(self.target.describe(&err)),
                        Err(_) => {
                            return Loss::Connection(format!(
                                "no answer to PING within {:?}",
                                self.command_timeout
                            ));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use nearcache_backplane::Subscription;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    fn message(payload: &[u8]) -> PushInfo {
        push(PushKind::Message, vec![bulk(b"ch"), bulk(payload)])
    }

    /// The confirmation of a subscription to `channel`.
    fn subscribed(channel: &[u8]) -> PushInfo {
        push(PushKind::Subscribe, vec![bulk(channel), Value::Int(1)])
    }

    /// What a subscription reads for a payload handed on.
    fn handed_on(payload: &'static [u8]) -> Option<BackplaneEvent> {
        Some(BackplaneEvent::Message(Bytes::from_static(payload)))
    }

    /// A subscription, its sender, and a first connection's gate on channel `ch` forwarding
    /// to it (a first connection announces nothing).
    fn first_connection() -> (Gate, EventSender, Subscription) {
        let (events, sub) = Subscription::channel(16);
        let gate = Gate::new(events.clone(), false, Bytes::from_static(b"ch"));
        (gate, events, sub)
    }

    /// A later connection's gate on channel `ch`: it sends `Reconnected` once the server
    /// confirms the subscription.
    fn reconnecting_gate(events: &EventSender) -> Gate {
        Gate::new(events.clone(), true, Bytes::from_static(b"ch"))
    }

    #[tokio::test]
    async fn reconnected_precedes_the_messages_of_a_new_connection() {
        let (events, mut sub) = Subscription::channel(16);
        events.link_lost(); // the task reports the loss before it reconnects
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Disconnected));
        let gate = reconnecting_gate(&events);
        gate.on_push(subscribed(b"ch"));
        gate.on_push(message(b"m1"));
        gate.on_push(push(PushKind::SMessage, vec![bulk(b"ch"), bulk(b"m2")]));
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Reconnected));
        assert_eq!(sub.recv().await, handed_on(b"m1"));
        assert_eq!(sub.recv().await, handed_on(b"m2"));
    }

    #[tokio::test]
    async fn the_first_connection_and_other_channels_announce_nothing() {
        let (first, events, mut sub) = first_connection();
        first.on_push(subscribed(b"ch"));
        let other = reconnecting_gate(&events);
        other.on_push(subscribed(b"xx"));
        other.on_push(message(b"m"));
        assert_eq!(sub.recv().await, handed_on(b"m"));
    }

    #[tokio::test]
    async fn a_retired_gate_forwards_nothing() {
        let (gate, events, mut sub) = first_connection();
        gate.on_push(message(b"before"));
        assert!(gate.retire(), "a first connection counts as announced");
        gate.on_push(message(b"after"));
        events.send(BackplaneEvent::Disconnected);
        // Health is state and is reported first; the payload queued before it follows.
        assert_eq!(sub.recv().await, Some(BackplaneEvent::Disconnected));
        assert_eq!(sub.recv().await, handed_on(b"before"));
        assert_eq!(sub.try_recv(), None, "nothing after the retirement");
    }

    #[test]
    fn retire_tells_whether_reconnected_was_sent() {
        let (events, _sub) = Subscription::channel(16);
        let silent = reconnecting_gate(&events);
        assert!(!silent.retire());
        assert!(!silent.retire(), "retiring twice changes nothing");
        let announced = reconnecting_gate(&events);
        announced.on_push(subscribed(b"ch"));
        assert!(announced.retire());
    }

    #[tokio::test]
    async fn disconnection_and_a_dropped_subscription_wake_the_task() {
        let (gate, _, sub) = first_connection();
        gate.on_push(push(PushKind::Disconnection, vec![]));
        // A stored permit: the task finds it even though it was not waiting yet.
        gate.lost.notified().await;
        drop(sub);
        gate.on_push(message(b"x"));
        gate.lost.notified().await;
        assert!(gate.state.lock().events.is_none(), "stopped forwarding");
    }

    #[tokio::test]
    async fn an_unsolicited_unsubscribe_of_our_channel_is_a_lost_link() {
        for kind in [PushKind::Unsubscribe, PushKind::SUnsubscribe] {
            let (gate, _, _sub) = first_connection();
            gate.on_push(push(kind.clone(), vec![bulk(b"other"), Value::Int(1)]));
            assert!(!gate.unsubscribed(), "another channel is not ours");
            gate.on_push(push(kind.clone(), vec![bulk(b"ch"), Value::Int(0)]));
            assert!(gate.unsubscribed(), "{kind:?}");
            // A stored permit: the task finds it even though it was not waiting yet.
            tokio::time::timeout(Duration::from_secs(5), gate.lost.notified())
                .await
                .expect("the task is woken");
        }
    }

    #[test]
    fn payloads_are_taken_without_copy_and_junk_is_skipped() {
        let payload = b"opaque \x00\xff bytes".to_vec();
        let ptr = payload.as_ptr();
        let bytes = payload_of(vec![bulk(b"ch"), Value::BulkString(payload)]);
        assert_eq!(bytes.as_ref().map(|b| b.as_ptr()), Some(ptr));
        assert_eq!(payload_of(vec![bulk(b"ch")]), None);
        assert_eq!(payload_of(vec![bulk(b"ch"), Value::Int(3)]), None);
    }
}
