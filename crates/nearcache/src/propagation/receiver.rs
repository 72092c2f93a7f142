//! The receiver task: subscription → decoded messages → local evictions.
//!
//! What arrives is applied to the local store only; nothing received is ever published
//! again, and our own messages (the channel echoes them) are ignored. Whenever this instance
//! may have missed a message — the subscription reconnected, the backplane dropped messages
//! for a slow reader, or a peer's sequence numbers jumped — the local store is cleared (per
//! the loss policy) instead of serving what may be stale. While the backplane has been down
//! longer than `max_staleness`, reads bypass the store until it is back; once the receiver
//! has ended (shutdown, drop, its runtime gone) they bypass it for good.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nearcache_backplane::wire::{self, Op};
use nearcache_backplane::{Backplane, BackplaneEvent, Subscription};
use nearcache_keys::Key;
use nearcache_regions::SubKeyText;
use nearcache_store::Store;

use super::peers::{Peers, Seen, Subscribed};
use super::sender::invalidations;
use super::{Propagation, bump, unix_micros};
use crate::events::{CacheEvent, ClearCause};

pub(crate) async fn run(
    propagation: Arc<Propagation>,
    store: Store,
    backplane: Arc<dyn Backplane>,
) {
    let p = &*propagation;
    let _running = p.task_running();
    let _exit = OnExit { p, store: &store };
    let mut shutdown = p.shutdown.subscribe();
    let Some((mut subscription, since)) = subscribe(p, &*backplane, &mut shutdown).await else {
        return;
    };
    // Until now reads bypassed the store and loads were not stored, but `set` stores: a
    // peer's invalidation of such a key may have gone by unheard, so start from nothing.
    store.clear();
    store.set_read_bypass(false);
    p.connected.store(true, Ordering::Relaxed);
    p.ready.send_replace(true);
    let _ = p.events.send(CacheEvent::Connected);

    let forget_after = p
        .options
        .heartbeat_interval
        .saturating_mul(20)
        .max(Duration::from_secs(300));
    let mut peers = Peers::new(since, p.options.heartbeat_interval, forget_after);
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut subscription_open = true;
    let mut housekeeping = tokio::time::interval(forget_after);
    loop {
        let staleness_deadline = match (down_since, p.options.max_staleness) {
            // No deadline if it is too far to represent: effectively never.
            (Some(since), Some(max)) if !p.bypassing.load(Ordering::Relaxed) => {
                since.checked_add(max)
            }
            _ => None,
        };
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
            event = subscription.recv(), if subscription_open => match event {
                Some(BackplaneEvent::Message(payload)) => apply(p, &store, &mut peers, &payload),
                Some(BackplaneEvent::Disconnected) => {
                    if down_since.is_none() {
                        down_since = Some(tokio::time::Instant::now());
                    }
                    p.connected.store(false, Ordering::Relaxed);
                    let _ = p.events.send(CacheEvent::Disconnected);
                }
                Some(BackplaneEvent::Reconnected) => {
                    p.loss_clear(&store, ClearCause::Reconnect);
                    // Peers' sequence numbers are kept: a message lost after the resubscription
                    // must still show as a gap. What a peer sent during the outage shows as one
                    // too (a second, redundant clear): the two cannot be told apart.
                    down_since = None;
                    if p.bypassing.swap(false, Ordering::Relaxed) {
                        store.set_read_bypass(false);
                    }
                    p.connected.store(true, Ordering::Relaxed);
                    p.retry_now.notify_one();
                    let _ = p.events.send(CacheEvent::Connected);
                }
                Some(BackplaneEvent::Lagged { missed }) => {
                    tracing::warn!(missed, "the backplane dropped messages before this instance read them");
                    p.loss_clear(&store, ClearCause::Lagged);
                }
                Some(_) => {}
                None => {
                    tracing::error!("the backplane subscription ended: peers' invalidations no longer arrive");
                    subscription_open = false;
                    down_since.get_or_insert_with(tokio::time::Instant::now);
                    p.connected.store(false, Ordering::Relaxed);
                    let _ = p.events.send(CacheEvent::Disconnected);
                }
            },
            _ = housekeeping.tick() => {
                peers.forget_silent(Instant::now());
                p.counters.peers.store(peers.len() as u64, Ordering::Relaxed);
            }
        }
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

/// Subscribes, retrying with backoff; `None` if the cache shut down first. Also returns
/// when the successful attempt began: everything published after it reaches us.
async fn subscribe(
    p: &Propagation,
    backplane: &dyn Backplane,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(Subscription, Subscribed)> {
    let max_delay = p.options.reconnect_max_delay;
    let mut delay = p.options.reconnect_initial_delay.min(max_delay);
    let mut warned = false;
    loop {
        let attempt = Subscribed::now();
        match backplane.subscribe().await {
            Ok(subscription) => return Some((subscription, attempt)),
            Err(error) => {
                if !warned {
                    warned = true;
                    tracing::warn!(%error, "could not subscribe to the backplane; retrying (the local cache is not used until then)");
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|closed| *closed) => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = delay.saturating_mul(2).min(max_delay);
    }
}

/// A region name the wire accepted but the store refuses (the two limits disagree): we
/// cannot expire just that region, so we expire everything rather than keep stale entries.
fn not_applied(p: &Propagation, store: &Store, error: &dyn std::fmt::Display) {
    bump(&p.counters.messages_rejected, 1);
    tracing::warn!(%error, "a peer's region expiry names an invalid region; clearing instead");
    store.clear();
}

fn apply(p: &Propagation, store: &Store, peers: &mut Peers, payload: &Bytes) {
    let message = match wire::decode(payload) {
        Ok(message) => message,
        Err(error) => {
            bump(&p.counters.messages_rejected, 1);
            tracing::debug!(%error, len = payload.len(), "dropped a backplane message that is not a valid invalidation");
            let _ = p.events.send(CacheEvent::Rejected);
            return;
        }
    };
    if message.origin == p.instance {
        bump(&p.counters.own_messages_ignored, 1);
        return;
    }
    let heartbeat = message.is_heartbeat();
    let seen = peers.observe(
        message.origin.as_u128(),
        message.origin_started_unix_ms,
        message.seq,
        heartbeat,
        Instant::now(),
    );
    p.counters
        .peers
        .store(peers.len() as u64, Ordering::Relaxed);
    if seen == Seen::Duplicate {
        bump(&p.counters.duplicates_ignored, 1);
        return;
    }
    if heartbeat {
        bump(&p.counters.heartbeats_received, 1);
    } else {
        bump(&p.counters.messages_received, 1);
        bump(&p.counters.invalidations_received, invalidations(&message));
    }
    match seen {
        Seen::Duplicate => return,
        Seen::Gap { missed } => {
            tracing::warn!(origin = %message.origin, missed, "messages from a peer were lost");
            p.loss_clear(store, ClearCause::PeerGap);
        }
        Seen::InOrder => {}
    }
    if heartbeat {
        return;
    }
    let mut applied = 0u64;
    for op in &message.ops {
        match op {
            Op::Remove { keys } => {
                for key in keys {
                    store.remove(&Key::from_text(key.as_str()));
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
    let lag = Duration::from_micros(unix_micros().saturating_sub(message.sent_at_unix_micros));
    p.lag.record(lag);
    let _ = p.events.send(CacheEvent::Applied {
        origin: message.origin,
        seq: message.seq,
        invalidations: applied,
    });
}
