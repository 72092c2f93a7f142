//! The receiver task: subscription → decoded messages → local evictions.
//!
//! What arrives is applied to the local store only; nothing received is ever published
//! again, and our own messages (the channel echoes them) are ignored. Whenever this instance
//! may have missed a message — the subscription reconnected, the backplane dropped messages
//! for a slow reader, or a peer's sequence numbers jumped — the local store is cleared (per
//! the loss policy) instead of serving what may be stale. While the backplane has been down
//! longer than `max_staleness`, reads bypass the store until it is back; once the receiver
//! has ended (shutdown, drop, its runtime gone) they bypass it for good.
//!
//! A subscription is never trusted to last: one that the backplane ends (its stream returns
//! `None`) is made again with backoff, and one that stops delivering while its connection
//! looks alive is caught by our own publishes not coming back ([`echo`](super::echo)) and
//! made again too. Both count as down meanwhile (for `max_staleness`) and end in a clear
//! with their own cause.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use nearcache_backplane::wire::{self, Op, WireLimits};
use nearcache_backplane::{Backplane, BackplaneEvent, Subscription};
use nearcache_keys::Key;
use nearcache_regions::SubKeyText;
use nearcache_store::Store;

use super::backoff::Retry;
use super::peers::{Peers, Seen, Subscribed};
use super::repair::{Live, Replay};
use super::sender::invalidations;
use super::{Propagation, bump, unix_micros};
use crate::events::{CacheEvent, ClearCause};

/// The shortest wait for our own publishes to come back, whatever the heartbeat interval: a
/// loaded machine can delay an echo by far more than a very short interval, and a false
/// alarm costs a resubscription and a clear.
const MIN_ECHO_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    propagation: Arc<Propagation>,
    store: Store,
    backplane: Arc<dyn Backplane>,
) {
    let p = &*propagation;
    let _running = p.task_running();
    let _exit = OnExit { p, store: &store };
    let mut shutdown = p.shutdown.subscribe();
    let Some(made) = subscribe(p, &*backplane, &mut shutdown).await else {
        return;
    };
    // Until now reads bypassed the store and loads were not stored, but `set` stores: a
    // peer's invalidation of such a key may have gone by unheard, so start from nothing.
    store.clear();
    store.set_read_bypass(false);
    p.echo.listening(made.started);
    // Before `ready`: whatever the application invalidates from now on goes out after it.
    p.hello_pending.store(true, Ordering::Release);
    p.hello_now.notify_one();
    let mut replay = Replay::new(p, &*backplane);
    replay.start(p, &*backplane).await;
    p.connected.store(true, Ordering::Relaxed);
    p.ready.send_replace(true);
    let _ = p.events.send(CacheEvent::Connected);

    let forget_after = p
        .options
        .heartbeat_interval
        .saturating_mul(20)
        .max(Duration::from_secs(300));
    let mut peers = Peers::new(made.since, p.options.heartbeat_interval, forget_after);
    let mut link = Link {
        subscription: Some(made.subscription),
        down_since: None,
        resubscribe: None,
    };
    let mut housekeeping = tokio::time::interval(forget_after);
    let echo_timeout = match p.options.heartbeat_echo_intervals {
        0 => None,
        n => Some(
            p.options
                .heartbeat_interval
                .saturating_mul(n)
                .max(MIN_ECHO_TIMEOUT),
        ),
    };
    let mut echo_check = tokio::time::interval(p.options.heartbeat_interval);
    echo_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let staleness_deadline = match (link.down_since, p.options.max_staleness) {
            // No deadline if it is too far to represent: effectively never.
            (Some(since), Some(max)) if !p.bypassing.load(Ordering::Relaxed) => {
                since.checked_add(max)
            }
            _ => None,
        };
        let resubscribe_at = link.resubscribe.as_ref().map(|r| r.at);
        let mut resubscribe_now = false;
        // A loss to repair (or clear) and what to do after it; handled below, outside the
        // `select!`, like the resubscription.
        let mut loss: Option<Loss> = None;
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|closed| *closed) => return,
            () = sleep_until(staleness_deadline) => {
                store.set_read_bypass(true);
                p.bypassing.store(true, Ordering::Relaxed);
                tracing::warn!(
                    max_staleness = ?p.options.max_staleness,
                    "backplane down longer than max_staleness: reads bypass the local cache until it is back"
                );
                let _ = p.events.send(CacheEvent::BypassStarted);
            }
            event = next_event(link.subscription.as_mut()) => match event {
                Some(BackplaneEvent::Message(payload)) => match replay.live(&payload) {
                    Live::Apply(message) => {
                        apply(p, &store, &mut peers, &message, Source::Live);
                    }
                    Live::Behind(message) => {
                        apply(p, &store, &mut peers, &message, Source::LiveBehind);
                    }
                    Live::RepairFirst(message, position) => {
                        tracing::warn!(%position, "the replay log's positions skipped: messages were lost on the channel");
                        loss = Some(Loss { cause: ClearCause::PeerGap, then: Then::Apply(message, position) });
                    }
                },
                Some(BackplaneEvent::Disconnected) => {
                    link.down_since.get_or_insert_with(tokio::time::Instant::now);
                    p.echo.deaf();
                    p.connected.store(false, Ordering::Relaxed);
                    let _ = p.events.send(CacheEvent::Disconnected);
                }
                Some(BackplaneEvent::Reconnected) => {
                    // Peers' sequence numbers are kept: a message lost after the resubscription
                    // must still show as a gap. What a peer sent during the outage shows as one
                    // too (a second, redundant clear): the two cannot be told apart.
                    p.echo.listening(tokio::time::Instant::now());
                    loss = Some(Loss { cause: ClearCause::Reconnect, then: Then::Back });
                }
                Some(BackplaneEvent::Lagged { missed }) => {
                    tracing::warn!(missed, "the backplane dropped messages before this instance read them");
                    loss = Some(Loss { cause: ClearCause::Lagged, then: Then::Nothing });
                }
                Some(_) => {}
                None => {
                    tracing::error!(
                        "the backplane subscription ended: peers' invalidations no longer arrive; \
                         subscribing again (the cache clears itself once it is back)"
                    );
                    link.lost(p, ClearCause::SubscriptionEnded, tokio::time::Instant::now());
                }
            },
            // Made below, outside the `select!`, which holds no borrow across that await.
            () = sleep_until(resubscribe_at) => resubscribe_now = true,
            _ = echo_check.tick(), if echo_timeout.is_some() => {
                if let (Some(timeout), Some(unheard)) = (echo_timeout, p.echo.unheard_since())
                    && link.subscription.is_some()
                    && unheard.elapsed() >= timeout
                {
                    tracing::warn!(
                        ?timeout,
                        "this instance's own publishes stopped coming back through the channel: \
                         the subscription is dead though the connection looks alive; \
                         subscribing again (the cache clears itself once it is back)"
                    );
                    link.lost(p, ClearCause::EchoLost, unheard);
                }
            }
            _ = housekeeping.tick() => {
                let vanished = peers.forget_silent(super::peers::now());
                p.health.forget_silent(forget_after);
                p.counters.peers.store(peers.len() as u64, Ordering::Relaxed);
                if vanished > 0 {
                    tracing::warn!(
                        vanished,
                        ?forget_after,
                        "peers went silent without a goodbye: they may have died with \
                         invalidations they never sent"
                    );
                    p.loss_clear(&store, ClearCause::PeerGap);
                }
            }
        }
        if let Some(loss) = loss {
            replay
                .recover(p, &store, &mut peers, &*backplane, loss.cause)
                .await;
            match loss.then {
                Then::Back => link.back(p, &store),
                Then::Apply(message, position) => {
                    let source = replay.source_after_repair(position);
                    apply(p, &store, &mut peers, &message, source);
                }
                Then::Nothing => {}
            }
        }
        if resubscribe_now {
            let started = tokio::time::Instant::now();
            // Bounded by the backplane (for Redis: `connect_timeout`); shutdown still wins.
            let made = tokio::select! {
                made = backplane.subscribe() => made,
                _ = shutdown.wait_for(|closed| *closed) => return,
            };
            match made {
                Ok(subscription) => {
                    p.echo.listening(started);
                    link.subscription = Some(subscription);
                    if let Some(resubscribe) = link.resubscribe.take() {
                        replay
                            .recover(p, &store, &mut peers, &*backplane, resubscribe.cause)
                            .await;
                        link.back(p, &store);
                    }
                }
                Err(error) => link.retry_later(&error),
            }
        }
    }
}

/// A loss noticed in the `select!`, handled after it.
struct Loss {
    cause: ClearCause,
    then: Then,
}

/// What follows the repair (or clear) of a [`Loss`].
enum Then {
    /// The subscription is back: serve again.
    Back,
    /// Apply the delivery that revealed the loss, unless the repair already did.
    Apply(Bytes, nearcache_backplane::LogPosition),
    Nothing,
}

/// The receiver's view of its subscription.
struct Link {
    /// `None` while it is being made again.
    subscription: Option<Subscription>,
    /// Since when messages may have been missed (for `max_staleness`); `None` while up.
    down_since: Option<tokio::time::Instant>,
    /// Set while the subscription is being made again.
    resubscribe: Option<Resubscribe>,
}

/// A subscription to be made again, and why it was lost.
struct Resubscribe {
    at: tokio::time::Instant,
    retry: Retry,
    cause: ClearCause,
}

impl Link {
    /// The subscription is gone (ended, or found deaf): drop it, read as down since
    /// `since`, and subscribe again at once (then with backoff).
    fn lost(&mut self, p: &Propagation, cause: ClearCause, since: tokio::time::Instant) {
        self.subscription = None;
        let down_since = self.down_since.get_or_insert(since);
        *down_since = (*down_since).min(since);
        p.echo.deaf();
        p.connected.store(false, Ordering::Relaxed);
        let _ = p.events.send(CacheEvent::Disconnected);
        self.resubscribe = Some(Resubscribe {
            at: tokio::time::Instant::now(),
            retry: Retry::new(
                p.options.reconnect_initial_delay,
                p.options.reconnect_max_delay,
            ),
            cause,
        });
    }

    fn retry_later(&mut self, error: &nearcache_backplane::BackplaneError) {
        if let Some(r) = self.resubscribe.as_mut() {
            let delay = r.retry.next_delay();
            tracing::debug!(
                error = error as &dyn std::error::Error,
                ?delay,
                "could not subscribe to the backplane again; retrying"
            );
            r.at = tokio::time::Instant::now() + delay;
        }
    }

    /// The subscription is live again after a loss, repaired or cleared: serve again.
    fn back(&mut self, p: &Propagation, store: &Store) {
        self.down_since = None;
        if p.bypassing.swap(false, Ordering::Relaxed) {
            store.set_read_bypass(false);
        }
        p.connected.store(true, Ordering::Relaxed);
        p.retry_now.notify_one();
        let _ = p.events.send(CacheEvent::Connected);
    }
}

/// The subscription's next event; never resolves while there is none.
async fn next_event(subscription: Option<&mut Subscription>) -> Option<BackplaneEvent> {
    match subscription {
        Some(subscription) => subscription.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs however the receiver ends (shutdown, abort, its runtime going away): from then on
/// nothing tells this instance about its peers' invalidations, so it stops serving from its
/// store (reads miss, loads are not stored) rather than serve what may be stale.
struct OnExit<'a> {
    p: &'a Propagation,
    store: &'a Store,
}

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        self.store.set_read_bypass(true);
        self.p.connected.store(false, Ordering::Relaxed);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A subscription, and when the attempt that made it began: everything published after
/// that reaches us.
struct Made {
    subscription: Subscription,
    since: Subscribed,
    started: tokio::time::Instant,
}

/// Subscribes, retrying with backoff; `None` if the cache shut down first.
async fn subscribe(
    p: &Propagation,
    backplane: &dyn Backplane,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Made> {
    let mut retry = Retry::new(
        p.options.reconnect_initial_delay,
        p.options.reconnect_max_delay,
    );
    let mut warned = false;
    loop {
        let since = Subscribed::now();
        let started = tokio::time::Instant::now();
        match backplane.subscribe().await {
            Ok(subscription) => {
                return Some(Made {
                    subscription,
                    since,
                    started,
                });
            }
            Err(error) => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "could not subscribe to the backplane; retrying (the local cache is not used until then)"
                    );
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|closed| *closed) => return None,
            () = tokio::time::sleep(retry.next_delay()) => {}
        }
    }
}

/// A region name the wire accepted but the store refuses (the two limits disagree): we
/// cannot expire just that region, so we expire everything rather than keep stale entries.
fn not_applied(p: &Propagation, store: &Store, error: &dyn std::fmt::Display) {
    bump(&p.counters.messages_rejected, 1);
    tracing::warn!(%error, "a peer's region expiry names an invalid region; clearing instead");
    store.clear();
}

/// Where a payload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The subscription.
    Live,
    /// The subscription, at or behind the last log position applied: a duplicate by
    /// sequence number is one a repair applied, dropped even unsigned.
    LiveBehind,
    /// The replay log, during a repair.
    Replayed,
}

/// Applies one payload; returns how many invalidations it applied when it was a peer's
/// invalidation message (not a heartbeat, not ours, not refused).
pub(super) fn apply(
    p: &Propagation,
    store: &Store,
    peers: &mut Peers,
    payload: &Bytes,
    source: Source,
) -> Option<u64> {
    if source != Source::Replayed {
        bump(&p.counters.bytes_received, payload.len() as u64);
    }
    let message = match wire::decode_authenticated(payload, &WireLimits::DEFAULT, p.keys.as_ref()) {
        Ok(message) => message,
        Err(wire::DecodeError::Unauthenticated) => {
            bump(&p.counters.messages_unauthenticated, 1);
            tracing::debug!(
                len = payload.len(),
                "dropped a backplane message that is unsigned or badly signed"
            );
            let _ = p.events.send(CacheEvent::Rejected);
            return None;
        }
        Err(error) => {
            bump(&p.counters.messages_rejected, 1);
            tracing::debug!(
                error = &error as &dyn std::error::Error,
                len = payload.len(),
                "dropped a backplane message that is not a valid invalidation"
            );
            let _ = p.events.send(CacheEvent::Rejected);
            return None;
        }
    };
    if message.origin == p.instance {
        // Our own invalidations were applied here when they were made; only a live echo
        // says anything (that the subscription hears us).
        if source != Source::Replayed {
            p.echo.heard(message.seq);
            bump(&p.counters.own_messages_ignored, 1);
        }
        return None;
    }
    let heartbeat = message.is_heartbeat();
    let span = tracing::info_span!(
        "apply",
        origin = %message.origin,
        seq = message.seq,
        heartbeat,
        lag_us = tracing::field::Empty
    );
    let _entered = span.enter();
    p.health.heard(message.origin, message.seq);
    let seen = peers.observe(
        message.origin.as_u128(),
        message.seq,
        heartbeat,
        super::peers::now(),
    );
    p.counters
        .peers
        .store(peers.len() as u64, Ordering::Relaxed);
    p.counters
        .peers_evicted
        .store(peers.evicted(), Ordering::Relaxed);
    let duplicate = seen == Seen::Duplicate;
    if duplicate && source == Source::LiveBehind {
        bump(&p.counters.replay_duplicates, 1);
        return None;
    }
    if duplicate {
        bump(&p.counters.duplicates_ignored, 1);
        // A retried publish that had gone through. Signed, that is all a duplicate can be,
        // so it is dropped. Unsigned, it may instead be the real message that someone else
        // sent its number ahead of: applying it again costs an eviction, dropping it could
        // leave an entry stale.
        if p.keys.is_some() {
            return None;
        }
    } else if heartbeat {
        bump(&p.counters.heartbeats_received, 1);
    } else {
        bump(&p.counters.messages_received, 1);
        bump(&p.counters.invalidations_received, invalidations(&message));
        p.counters.received_by_kind.count(&message);
    }
    match seen {
        Seen::Duplicate => {}
        Seen::Gap { missed } => {
            tracing::warn!(origin = %message.origin, missed, "messages from a peer were lost");
            p.loss_clear(store, ClearCause::PeerGap);
        }
        Seen::InOrder => {}
    }
    if heartbeat {
        if message.is_hello() && source != Source::Replayed {
            // A newcomer: tell it where we stand (the sender answers, rate-limited).
            p.answer_pending.store(true, Ordering::Release);
            p.answer_now.notify_one();
        }
        if message.is_goodbye() {
            peers.farewell(message.origin.as_u128());
            p.health.forget(message.origin);
            p.counters
                .peers
                .store(peers.len() as u64, Ordering::Relaxed);
            let _ = p.events.send(CacheEvent::PeerLeft {
                origin: message.origin,
            });
        }
        return None;
    }
    let mut applied = 0u64;
    for op in &message.ops {
        match op {
            Op::Remove { keys } => {
                for key in keys {
                    store.remove_from_peer(&Key::from_text(key.as_str()));
                    applied += 1;
                }
            }
            Op::ExpireRegion { region } => match store.expire_region_by_name(region) {
                Ok(()) => applied += 1,
                Err(error) => not_applied(p, store, &error),
            },
            Op::ExpireRegionKey { region, key } => {
                match store.expire_region_key_by_name(region, &SubKeyText::new(key)) {
                    Ok(()) => applied += 1,
                    Err(error) => not_applied(p, store, &error),
                }
            }
            Op::Clear => {
                store.clear();
                applied += 1;
            }
            _ => {
                // An operation this version does not know: we cannot tell what it
                // invalidates, so we invalidate everything.
                store.clear();
                applied += 1;
            }
        }
    }
    bump(&p.counters.invalidations_applied, applied);
    if !duplicate && source != Source::Replayed {
        let lag = Duration::from_micros(unix_micros().saturating_sub(message.sent_at_unix_micros));
        p.lag.record(lag);
        span.record("lag_us", u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
    }
    let _ = p.events.send(CacheEvent::Applied {
        origin: message.origin,
        seq: message.seq,
        invalidations: applied,
    });
    Some(applied)
}
