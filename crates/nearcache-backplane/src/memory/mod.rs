//! [`InMemoryBackplane`]: an in-process bus for tests, single-process apps and the demo, with
//! fault injection so the facade's loss paths (loss means clear) can be tested without Redis.
//!
//! Delivery happens synchronously inside `publish`, under one lock, into each subscriber's
//! bounded queue: no background task, so order and counts are exact and tests need no
//! sleeps. Cost: one lock and one queue push per subscriber per publish.

mod gate;
mod ring;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backplane::{Backplane, BackplaneError, BackplaneEvent};
use crate::replay::{LogPosition, LogRead, ReplayLog};
use crate::subscription::{EventSender, Subscription};
use crate::wire::logged;

use gate::Gate;
#[cfg(feature = "test-util")]
pub use gate::PublishGate;
use ring::Ring;

/// An in-process [`Backplane`]: every publish reaches every live subscription on the same
/// bus, the publisher's own included.
///
/// # Buses and connections
///
/// [`new`](Self::new) makes a bus and a first *connection* to it. Clones are the same
/// connection; [`connection`](Self::connection) makes another one on the same bus, the way
/// each instance of a service has its own Redis connection. Give each cache its own
/// connection when a test must fail one instance and not the others; share one when it
/// does not matter.
///
/// ```
/// use bytes::Bytes;
/// use nearcache_backplane::{Backplane, BackplaneEvent, InMemoryBackplane};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let bus = InMemoryBackplane::new();
/// let (a, b) = (bus.connection(), bus.connection());
/// let mut on_b = b.subscribe().await.unwrap();
/// a.publish(Bytes::from_static(b"hello")).await.unwrap();
/// assert_eq!(on_b.recv().await, Some(BackplaneEvent::Message(Bytes::from_static(b"hello"))));
/// assert_eq!(bus.delivered(), 1);
/// # });
/// ```
///
/// # Delivery
///
/// Synchronous: when `publish` returns `Ok`, the payload is in every live subscription's
/// queue (or was lost to an injected fault, as Redis would lose it: silently). Sequential
/// publishes through one connection arrive in order; concurrent ones in some order. Each
/// subscription has a bounded queue ([`with_queue_capacity`](Self::with_queue_capacity));
/// a subscriber that falls behind loses payloads and sees [`BackplaneEvent::Lagged`].
/// Dropped subscriptions are forgotten on the next publish.
///
/// # Replay log
///
/// [`with_replay_log`](Self::with_replay_log) gives the bus a bounded ring buffer of every
/// payload published on it ([`ReplayLog`]): appended under the same lock as the delivery
/// (so a payload lost to an injected fault is still in the log, as a message
/// Redis logged and then failed to deliver), and delivered framed with its position
/// ([`wire::logged`](crate::wire::logged)). Without it the bus has no log and
/// [`Backplane::replay_log`] is `None`.
#[cfg_attr(
    feature = "test-util",
    doc = r#"
# Faults (feature `test-util`)

Test hooks, not part of the semver-stable API.

```
use bytes::Bytes;
use nearcache_backplane::{Backplane, BackplaneEvent, InMemoryBackplane};

# tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
let bus = InMemoryBackplane::new();
let (a, b) = (bus.connection(), bus.connection());
let mut on_b = b.subscribe().await.unwrap();
b.disconnect(); // b's subscriptions see Disconnected; a is unaffected
a.publish(Bytes::from_static(b"missed")).await.unwrap();
b.reconnect();
// Connection health is state: b was down and is up again, so its subscription reads
// one `Reconnected` (it may have missed something).
assert_eq!(on_b.recv().await, Some(BackplaneEvent::Reconnected));
assert_eq!(bus.dropped(), 1);
# });
```

| call | effect |
|---|---|
| [`drop_next(n)`](Self::drop_next) | the next `n` publishes on the bus are lost for everyone; `publish` still returns `Ok` |
| [`drop_incoming(n)`](Self::drop_incoming) | the next `n` payloads reaching *this connection's* subscriptions are lost |
| [`disconnect`](Self::disconnect) | this connection's subscriptions get [`Disconnected`](BackplaneEvent::Disconnected) and miss everything; its `publish` and `subscribe` fail with [`Unavailable`](BackplaneError::Unavailable) |
| [`reconnect`](Self::reconnect) | undoes it; its subscriptions get [`Reconnected`](BackplaneEvent::Reconnected) |
| [`end_subscriptions`](Self::end_subscriptions) | this connection's subscriptions end (their `recv` returns `None`); the connection stays usable and can subscribe again |
| [`unsubscribe_silently`](Self::unsubscribe_silently) | this connection's subscriptions stop receiving anything, with no event, while the link reads as up (a server-side unsubscribe nobody reported); new subscriptions are unaffected |
| [`inject(bytes)`](Self::inject) | delivers raw bytes (garbage, a foreign or future message) to every subscription, as if another publisher sent them |
| [`hold_publishes`](Self::hold_publishes) | publishes wait "in flight" until the returned [`PublishGate`] lets them go |
| [`set_publish_latency`](Self::set_publish_latency) | every publish waits this long before delivering |
| [`close`](Self::close) | ends every subscription; publishes fail with [`Closed`](BackplaneError::Closed) |
| [`trim_log(keep)`](Self::trim_log) | the replay log forgets all but its newest `keep` entries |
| [`recreate_log`](Self::recreate_log) | the replay log starts over, empty, in a new epoch (a restart without persistence) |
| [`fail_log_reads(n)`](Self::fail_log_reads) | the next `n` reads of the replay log fail with [`Unavailable`](BackplaneError::Unavailable) |
| [`hold_log_reads`](Self::hold_log_reads) | reads of the replay log wait until the returned [`PublishGate`] lets them go |

Receiving-side faults (a disconnected connection, `drop_incoming`) apply to injected
payloads too; publishing-side ones (`drop_next`, the gate, latency) do not.
"#
)]
#[derive(Clone)]
pub struct InMemoryBackplane {
    bus: Arc<Bus>,
    conn: Arc<Connection>,
}

/// What the connections of one bus share.
struct Bus {
    state: Mutex<BusState>,
    gate: Arc<Gate>,
    /// Holds reads of the replay log ([`InMemoryBackplane::hold_log_reads`]).
    log_gate: Arc<Gate>,
    queue_capacity: usize,
    latency_nanos: AtomicU64,
    next_connection: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

struct BusState {
    subscribers: Vec<Subscriber>,
    /// Subscriptions the bus stopped feeding without telling them
    /// ([`InMemoryBackplane::unsubscribe_silently`]): kept so their stream does not end.
    deaf: Vec<Subscriber>,
    drop_next: u64,
    closed: bool,
    /// The replay log, when the bus keeps one.
    log: Option<Ring>,
    /// Reads of the replay log still to fail.
    fail_log_reads: u64,
}

struct Subscriber {
    conn: Arc<Connection>,
    sender: EventSender,
}

/// One connection's fault state. Atomics only so it can be shared; every change happens
/// under the bus lock, so events and deliveries are ordered with it.
struct Connection {
    id: u64,
    connected: AtomicBool,
    drop_incoming: AtomicU64,
}

impl InMemoryBackplane {
    /// The queue capacity of each subscription made by [`new`](Self::new).
    pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

    /// A new bus, and a connection to it.
    #[must_use]
    pub fn new() -> Self {
        Self::with_queue_capacity(Self::DEFAULT_QUEUE_CAPACITY)
    }

    /// A new bus whose subscriptions each queue up to `capacity` events (at least 1) before
    /// they lose payloads and report [`BackplaneEvent::Lagged`].
    #[must_use]
    pub fn with_queue_capacity(capacity: usize) -> Self {
        let bus = Arc::new(Bus {
            state: Mutex::new(BusState {
                subscribers: Vec::new(),
                deaf: Vec::new(),
                drop_next: 0,
                closed: false,
                log: None,
                fail_log_reads: 0,
            }),
            gate: Arc::new(Gate::new()),
            log_gate: Arc::new(Gate::new()),
            queue_capacity: capacity.max(1),
            latency_nanos: AtomicU64::new(0),
            next_connection: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        Self::connect(bus)
    }

    /// The same bus, now keeping a replay log of its newest `capacity` payloads (at least 1);
    /// see [Replay log](Self#replay-log). Call it on a new bus, before publishing.
    #[must_use]
    pub fn with_replay_log(self, capacity: usize) -> Self {
        self.bus.lock().log = Some(Ring::new(capacity.max(1)));
        self
    }

    /// Makes the replay log forget all but its newest `keep` entries, as a bounded log does
    /// under load. No effect without a log.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn trim_log(&self, keep: usize) {
        if let Some(log) = self.bus.lock().log.as_mut() {
            log.trim(keep);
        }
    }

    /// Starts the replay log over, empty, in a new epoch: what a Redis restart without
    /// persistence does to its stream. No effect without a log.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn recreate_log(&self) {
        if let Some(log) = self.bus.lock().log.as_mut() {
            log.recreate();
        }
    }

    /// Makes the next `n` reads of the replay log ([`ReplayLog::head`] and
    /// [`ReplayLog::read_after`], from any connection) fail with
    /// [`BackplaneError::Unavailable`]. Adds to any count pending.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn fail_log_reads(&self, n: u64) {
        let mut state = self.bus.lock();
        state.fail_log_reads = state.fail_log_reads.saturating_add(n);
    }

    /// Holds every read of the replay log on the bus until the returned gate lets it go
    /// (the gate counts held reads instead of publishes).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn hold_log_reads(&self) -> PublishGate {
        self.bus.log_gate.hold()
    }

    /// Payloads in the replay log now (0 without one).
    #[must_use]
    pub fn log_len(&self) -> usize {
        self.bus.lock().log.as_ref().map_or(0, Ring::len)
    }

    /// Another connection to the same bus, with its own fault state (connected, fresh).
    #[must_use]
    pub fn connection(&self) -> Self {
        Self::connect(self.bus.clone())
    }

    fn connect(bus: Arc<Bus>) -> Self {
        let id = bus.next_connection.fetch_add(1, Ordering::Relaxed);
        Self {
            bus,
            conn: Arc::new(Connection {
                id,
                connected: AtomicBool::new(true),
                drop_incoming: AtomicU64::new(0),
            }),
        }
    }

    /// This connection's number on its bus (0 for the one [`new`](Self::new) made), for
    /// logs and `Debug`.
    #[must_use]
    pub fn connection_id(&self) -> u64 {
        self.conn.id
    }

    /// Whether this connection is up: always, unless a test took it down (`disconnect`,
    /// feature `test-util`).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.conn.connected.load(Ordering::Relaxed)
    }

    /// Loses the next `n` publishes on the bus, from any connection, for every subscriber,
    /// silently: `publish` returns `Ok` and nobody is told, as with Redis pub/sub. Adds to any
    /// count already pending.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn drop_next(&self, n: u64) {
        let mut state = self.bus.lock();
        state.drop_next = state.drop_next.saturating_add(n);
        tracing::debug!(n, "in-memory backplane: dropping the next publishes");
    }

    /// Loses the next `n` payloads that reach this connection's subscriptions (published or
    /// injected), silently. Other connections still get them. Adds to any count pending.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn drop_incoming(&self, n: u64) {
        let _state = self.bus.lock();
        let pending = self.conn.drop_incoming.load(Ordering::Relaxed);
        self.conn
            .drop_incoming
            .store(pending.saturating_add(n), Ordering::Relaxed);
        tracing::debug!(
            connection = self.conn.id,
            n,
            "in-memory backplane: dropping incoming"
        );
    }

    /// Takes this connection down: its subscriptions get [`BackplaneEvent::Disconnected`]
    /// and miss every payload until [`reconnect`](Self::reconnect); its `publish` and
    /// `subscribe` fail with [`BackplaneError::Unavailable`]. No effect if already down.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn disconnect(&self) {
        self.set_connected(false, BackplaneEvent::Disconnected);
    }

    /// Brings this connection back: its subscriptions get [`BackplaneEvent::Reconnected`]
    /// (they missed whatever was published meanwhile). No effect if already up.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn reconnect(&self) {
        self.set_connected(true, BackplaneEvent::Reconnected);
    }

    #[cfg(feature = "test-util")]
    fn set_connected(&self, up: bool, event: BackplaneEvent) {
        let mut state = self.bus.lock();
        if self.conn.connected.swap(up, Ordering::Relaxed) == up {
            return;
        }
        tracing::debug!(
            connection = self.conn.id,
            up,
            "in-memory backplane: connection"
        );
        let conn = &self.conn;
        state
            .subscribers
            .retain(|sub| !Arc::ptr_eq(&sub.conn, conn) || sub.sender.send(event.clone()));
    }

    /// Ends this connection's subscriptions: their `recv` returns `None` once drained, as
    /// when a backplane gives up on a subscription. The connection stays up and can
    /// subscribe again.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn end_subscriptions(&self) {
        let mut state = self.bus.lock();
        let conn = &self.conn;
        state
            .subscribers
            .retain(|sub| !Arc::ptr_eq(&sub.conn, conn));
        state.deaf.retain(|sub| !Arc::ptr_eq(&sub.conn, conn));
        tracing::debug!(
            connection = conn.id,
            "in-memory backplane: subscriptions ended"
        );
    }

    /// Stops feeding this connection's current subscriptions without telling them: no
    /// payload reaches them any more, no event says so, and their link reads as up — what a
    /// server-side unsubscribe, an ACL change or a proxy that lost the subscription looks
    /// like to a client. Only hearing nothing (not even its own heartbeats) can reveal it.
    /// Subscriptions made afterwards receive normally.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn unsubscribe_silently(&self) {
        let mut state = self.bus.lock();
        let conn = self.conn.clone();
        let (deaf, live): (Vec<_>, Vec<_>) = std::mem::take(&mut state.subscribers)
            .into_iter()
            .partition(|sub| Arc::ptr_eq(&sub.conn, &conn));
        state.subscribers = live;
        state.deaf.retain(|sub| !sub.sender.is_closed());
        state.deaf.extend(deaf);
        tracing::debug!(
            connection = conn.id,
            "in-memory backplane: subscriptions silently unsubscribed"
        );
    }

    /// Delivers `payload` verbatim to every subscription on the bus as a
    /// [`BackplaneEvent::Message`], as if some other publisher had sent it: garbage, a
    /// foreign message, one from a future format version. Not counted as published.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn inject(&self, payload: Bytes) {
        let mut state = self.bus.lock();
        self.bus.deliver(&mut state, &payload);
    }

    /// Holds every publish on the bus "in flight" — after it was called, before it delivers
    /// — until the returned gate lets it go. See [`PublishGate`].
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn hold_publishes(&self) -> PublishGate {
        self.bus.gate.hold()
    }

    /// Makes every publish on the bus wait `latency` before delivering (zero, the default,
    /// waits not at all). A non-zero latency uses `tokio::time`, so publishing then needs a
    /// tokio runtime with time enabled (a paused clock works).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn set_publish_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.bus.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Shuts the bus down: every subscription ends (its `recv` returns `None` once drained),
    /// and `publish` and `subscribe` fail with [`BackplaneError::Closed`] on every connection.
    pub fn close(&self) {
        let mut state = self.bus.lock();
        state.closed = true;
        state.subscribers.clear();
        state.deaf.clear();
    }

    /// Publishes accepted on the bus (returned `Ok`), including those lost to an injected
    /// fault (`drop_next`, feature `test-util`).
    #[must_use]
    pub fn published(&self) -> u64 {
        self.bus.published.load(Ordering::Relaxed)
    }

    /// Payloads handed to subscriptions' queues, one per subscription, injected ones
    /// included. (A full queue may still drop one; its subscriber sees `Lagged`.)
    #[must_use]
    pub fn delivered(&self) -> u64 {
        self.bus.delivered.load(Ordering::Relaxed)
    }

    /// Payloads lost to injected faults (feature `test-util`), one per subscription that
    /// missed one (`drop_next`, `drop_incoming`, a disconnected connection); 0 without them.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.bus.dropped.load(Ordering::Relaxed)
    }

    /// Live subscriptions on the bus (dropped ones are forgotten first).
    #[must_use]
    pub fn subscribers(&self) -> usize {
        let mut state = self.bus.lock();
        state.subscribers.retain(|sub| !sub.sender.is_closed());
        state.subscribers.len()
    }

    fn unavailable() -> BackplaneError {
        BackplaneError::unavailable(
            "in-memory backplane connection is disconnected \
             (InMemoryBackplane::disconnect); reconnect() restores it",
        )
    }
}

impl Bus {
    /// Nothing under this lock can panic, so poisoning would only come from a bug elsewhere
    /// in the process; the state stays consistent, so keep going.
    fn lock(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// Hands `payload` to every live subscription, applying receiving-side faults, and
    /// forgets dropped subscriptions.
    fn deliver(&self, state: &mut BusState, payload: &Bytes) {
        // Connections that lose this payload: `drop_incoming` counts payloads, not
        // subscriptions, so a connection is charged once however many it has.
        let mut losing: Vec<u64> = Vec::new();
        let (mut delivered, mut dropped) = (0, 0);
        state.subscribers.retain(|sub| {
            if sub.sender.is_closed() {
                return false;
            }
            let conn = &sub.conn;
            let lost = !conn.connected.load(Ordering::Relaxed)
                || losing.contains(&conn.id)
                || match conn.drop_incoming.load(Ordering::Relaxed) {
                    0 => false,
                    pending => {
                        conn.drop_incoming.store(pending - 1, Ordering::Relaxed);
                        losing.push(conn.id);
                        true
                    }
                };
            if lost {
                dropped += 1;
                return true;
            }
            delivered += 1;
            sub.sender.send(BackplaneEvent::Message(payload.clone()))
        });
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

impl Default for InMemoryBackplane {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Backplane for InMemoryBackplane {
    /// Waits at the gate and for the latency if either is set, then delivers to every
    /// subscription before returning.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] while this connection is disconnected,
    /// [`BackplaneError::Closed`] once the bus is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: until it delivers (all at once, without awaiting) nothing happened.
    async fn publish(&self, payload: Bytes) -> Result<(), BackplaneError> {
        self.bus.gate.pass().await;
        let latency = self.bus.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut state = self.bus.lock();
        if state.closed {
            return Err(BackplaneError::Closed);
        }
        if !self.is_connected() {
            return Err(Self::unavailable());
        }
        self.bus.published.fetch_add(1, Ordering::Relaxed);
        // Logged in the same step as it is handed out: in both or in neither.
        let payload = match state.log.as_mut() {
            Some(log) => logged::frame(log.append(payload.clone()), &payload),
            None => payload,
        };
        if state.drop_next > 0 {
            state.drop_next -= 1;
            state.subscribers.retain(|sub| !sub.sender.is_closed());
            let missed = state.subscribers.len() as u64;
            self.bus.dropped.fetch_add(missed, Ordering::Relaxed);
            tracing::debug!(missed, "in-memory backplane: publish dropped by drop_next");
            return Ok(());
        }
        self.bus.deliver(&mut state, &payload);
        Ok(())
    }

    /// A new subscription on this connection, receiving everything published on the bus
    /// from now on.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] while this connection is disconnected,
    /// [`BackplaneError::Closed`] once the bus is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it completes without awaiting.
    async fn subscribe(&self) -> Result<Subscription, BackplaneError> {
        let mut state = self.bus.lock();
        if state.closed {
            return Err(BackplaneError::Closed);
        }
        if !self.is_connected() {
            return Err(Self::unavailable());
        }
        let (sender, subscription) = Subscription::channel(self.bus.queue_capacity);
        state.subscribers.push(Subscriber {
            conn: self.conn.clone(),
            sender,
        });
        Ok(subscription)
    }

    /// The bus's ring buffer, when it keeps one ([`with_replay_log`](Self::with_replay_log)).
    fn replay_log(&self) -> Option<&dyn ReplayLog> {
        if self.bus.lock().log.is_some() {
            Some(self)
        } else {
            None
        }
    }
}

impl InMemoryBackplane {
    /// What every read of the replay log goes through: the gate, then the faults.
    async fn log_read<T>(&self, read: impl FnOnce(&Ring) -> T) -> Result<T, BackplaneError> {
        self.bus.log_gate.pass().await;
        let mut state = self.bus.lock();
        if state.closed {
            return Err(BackplaneError::Closed);
        }
        if !self.is_connected() {
            return Err(Self::unavailable());
        }
        if state.fail_log_reads > 0 {
            state.fail_log_reads -= 1;
            return Err(BackplaneError::unavailable(
                "in-memory backplane: injected replay log read failure \
                 (InMemoryBackplane::fail_log_reads)",
            ));
        }
        match state.log.as_ref() {
            Some(log) => Ok(read(log)),
            None => Err(BackplaneError::unavailable(
                "in-memory backplane has no replay log (InMemoryBackplane::with_replay_log)",
            )),
        }
    }
}

#[async_trait]
impl ReplayLog for InMemoryBackplane {
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] while this connection is disconnected or a read
    /// failure is injected, [`BackplaneError::Closed`] once the bus is closed.
    async fn head(&self) -> Result<LogPosition, BackplaneError> {
        self.log_read(Ring::head).await
    }

    /// # Errors
    ///
    /// As [`head`](Self::head).
    async fn read_after(&self, after: &LogPosition) -> Result<LogRead, BackplaneError> {
        self.log_read(|log| log.read_after(after)).await
    }
}

impl fmt::Debug for InMemoryBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryBackplane")
            .field("connection", &self.conn.id)
            .field("connected", &self.is_connected())
            .field("published", &self.published())
            .field("delivered", &self.delivered())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Runs `task(i)` for each `i` in `0..n` on a task of its own; each reports its `i` on
    /// the returned channel once its `task` is done.
    pub(super) fn spawn_reporting<F>(
        n: u64,
        task: impl Fn(u64) -> F,
    ) -> tokio::sync::mpsc::UnboundedReceiver<u64>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..n {
            let run = task(i);
            let done = done_tx.clone();
            tokio::spawn(async move {
                run.await;
                done.send(i).unwrap();
            });
        }
        done_rx
    }

    fn payload(i: u64) -> Bytes {
        Bytes::from(i.to_be_bytes().to_vec())
    }

    fn msg(i: u64) -> BackplaneEvent {
        BackplaneEvent::Message(payload(i))
    }

    /// The next event; the timeout only turns a bug into a failure instead of a hang.
    async fn next(sub: &mut Subscription) -> BackplaneEvent {
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("no event within 5 s")
            .expect("the subscription ended")
    }

    fn unavailable<T: fmt::Debug>(result: Result<T, BackplaneError>) -> bool {
        matches!(result, Err(BackplaneError::Unavailable { .. }))
    }

    /// Spawns `publishers` tasks, each on its own connection to `bus`, that wait at
    /// `barrier` and then publish `each` payloads numbered `p << 32 | i` in order. With
    /// `yielding`, each task yields after every publish (publish itself does not yield), to
    /// make room for other tasks.
    fn spawn_publishers(
        bus: &InMemoryBackplane,
        publishers: u64,
        each: u64,
        barrier: &Arc<tokio::sync::Barrier>,
        yielding: bool,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..publishers)
            .map(|p| {
                let conn = bus.connection();
                let barrier = Arc::clone(barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    for i in 0..each {
                        conn.publish(payload(p << 32 | i)).await.unwrap();
                        if yielding {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect()
    }

    /// A bus and two more connections to it, each with one subscription.
    async fn two_subscribed() -> (InMemoryBackplane, [(InMemoryBackplane, Subscription); 2]) {
        let bus = InMemoryBackplane::new();
        let (a, b) = (bus.connection(), bus.connection());
        let on_a = a.subscribe().await.unwrap();
        let on_b = b.subscribe().await.unwrap();
        (bus, [(a, on_a), (b, on_b)])
    }

    #[tokio::test]
    async fn fans_out_to_three_subscribers_in_publish_order() {
        let bus = InMemoryBackplane::new();
        let mut subs = Vec::new();
        for _ in 0..3 {
            subs.push(bus.connection().subscribe().await.unwrap());
        }
        let publisher = bus.connection();
        for i in 0..100 {
            publisher.publish(payload(i)).await.unwrap();
        }
        for sub in &mut subs {
            for i in 0..100 {
                assert_eq!(next(sub).await, msg(i));
            }
            assert_eq!(sub.try_recv(), None);
        }
        assert_eq!(
            (bus.published(), bus.delivered(), bus.dropped()),
            (100, 300, 0)
        );
    }

    /// Many publishers at once, on many threads, ten times over: every subscriber gets
    /// every payload, and each publisher's in the order it published them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_each_arrive_in_order_everywhere() {
        const PUBLISHERS: u64 = 8;
        const EACH: u64 = 200;
        for _round in 0..10 {
            let bus = InMemoryBackplane::with_queue_capacity((PUBLISHERS * EACH) as usize);
            let mut subs = Vec::new();
            for _ in 0..3 {
                subs.push(bus.connection().subscribe().await.unwrap());
            }
            let barrier = Arc::new(tokio::sync::Barrier::new(PUBLISHERS as usize));
            let tasks = spawn_publishers(&bus, PUBLISHERS, EACH, &barrier, false);
            for task in tasks {
                task.await.unwrap();
            }
            for sub in &mut subs {
                let mut next_of = [0u64; PUBLISHERS as usize];
                for _ in 0..PUBLISHERS * EACH {
                    let BackplaneEvent::Message(bytes) = next(sub).await else {
                        panic!("not a message");
                    };
                    let value = u64::from_be_bytes(bytes[..].try_into().unwrap());
                    let (p, i) = ((value >> 32) as usize, value & 0xffff_ffff);
                    assert_eq!(i, next_of[p], "publisher {p} out of order");
                    next_of[p] += 1;
                }
                assert_eq!(next_of, [EACH; PUBLISHERS as usize]);
                assert_eq!(sub.try_recv(), None);
            }
        }
    }

    #[tokio::test]
    async fn the_publisher_hears_its_own_echo() {
        let bus = InMemoryBackplane::new();
        let mut own = bus.subscribe().await.unwrap();
        bus.publish(payload(7)).await.unwrap();
        assert_eq!(next(&mut own).await, msg(7));
    }

    #[tokio::test]
    async fn drop_next_loses_publishes_for_everyone_silently() {
        let bus = InMemoryBackplane::new();
        let mut a = bus.connection().subscribe().await.unwrap();
        let mut b = bus.connection().subscribe().await.unwrap();
        bus.drop_next(2);
        for i in 0..3 {
            bus.publish(payload(i)).await.unwrap(); // Ok even when lost, as with Redis
        }
        for sub in [&mut a, &mut b] {
            assert_eq!(next(sub).await, msg(2));
            assert_eq!(sub.try_recv(), None);
        }
        assert_eq!((bus.published(), bus.delivered(), bus.dropped()), (3, 2, 4));
    }

    #[tokio::test]
    async fn drop_incoming_targets_one_connection_once_per_payload() {
        let (bus, [(a, mut on_a), (b, mut on_b1)]) = two_subscribed().await;
        let mut on_b2 = b.subscribe().await.unwrap();
        b.drop_incoming(1);
        a.publish(payload(1)).await.unwrap();
        a.publish(payload(2)).await.unwrap();
        assert_eq!(next(&mut on_a).await, msg(1));
        assert_eq!(next(&mut on_a).await, msg(2));
        for sub in [&mut on_b1, &mut on_b2] {
            assert_eq!(next(sub).await, msg(2));
            assert_eq!(sub.try_recv(), None);
        }
        assert_eq!(bus.dropped(), 2);
    }

    #[tokio::test]
    async fn disconnect_and_reconnect_one_connection() {
        let (bus, [(a, mut on_a), (b, mut on_b)]) = two_subscribed().await;

        b.disconnect();
        b.disconnect(); // idempotent: one event
        assert!(!b.is_connected() && a.is_connected());
        assert_eq!(next(&mut on_b).await, BackplaneEvent::Disconnected);
        assert!(unavailable(b.publish(payload(0)).await));
        assert!(unavailable(b.subscribe().await));

        a.publish(payload(1)).await.unwrap();
        assert_eq!(next(&mut on_a).await, msg(1));
        assert_eq!(
            on_b.try_recv(),
            None,
            "a disconnected subscriber misses payloads"
        );
        assert_eq!(bus.dropped(), 1);

        b.reconnect();
        b.reconnect();
        assert_eq!(next(&mut on_b).await, BackplaneEvent::Reconnected);
        b.publish(payload(2)).await.unwrap();
        assert_eq!(next(&mut on_a).await, msg(2));
        assert_eq!(next(&mut on_b).await, msg(2));
        assert_eq!(on_b.try_recv(), None);
    }

    /// Flapping one connection while others publish from many threads and a reader drains
    /// its subscription at the same time: every payload is either delivered or counted as
    /// dropped, `Disconnected` is reported only to a reader that believed the link up, and
    /// the reader ends believing what is true (up, and re-established at least once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn connection_health_and_payloads_stay_consistent_under_concurrency() {
        const PUBLISHERS: u64 = 4;
        const EACH: u64 = 500;
        for _round in 0..5 {
            let bus = InMemoryBackplane::with_queue_capacity(10_000);
            let flapping = bus.connection();
            let mut sub = flapping.subscribe().await.unwrap();
            let barrier = Arc::new(tokio::sync::Barrier::new(PUBLISHERS as usize + 1));
            // Yielding between publishes makes room for the flapping.
            let mut tasks = spawn_publishers(&bus, PUBLISHERS, EACH, &barrier, true);
            tasks.push(tokio::spawn({
                let flapping = flapping.clone();
                async move {
                    barrier.wait().await;
                    for _ in 0..50 {
                        flapping.disconnect();
                        tokio::task::yield_now().await;
                        flapping.reconnect();
                        tokio::task::yield_now().await;
                    }
                }
            }));
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let reader = tokio::spawn(async move {
                let (mut up, mut messages, mut reconnects) = (true, 0u64, 0u64);
                let mut on_event = |event| match event {
                    BackplaneEvent::Disconnected => {
                        assert!(up, "Disconnected reported twice");
                        up = false;
                    }
                    BackplaneEvent::Reconnected => {
                        up = true;
                        reconnects += 1;
                    }
                    BackplaneEvent::Message(_) => messages += 1,
                    other => panic!("unexpected {other:?}"),
                };
                loop {
                    tokio::select! {
                        event = sub.recv() => on_event(event.unwrap()),
                        _ = &mut stopped => break,
                    }
                }
                while let Some(event) = sub.try_recv() {
                    on_event(event);
                }
                (up, messages, reconnects)
            });
            for task in tasks {
                task.await.unwrap();
            }
            stop.send(()).unwrap();
            let (up, messages, reconnects) = reader.await.unwrap();
            assert!(up, "the link is up at the end");
            assert!(reconnects >= 1, "the reader learnt that the link was lost");
            assert_eq!(messages + bus.dropped(), PUBLISHERS * EACH);
        }
    }

    #[tokio::test]
    async fn ended_subscriptions_end_and_the_connection_subscribes_again() {
        let (_bus, [(a, mut on_a), (b, mut on_b)]) = two_subscribed().await;
        b.end_subscriptions();
        assert_eq!(on_b.recv().await, None);
        let mut again = b.subscribe().await.unwrap();
        a.publish(payload(1)).await.unwrap();
        assert_eq!(next(&mut again).await, msg(1));
        assert_eq!(next(&mut on_a).await, msg(1));
    }

    #[tokio::test]
    async fn a_silently_unsubscribed_subscription_hears_nothing_and_is_told_nothing() {
        let bus = InMemoryBackplane::new();
        let (a, b) = (bus.connection(), bus.connection());
        let mut deaf = b.subscribe().await.unwrap();
        b.unsubscribe_silently();
        let mut fresh = b.subscribe().await.unwrap();
        a.publish(payload(1)).await.unwrap();
        b.publish(payload(2)).await.unwrap();
        assert_eq!(next(&mut fresh).await, msg(1));
        assert_eq!(next(&mut fresh).await, msg(2));
        assert_eq!(deaf.try_recv(), None, "no payload and no event");
        assert!(deaf.link().connected);
        let waiting = tokio::time::timeout(Duration::from_millis(20), deaf.recv()).await;
        assert!(waiting.is_err(), "the stream has not ended either");
    }

    #[tokio::test]
    async fn a_full_queue_loses_payloads_and_reports_lag() {
        let bus = InMemoryBackplane::with_queue_capacity(2);
        let mut sub = bus.subscribe().await.unwrap();
        for i in 0..5 {
            bus.publish(payload(i)).await.unwrap();
        }
        assert_eq!(next(&mut sub).await, BackplaneEvent::Lagged { missed: 3 });
        assert_eq!(next(&mut sub).await, msg(0));
        assert_eq!(next(&mut sub).await, msg(1));
        assert_eq!(sub.try_recv(), None);
        // A lagging subscriber does not slow the others: it was handed all five.
        assert_eq!(bus.delivered(), 5);
    }

    #[tokio::test]
    async fn dropped_subscriptions_are_forgotten() {
        let bus = InMemoryBackplane::new();
        let kept = bus.subscribe().await.unwrap();
        let gone = bus.subscribe().await.unwrap();
        assert_eq!(bus.subscribers(), 2);
        drop(gone);
        assert_eq!(bus.subscribers(), 1);
        bus.publish(payload(0)).await.unwrap();
        assert_eq!(bus.delivered(), 1);
        drop(kept);
        bus.publish(payload(1)).await.unwrap();
        assert_eq!((bus.delivered(), bus.subscribers()), (1, 0));
    }

    #[tokio::test]
    async fn injected_bytes_arrive_verbatim_on_every_connected_subscription() {
        let bus = InMemoryBackplane::new();
        let (a, b, c) = (bus.connection(), bus.connection(), bus.connection());
        let mut on_a = a.subscribe().await.unwrap();
        let mut on_b = b.subscribe().await.unwrap();
        let mut on_c = c.subscribe().await.unwrap();
        c.disconnect();
        assert_eq!(next(&mut on_c).await, BackplaneEvent::Disconnected);
        let garbage = Bytes::from_static(b"\xffNCB\x09not a message\x00");
        bus.inject(garbage.clone());
        for sub in [&mut on_a, &mut on_b] {
            assert_eq!(next(sub).await, BackplaneEvent::Message(garbage.clone()));
        }
        assert_eq!(on_c.try_recv(), None);
        assert_eq!((bus.published(), bus.delivered(), bus.dropped()), (0, 2, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_publishes_wait_until_the_gate_lets_them_go() {
        let bus = InMemoryBackplane::new();
        let mut sub = bus.subscribe().await.unwrap();
        let gate = bus.hold_publishes();
        let mut done_rx = spawn_reporting(3, |i| {
            let conn = bus.connection();
            async move { conn.publish(payload(i)).await.unwrap() }
        });
        gate.wait_held(3).await;
        assert_eq!((bus.published(), bus.delivered()), (0, 0));

        gate.release_one();
        let first = done_rx.recv().await.unwrap();
        assert_eq!(next(&mut sub).await, msg(first));
        assert_eq!((bus.published(), gate.held()), (1, 2));

        gate.release();
        done_rx.recv().await.unwrap();
        done_rx.recv().await.unwrap();
        assert_eq!(bus.published(), 3);
        // Once open, publishing does not wait.
        bus.publish(payload(9)).await.unwrap();
        assert_eq!(bus.published(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_delivery_and_a_cancelled_publish_delivers_nothing() {
        let bus = InMemoryBackplane::new();
        let mut sub = bus.subscribe().await.unwrap();
        bus.set_publish_latency(Duration::from_millis(250));

        let early = tokio::time::timeout(Duration::from_millis(100), bus.publish(payload(0))).await;
        assert!(early.is_err(), "the publish finished before its latency");
        assert_eq!((bus.published(), bus.delivered()), (0, 0));

        let start = tokio::time::Instant::now();
        bus.publish(payload(1)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250));
        assert_eq!(next(&mut sub).await, msg(1));
        assert_eq!(sub.try_recv(), None);
    }

    #[tokio::test]
    async fn close_ends_subscriptions_and_refuses_everything() {
        let bus = InMemoryBackplane::new();
        let other = bus.connection();
        let mut sub = bus.subscribe().await.unwrap();
        bus.publish(payload(0)).await.unwrap();
        other.close();
        assert_eq!(
            next(&mut sub).await,
            msg(0),
            "queued events are still delivered"
        );
        assert_eq!(sub.recv().await, None);
        assert!(matches!(
            bus.publish(payload(1)).await,
            Err(BackplaneError::Closed)
        ));
        assert!(matches!(
            other.subscribe().await,
            Err(BackplaneError::Closed)
        ));
    }

    /// The log and the channel agree: each delivery is framed with the position under which
    /// the same payload sits in the log, a payload lost on the channel is still in the log,
    /// and reading after any delivered position returns exactly what followed it.
    #[tokio::test]
    async fn the_replay_log_holds_every_publish_and_frames_deliveries_with_its_position() {
        let bus = InMemoryBackplane::new().with_replay_log(16);
        let log = bus.replay_log().expect("a bus with a log offers it");
        assert_eq!(log.head().await.unwrap(), LogPosition::new(1, 0));
        let mut sub = bus.connection().subscribe().await.unwrap();
        bus.publish(payload(1)).await.unwrap();
        bus.drop_next(1);
        bus.publish(payload(2)).await.unwrap();
        bus.publish(payload(3)).await.unwrap();
        let mut delivered = Vec::new();
        for _ in 0..2 {
            let BackplaneEvent::Message(framed) = next(&mut sub).await else {
                panic!("not a message");
            };
            delivered.push(logged::unframe(&framed));
        }
        assert_eq!(
            delivered,
            [
                (Some(LogPosition::new(1, 1)), payload(1)),
                (Some(LogPosition::new(1, 3)), payload(3)),
            ]
        );
        let LogRead::Covered(missed) = log.read_after(&LogPosition::new(1, 1)).await.unwrap()
        else {
            panic!("uncovered");
        };
        let missed: Vec<_> = missed
            .into_iter()
            .map(|e| (e.position, e.payload))
            .collect();
        assert_eq!(
            missed,
            [
                (LogPosition::new(1, 2), payload(2)),
                (LogPosition::new(1, 3), payload(3)),
            ]
        );
        assert_eq!(bus.log_len(), 3);
        assert!(InMemoryBackplane::new().replay_log().is_none());
    }

    #[tokio::test]
    async fn log_faults_trim_recreate_and_fail_reads() {
        let bus = InMemoryBackplane::new().with_replay_log(16);
        let log = bus.replay_log().unwrap();
        for i in 0..4 {
            bus.publish(payload(i)).await.unwrap();
        }
        bus.trim_log(1);
        assert_eq!(
            log.read_after(&LogPosition::new(1, 2)).await.unwrap(),
            LogRead::Uncovered(crate::Uncovered::Trimmed)
        );
        bus.fail_log_reads(1);
        assert!(unavailable(log.read_after(&LogPosition::new(1, 3)).await));
        assert!(matches!(
            log.read_after(&LogPosition::new(1, 3)).await,
            Ok(LogRead::Covered(entries)) if entries.len() == 1
        ));
        bus.recreate_log();
        assert_eq!(log.head().await.unwrap(), LogPosition::new(2, 0));
        assert_eq!(
            log.read_after(&LogPosition::new(1, 4)).await.unwrap(),
            LogRead::Uncovered(crate::Uncovered::Recreated)
        );
        bus.disconnect();
        assert!(unavailable(log.head().await));
    }

    #[tokio::test]
    async fn works_as_a_trait_object() {
        let bus = InMemoryBackplane::new();
        let dynamic: Arc<dyn Backplane> = Arc::new(bus.clone());
        let mut sub = dynamic.subscribe().await.unwrap();
        dynamic.publish(payload(3)).await.unwrap();
        assert_eq!(next(&mut sub).await, msg(3));
        assert!(format!("{dynamic:?}").starts_with("InMemoryBackplane"));
        assert_eq!(bus.connection().connection_id(), 1);
        assert_eq!(
            bus.clone().connection_id(),
            0,
            "clones are the same connection"
        );
    }
}
