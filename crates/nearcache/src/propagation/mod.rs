//! Propagation: keeping this instance's cache coherent with its peers through a backplane.
//!
//! Two tasks per cache, both on the tokio runtime the cache was built in:
//! - the **sender** ([`sender`]) takes what the [`outbox`] holds, numbers it, encodes it and
//!   publishes it, one publish in flight at a time (group commit), retrying failed publishes
//!   with backoff, and sends a heartbeat when it has been quiet;
//! - the **receiver** ([`receiver`]) reads the subscription, drops our own echoes and
//!   anything that does not decode, applies peers' invalidations to the local store (never
//!   re-publishing them), and clears the local store whenever a message may have been
//!   missed ([`peers`] notices gaps) — or, when the backplane keeps a replay log, repairs
//!   itself by reading exactly what it missed ([`repair`]).
//!
//! The path of one invalidation is drawn in `docs/architecture.md`.

pub(crate) mod answer;
pub(crate) mod backoff;
pub(crate) mod echo;
pub(crate) mod kinds;
pub(crate) mod lag;
pub(crate) mod outbox;
pub(crate) mod peers;
pub(crate) mod receiver;
pub(crate) mod repair;
pub(crate) mod sender;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nearcache_backplane::Backplane;
use nearcache_backplane::wire::{self, InstanceId, SigningKeys, WireLimits};
use nearcache_store::Store;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use tracing::Instrument;

use crate::events::{CacheEvent, ClearCause};
use crate::health::HealthBoard;
use crate::identity::Identity;
use crate::options::{BackplaneOptions, LossPolicy};
use crate::stats::{LossClears, LossRepairs, PropagationStats};
use lag::LagHistogram;
use outbox::{Outbox, Pending, Ticket};

/// Shared state of one cache's propagation: the outbox, counters and task handles.
#[derive(Debug)]
pub(crate) struct Propagation {
    pub(crate) instance: InstanceId,
    /// The cache's name and instance, for spans and metrics.
    pub(crate) identity: Identity,
    /// Per-peer last words and the health watch.
    pub(crate) health: HealthBoard,
    pub(crate) started_unix_ms: u64,
    pub(crate) options: BackplaneOptions,
    /// Signs what we send and checks what we receive, when configured.
    pub(crate) keys: Option<SigningKeys>,
    /// What one message may hold, leaving room for a signature when signing.
    pub(crate) limits: WireLimits,
    pub(crate) outbox: Outbox,
    pub(crate) counters: Counters,
    pub(crate) lag: LagHistogram,
    /// Our own publishes not yet heard back through the channel.
    pub(crate) echo: echo::Echo,
    pub(crate) events: broadcast::Sender<CacheEvent>,
    /// The subscription is live (false before the first subscribe and while disconnected).
    pub(crate) connected: AtomicBool,
    /// Reads bypass the local cache (the backplane has been down past `max_staleness`).
    pub(crate) bypassing: AtomicBool,
    /// Wakes a sender that is backing off after a failed publish (the backplane is back).
    pub(crate) retry_now: Notify,
    /// Our first subscription is live: the sender publishes a hello before anything else.
    pub(crate) hello_pending: AtomicBool,
    /// Wakes an idle sender for the hello.
    pub(crate) hello_now: Notify,
    /// A peer's hello arrived: the sender answers with our position (rate-limited).
    pub(crate) answer_pending: AtomicBool,
    /// Wakes an idle sender for an answer.
    pub(crate) answer_now: Notify,
    /// Becomes true once when the first subscription is made.
    pub(crate) ready: watch::Sender<bool>,
    /// Becomes true when the cache is shut down or dropped; tasks exit on it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Background tasks still running (each holds a [`TaskRunning`] guard).
    running: watch::Sender<usize>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Held by a background task for as long as it runs, however it ends (returns, is aborted,
/// or its runtime shuts down).
#[derive(Debug)]
pub(crate) struct TaskRunning<'a>(&'a watch::Sender<usize>);

impl Drop for TaskRunning<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Plain counters; nothing here is on the hit path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) sent_by_kind: kinds::KindCounters,
    pub(crate) received_by_kind: kinds::KindCounters,
    pub(crate) invalidations_sent: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) answers_sent: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) invalidations_applied: AtomicU64,
    pub(crate) heartbeats_received: AtomicU64,
    pub(crate) own_messages_ignored: AtomicU64,
    pub(crate) duplicates_ignored: AtomicU64,
    pub(crate) messages_rejected: AtomicU64,
    pub(crate) messages_unauthenticated: AtomicU64,
    pub(crate) outbox_overflows: AtomicU64,
    pub(crate) clears_reconnect: AtomicU64,
    pub(crate) clears_lagged: AtomicU64,
    pub(crate) clears_peer_gap: AtomicU64,
    pub(crate) clears_outbox_overflow: AtomicU64,
    pub(crate) clears_subscription_ended: AtomicU64,
    pub(crate) clears_echo_lost: AtomicU64,
    pub(crate) repairs: AtomicU64,
    pub(crate) messages_replayed: AtomicU64,
    pub(crate) keys_replayed: AtomicU64,
    pub(crate) replay_duplicates: AtomicU64,
    pub(crate) repairs_trimmed: AtomicU64,
    pub(crate) repairs_recreated: AtomicU64,
    pub(crate) repairs_read_failed: AtomicU64,
    /// A gauge, not a counter: peers heard from and not forgotten.
    pub(crate) peers: AtomicU64,
    /// Peers evicted from the capped peer table (mirrors the receiver's own count).
    pub(crate) peers_evicted: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Propagation {
    /// Starts the sender and receiver tasks on `runtime`.
    pub(crate) fn start(
        store: Store,
        backplane: Arc<dyn Backplane>,
        options: BackplaneOptions,
        identity: Identity,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Propagation> {
        // Checked by the builder (`BackplaneOptions::check`).
        let keys = options.signing_keys().ok().flatten();
        let limits = match keys {
            Some(_) => WireLimits::DEFAULT.with_max_payload_bytes(
                WireLimits::DEFAULT.max_payload_bytes() - wire::auth::SIGNATURE_LEN,
            ),
            None => WireLimits::DEFAULT,
        };
        let (events, _) = broadcast::channel(1024);
        let propagation = Arc::new(Propagation {
            instance: identity.instance,
            health: HealthBoard::new(),
            lag: LagHistogram::new(crate::metrics::propagation_lag(&identity)),
            identity,
            started_unix_ms: unix_ms(),
            outbox: Outbox::new(options.outbox_capacity),
            keys,
            limits,
            options,
            counters: Counters::default(),
            echo: echo::Echo::default(),
            events,
            connected: AtomicBool::new(false),
            bypassing: AtomicBool::new(false),
            retry_now: Notify::new(),
            hello_pending: AtomicBool::new(false),
            hello_now: Notify::new(),
            answer_pending: AtomicBool::new(false),
            answer_now: Notify::new(),
            ready: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            running: watch::Sender::new(2),
            tasks: Mutex::new(Vec::new()),
        });
        let id = &propagation.identity;
        let health_events = propagation.events.subscribe();
        runtime.spawn(
            crate::health::run(propagation.clone(), store.clone(), health_events)
                .instrument(id.span("health")),
        );
        let sender = runtime.spawn(
            sender::run(propagation.clone(), backplane.clone()).instrument(id.span("sender")),
        );
        let receiver = runtime.spawn(
            receiver::run(propagation.clone(), store, backplane).instrument(id.span("receiver")),
        );
        propagation.tasks.lock().extend([sender, receiver]);
        propagation
    }

    /// The guard a background task holds while it runs.
    pub(crate) fn task_running(&self) -> TaskRunning<'_> {
        TaskRunning(&self.running)
    }

    /// Resolves once both background tasks have ended.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut running = self.running.subscribe();
        async move {
            // An error means the state is gone, which the tasks keep alive while they run.
            let _ = running.wait_for(|n| *n == 0).await;
        }
    }

    /// Queues one invalidation for the peers and returns its ticket; `None` once the cache
    /// has shut down (nothing would send it). An overflow clears this instance (and is
    /// counted) here, on the caller's thread.
    pub(crate) fn enqueue(&self, store: &Store, op: Pending) -> Option<Ticket> {
        let pushed = self.outbox.push(op)?;
        if pushed.overflowed {
            bump(&self.counters.outbox_overflows, 1);
            tracing::warn!(
                cache = %self.identity.name,
                instance = %self.instance,
                capacity = self.options.outbox_capacity,
                "invalidation outbox overflowed while the backplane is unreachable: \
                 its backlog is dropped; this instance clears itself now, and peers will \
                 see a gap in its sequence numbers and clear themselves"
            );
            self.loss_clear(store, ClearCause::OutboxOverflow);
        }
        Some(pushed.ticket)
    }

    /// Waits (bounded by `publish_timeout`) until `ticket` has been published.
    pub(crate) async fn wait_published(&self, ticket: Ticket) -> bool {
        matches!(
            tokio::time::timeout(self.options.publish_timeout, self.outbox.published(ticket)).await,
            Ok(true)
        )
    }

    /// This instance may have missed invalidations: clear the local store (per the policy),
    /// never the peers', and count why.
    pub(crate) fn loss_clear(&self, store: &Store, cause: ClearCause) {
        let counter = match cause {
            ClearCause::Reconnect => &self.counters.clears_reconnect,
            ClearCause::Lagged => &self.counters.clears_lagged,
            ClearCause::PeerGap => &self.counters.clears_peer_gap,
            ClearCause::OutboxOverflow => &self.counters.clears_outbox_overflow,
            ClearCause::SubscriptionEnded => &self.counters.clears_subscription_ended,
            ClearCause::EchoLost => &self.counters.clears_echo_lost,
        };
        bump(counter, 1);
        if self.options.on_loss == LossPolicy::Clear {
            store.clear();
        }
        let _ = self.events.send(CacheEvent::LossCleared {
            cause,
            cleared: self.options.on_loss == LossPolicy::Clear,
        });
    }

    /// Asks both tasks to stop; the sender first publishes what is queued.
    pub(crate) fn close(&self) {
        self.shutdown.send_replace(true);
        self.outbox.close();
        self.retry_now.notify_one();
    }

    /// Closes and waits for the tasks (the sender flushes the outbox, each publish bounded by
    /// `publish_timeout`). Returns how many invalidations were left unsent.
    pub(crate) async fn shutdown(&self) -> usize {
        self.close();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        // The sender makes one more attempt per message once closed, each bounded by
        // `publish_timeout`; past this, whatever is left is counted as unsent.
        let limit = self
            .options
            .publish_timeout
            .saturating_mul(4)
            .saturating_add(Duration::from_millis(100));
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
            }
        }
        // A concurrent call may hold the handles: wait for the same end it waits for.
        let _ = tokio::time::timeout(limit, self.stopped()).await;
        self.outbox.pending()
    }

    pub(crate) fn stats(&self) -> PropagationStats {
        let c = &self.counters;
        PropagationStats {
            instance: self.instance,
            connected: self.connected.load(Ordering::Relaxed),
            bypassing_reads: self.bypassing.load(Ordering::Relaxed),
            outbox_len: self.outbox.pending(),
            peers: usize::try_from(read(&c.peers)).unwrap_or(usize::MAX),
            peers_evicted: read(&c.peers_evicted),
            messages_sent: read(&c.messages_sent),
            bytes_sent: read(&c.bytes_sent),
            bytes_received: read(&c.bytes_received),
            invalidations_sent: read(&c.invalidations_sent),
            invalidations_sent_by_kind: c.sent_by_kind.snapshot(),
            invalidations_received_by_kind: c.received_by_kind.snapshot(),
            heartbeats_sent: read(&c.heartbeats_sent),
            answers_sent: read(&c.answers_sent),
            publish_failures: read(&c.publish_failures),
            messages_received: read(&c.messages_received),
            invalidations_received: read(&c.invalidations_received),
            invalidations_applied: read(&c.invalidations_applied),
            heartbeats_received: read(&c.heartbeats_received),
            own_messages_ignored: read(&c.own_messages_ignored),
            duplicates_ignored: read(&c.duplicates_ignored),
            messages_rejected: read(&c.messages_rejected),
            messages_unauthenticated: read(&c.messages_unauthenticated),
            outbox_overflows: read(&c.outbox_overflows),
            loss_clears: LossClears {
                reconnect: read(&c.clears_reconnect),
                lagged: read(&c.clears_lagged),
                peer_gap: read(&c.clears_peer_gap),
                outbox_overflow: read(&c.clears_outbox_overflow),
                subscription_ended: read(&c.clears_subscription_ended),
                echo_lost: read(&c.clears_echo_lost),
            },
            loss_repairs: LossRepairs {
                repairs: read(&c.repairs),
                messages_replayed: read(&c.messages_replayed),
                keys_replayed: read(&c.keys_replayed),
                replay_duplicates: read(&c.replay_duplicates),
                uncovered_trimmed: read(&c.repairs_trimmed),
                uncovered_recreated: read(&c.repairs_recreated),
                read_failed: read(&c.repairs_read_failed),
            },
            propagation_lag: self.lag.summary(),
        }
    }
}
