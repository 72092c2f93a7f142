//! [`Health`]: whether this instance can promise fresh reads now — what a readiness probe
//! should check.
//!
//! The receiver and sender already know the link's state; this module turns it into one
//! answer: a [`Coherence`] state, the staleness bound it allows, and what each peer last
//! said. [`Cache::health`](crate::Cache::health) computes it on demand;
//! [`Cache::watch_health`](crate::Cache::watch_health) yields when the state or the bound
//! changes (a small task follows the propagation events and re-checks every second, so a
//! stalled echo or a stuck outbox shows as `Suspect`, and its end, without any event).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nearcache_backplane::wire::InstanceId;
use nearcache_store::Store;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use crate::events::CacheEvent;
use crate::propagation::Propagation;
use crate::propagation::peers::MAX_PEERS;

/// How far this instance can be trusted to serve what its peers have not invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Coherence {
    /// The subscription is live and our own publishes come back: a peer's invalidation
    /// arrives, or its loss is noticed, within the staleness bound.
    Coherent,
    /// The subscription looks live but something is late: our own publishes have not come
    /// back for a heartbeat interval, or our invalidations have waited longer than
    /// `publish_timeout` to go out. Reads are still served; it becomes `Lost` (then a clear)
    /// if it lasts.
    Suspect {
        /// Since when.
        since: Instant,
    },
    /// The subscription is down: peers' invalidations are not heard. Reads are still served
    /// from the store until `max_staleness` (then `Bypassing`); the store is cleared when the
    /// subscription is back.
    Lost {
        /// Since when.
        since: Instant,
    },
    /// Reads bypass the store (before the first subscription, past `max_staleness`, after
    /// shutdown): nothing stale is served, but every read loads.
    Bypassing,
}

/// What one peer last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerHealth {
    /// The peer.
    pub instance: InstanceId,
    /// When its last message or heartbeat arrived.
    pub last_heard: Instant,
    /// The last sequence number it sent.
    pub last_seq: u64,
}

/// This instance's coherence now. A readiness probe should check
/// [`is_ready`](Self::is_ready), and may alert on [`staleness_bound`](Self::staleness_bound).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The coherence state.
    pub state: Coherence,
    /// The longest an entry invalidated by a peer can still be served here, as far as this
    /// instance can promise now: zero while bypassing (or without a backplane); while
    /// coherent, the time in which a lost message or a dead subscription is noticed (the
    /// echo timeout: `heartbeat_interval × heartbeat_echo_intervals`, at least 1 s); while
    /// suspect or lost, `max_staleness` (reads bypass the store after it). `None`: no bound
    /// (the echo check is off, or the link is down and `max_staleness` is unset).
    pub staleness_bound: Option<Duration>,
    /// Age of the oldest invalidation of ours not yet published (peers serve it stale
    /// meanwhile); `None` when nothing waits.
    pub oldest_unpublished: Option<Duration>,
    /// Peers heard from, and what each last said (not sorted).
    pub peers: Vec<PeerHealth>,
}

impl Health {
    /// Health of a cache without a backplane: coherent, nothing to be stale against.
    pub(crate) fn local() -> Self {
        Health {
            state: Coherence::Coherent,
            staleness_bound: Some(Duration::ZERO),
            oldest_unpublished: None,
            peers: Vec::new(),
        }
    }

    /// Whether a readiness probe should pass: the state is `Coherent` or `Suspect`. `Lost`
    /// may serve stale entries, and `Bypassing` sends every read to the data source.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, Coherence::Coherent | Coherence::Suspect { .. })
    }
}

/// The shared part: per-peer last words (written by the receiver), when the link was lost
/// (written by the health task), and the watch.
#[derive(Debug)]
pub(crate) struct HealthBoard {
    peers: Mutex<HashMap<InstanceId, (u64, Instant)>>,
    lost_since: Mutex<Option<Instant>>,
    pub(crate) watch: watch::Sender<Health>,
}

impl HealthBoard {
    pub(crate) fn new() -> Self {
        HealthBoard {
            peers: Mutex::new(HashMap::new()),
            lost_since: Mutex::new(None),
            watch: watch::Sender::new(Health {
                state: Coherence::Bypassing,
                staleness_bound: Some(Duration::ZERO),
                oldest_unpublished: None,
                peers: Vec::new(),
            }),
        }
    }

    /// A message or heartbeat numbered `seq` arrived from `origin` (the table is capped like
    /// the receiver's: past it new origins are not listed).
    pub(crate) fn heard(&self, origin: InstanceId, seq: u64) {
        let mut peers = self.peers.lock();
        if peers.len() < MAX_PEERS || peers.contains_key(&origin) {
            peers.insert(origin, (seq, Instant::now()));
        }
    }

    /// `origin` left or was forgotten.
    pub(crate) fn forget(&self, origin: InstanceId) {
        self.peers.lock().remove(&origin);
    }

    /// Forgets peers silent for `after` or longer.
    pub(crate) fn forget_silent(&self, after: Duration) {
        self.peers
            .lock()
            .retain(|_, (_, heard)| heard.elapsed() < after);
    }
}

/// Health as of now.
pub(crate) fn compute(p: &Propagation, store: &Store) -> Health {
    let options = &p.options;
    let oldest_unpublished = p.outbox.oldest_age();
    let peers = p
        .health
        .peers
        .lock()
        .iter()
        .map(|(instance, (last_seq, last_heard))| PeerHealth {
            instance: *instance,
            last_heard: *last_heard,
            last_seq: *last_seq,
        })
        .collect();
    let connected = p.connected.load(Ordering::Relaxed);
    let state = if store.is_read_bypassed() {
        Coherence::Bypassing
    } else if !connected {
        let since = *p.health.lost_since.lock().get_or_insert_with(Instant::now);
        Coherence::Lost { since }
    } else {
        let now = Instant::now();
        let echo_late = p
            .echo
            .unheard_since()
            .map(tokio::time::Instant::into_std)
            .filter(|at| now.saturating_duration_since(*at) >= options.heartbeat_interval);
        let outbox_late = oldest_unpublished
            .filter(|age| *age >= options.publish_timeout)
            .and_then(|age| now.checked_sub(age));
        match echo_late.into_iter().chain(outbox_late).min() {
            Some(since) => Coherence::Suspect { since },
            None => Coherence::Coherent,
        }
    };
    let staleness_bound = match state {
        Coherence::Bypassing => Some(Duration::ZERO),
        Coherence::Coherent => match options.heartbeat_echo_intervals {
            0 => None,
            n => Some(
                options
                    .heartbeat_interval
                    .saturating_mul(n)
                    .max(Duration::from_secs(1)),
            ),
        },
        Coherence::Suspect { .. } | Coherence::Lost { .. } => options.max_staleness,
    };
    Health {
        state,
        staleness_bound,
        oldest_unpublished,
        peers,
    }
}

/// Longest between two checks of the watch's state: a recovery (an echo back, a stuck
/// publish through) comes with no event.
const RECHECK: Duration = Duration::from_secs(1);

/// Keeps the watch current: on every propagation event, and every second (or heartbeat
/// interval, if shorter, but not more often than every 100 ms), until shutdown. Sends only when the state or the bound changed.
pub(crate) async fn run(
    p: Arc<Propagation>,
    store: Store,
    mut events: broadcast::Receiver<CacheEvent>,
) {
    let mut shutdown = p.shutdown.subscribe();
    let every = p
        .options
        .heartbeat_interval
        .clamp(Duration::from_millis(100), RECHECK);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            biased;
            _ = shutdown.wait_for(|closed| *closed) => true,
            event = events.recv() => {
                match event {
                    Ok(CacheEvent::Disconnected) => {
                        p.health.lost_since.lock().get_or_insert_with(Instant::now);
                    }
                    Ok(CacheEvent::Connected) => *p.health.lost_since.lock() = None,
                    Err(broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
                false
            }
            _ = tick.tick() => false,
        };
        if p.connected.load(Ordering::Relaxed) {
            *p.health.lost_since.lock() = None;
        }
        let mut now = compute(&p, &store);
        if closed {
            // The receiver sets the bypass as it exits; say so now.
            now.state = Coherence::Bypassing;
            now.staleness_bound = Some(Duration::ZERO);
        }
        p.health.watch.send_if_modified(|current| {
            let changed =
                current.state != now.state || current.staleness_bound != now.staleness_bound;
            *current = now;
            changed
        });
        if closed {
            return;
        }
    }
}
