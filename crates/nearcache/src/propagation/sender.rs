//! The sender task: outbox → numbered, encoded messages → backplane.
//!
//! One publish is in flight at a time. When it completes, everything that queued meanwhile
//! goes out in the next message (group commit), so a lone invalidation is sent at once and
//! a burst costs few round trips. A failed publish is retried with backoff (the message keeps
//! its sequence number, so a retry of a publish that did go through is dropped by receivers
//! as a duplicate); the outbox keeps filling meanwhile, bounded, and if it overflows its
//! backlog is sent as a *skipped sequence number*, so peers notice a loss and clear
//! themselves — no clear is broadcast for it. When nothing has been sent for a heartbeat
//! interval, a heartbeat carries the last sequence number so peers notice a lost last
//! message. A peer's hello is answered by a heartbeat at once, rate-limited
//! ([`answer`](super::answer)).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nearcache_backplane::wire::{self, Message, MessageBuilder, Op, PushError, WireLimits};
use nearcache_backplane::{Backplane, BackplaneError};
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use super::answer::AnswerBudget;
use super::backoff::Retry;
use super::outbox::{Batch, Pending, Taken};
use super::{Propagation, bump, unix_micros};
use crate::events::CacheEvent;

pub(crate) async fn run(propagation: Arc<Propagation>, backplane: Arc<dyn Backplane>) {
    let p = &*propagation;
    let _running = p.task_running();
    let mut seq: u64 = 0;
    // The first heartbeat comes one interval after the start, not at once: a peer learns
    // nothing from "I have sent nothing", and a receiver's first-contact rule relies on a
    // heartbeat following the last message by at least one interval (see `peers`).
    let period = p.options.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported_too_large = false;
    let mut answers = AnswerBudget::new(period, tokio::time::Instant::now());
    loop {
        // Between batches too, so a busy sender still answers within the newcomer's window.
        if answer_if_due(p, &*backplane, seq, &mut answers).await {
            heartbeat.reset();
        }
        match p.outbox.take(p.options.max_batch) {
            Taken::Batch(batch) => {
                // A hello requested before this batch was queued goes out first.
                send_hello(p, &*backplane, seq).await;
                if !send_batch(p, &*backplane, &mut seq, batch, &mut reported_too_large).await {
                    tracing::warn!(
                        unsent = p.outbox.pending(),
                        "cache shut down while the backplane was unreachable: \
                         invalidations were not published; peers may serve stale entries \
                         until they expire"
                    );
                    return;
                }
                heartbeat.reset();
            }
            Taken::Closed => {
                // Everything queued went out: tell the peers we are leaving, with our last
                // number, so they forget us without counting it as a loss. (A shutdown that
                // could not publish its backlog returns above without it: peers then treat
                // our silence as a possible loss.)
                send_goodbye(p, &*backplane, seq).await;
                return;
            }
            Taken::Empty => {
                let answer_at = p
                    .answer_pending
                    .load(Ordering::Acquire)
                    .then(|| answers.next_token_at(tokio::time::Instant::now()));
                tokio::select! {
                    () = p.outbox.wait_for_work() => {}
                    () = p.hello_now.notified() => send_hello(p, &*backplane, seq).await,
                    // The loop's top sends it (or finds the bucket empty and waits here).
                    () = p.answer_now.notified() => {}
                    () = sleep_until(answer_at) => {}
                    _ = heartbeat.tick() => send_heartbeat(p, &*backplane, seq).await,
                }
            }
        }
    }
}

/// Publishes one batch as numbered messages, in order. Returns `false` when the cache shut
/// down before all of it could be published.
async fn send_batch(
    p: &Propagation,
    backplane: &dyn Backplane,
    seq: &mut u64,
    batch: Batch,
    reported_too_large: &mut bool,
) -> bool {
    let mut ops = batch.ops;
    let lost = ops.len();
    ops.retain(|op| *op != Pending::Lost);
    let lost = lost - ops.len();
    if lost > 0 {
        // The overflowed backlog: its number is spent unpublished, so each peer sees a gap
        // and clears itself. If nothing follows in this batch, a heartbeat (retried like a
        // message) carries the number so the gap shows as soon as the backplane is back.
        *seq += 1;
        if ops.is_empty()
            && let Some(payload) = heartbeat(p, *seq)
        {
            match publish_until_sent(p, backplane, payload).await {
                Publish::Sent { started } => {
                    p.echo.published(*seq, started);
                    bump(&p.counters.heartbeats_sent, 1);
                }
                Publish::TooLarge { .. } => {}
                Publish::ShutDown => return false,
            }
        }
        p.outbox.sent(lost);
    }
    for outgoing in into_messages(p, *seq, ops) {
        *seq = outgoing.message.seq;
        let Some(payload) = encode(p, &outgoing.message) else {
            // Its number is used up, so peers see a gap and clear: safe, if costly.
            p.outbox.sent(outgoing.pending);
            continue;
        };
        let span = tracing::info_span!(
            "publish",
            seq = outgoing.message.seq,
            ops = invalidations(&outgoing.message),
            bytes = payload.len()
        );
        let mut outcome = publish_until_sent(p, backplane, payload)
            .instrument(span.clone())
            .await;
        if let Publish::TooLarge { size, limit } = outcome {
            // Retrying cannot help. Peers cannot be told which entries changed, so they are
            // told to drop everything (same number: this one never left).
            if !std::mem::replace(reported_too_large, true) {
                tracing::error!(
                    size,
                    limit,
                    "the backplane refuses invalidation messages this large (is its max \
                     payload below the wire format's 1 MiB?); peers are sent a clear instead"
                );
            }
            outcome = match encode(p, &clear_message(p, outgoing.message.seq)) {
                Some(clear) => {
                    publish_until_sent(p, backplane, clear)
                        .instrument(span)
                        .await
                }
                None => Publish::TooLarge { size, limit },
            };
        }
        match outcome {
            Publish::Sent { started } => {
                p.echo.published(outgoing.message.seq, started);
                bump(&p.counters.messages_sent, 1);
                bump(
                    &p.counters.invalidations_sent,
                    invalidations(&outgoing.message),
                );
                p.counters.sent_by_kind.count(&outgoing.message);
            }
            Publish::TooLarge { .. } => {
                tracing::error!("the backplane refuses even a clear; invalidations are lost");
            }
            Publish::ShutDown => return false,
        }
        p.outbox.sent(outgoing.pending);
    }
    p.outbox.mark_published(batch.covers);
    true
}

/// A heartbeat carrying `seq`, encoded.
fn heartbeat(p: &Propagation, seq: u64) -> Option<Bytes> {
    encode(
        p,
        &Message::heartbeat(p.instance, seq, unix_micros(), p.started_unix_ms),
    )
}

/// Publishes the hello our first subscription asked for, if it has not gone out yet (one
/// attempt, bounded by `publish_timeout`: without it peers read our first message by the
/// introduction-window rule, as before hellos existed).
async fn send_hello(p: &Propagation, backplane: &dyn Backplane, seq: u64) {
    if !p.hello_pending.swap(false, Ordering::AcqRel) {
        return;
    }
    let hello = Message::hello(p.instance, seq, unix_micros(), p.started_unix_ms);
    if let Some(payload) = encode(p, &hello) {
        let started = tokio::time::Instant::now();
        let sent =
            tokio::time::timeout(p.options.publish_timeout, backplane.publish(payload)).await;
        if matches!(sent, Ok(Ok(()))) {
            p.echo.published(seq, started);
        } else {
            tracing::debug!(
                "could not publish a hello; peers judge our first message by their introduction window"
            );
        }
    }
}

/// Publishes an answer to the hellos received since the last one, if any are waiting and
/// the budget allows; returns whether one went out (one attempt, like a heartbeat: a lost
/// answer leaves the newcomer to its introduction window).
async fn answer_if_due(
    p: &Propagation,
    backplane: &dyn Backplane,
    seq: u64,
    budget: &mut AnswerBudget,
) -> bool {
    if !p.answer_pending.load(Ordering::Acquire) || !budget.take(tokio::time::Instant::now()) {
        return false;
    }
    // Cleared before the publish: a hello received from now on needs a later answer.
    p.answer_pending.store(false, Ordering::Release);
    let Some(payload) = heartbeat(p, seq) else {
        return false;
    };
    let started = tokio::time::Instant::now();
    let bytes = payload.len() as u64;
    let sent = tokio::time::timeout(p.options.publish_timeout, backplane.publish(payload)).await;
    if matches!(sent, Ok(Ok(()))) {
        bump(&p.counters.bytes_sent, bytes);
        p.echo.published(seq, started);
        bump(&p.counters.answers_sent, 1);
        true
    } else {
        tracing::debug!(
            "could not publish an answer to a hello; newcomers judge our first message by their introduction window"
        );
        false
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn send_goodbye(p: &Propagation, backplane: &dyn Backplane, seq: u64) {
    let message = Message::goodbye(p.instance, seq, unix_micros(), p.started_unix_ms);
    if let Some(payload) = encode(p, &message) {
        let sent =
            tokio::time::timeout(p.options.publish_timeout, backplane.publish(payload)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(
                "could not publish a goodbye; peers will forget this instance when it has been silent long enough"
            );
        }
    }
}

async fn send_heartbeat(p: &Propagation, backplane: &dyn Backplane, seq: u64) {
    if let Some(payload) = heartbeat(p, seq) {
        let started = tokio::time::Instant::now();
        let bytes = payload.len() as u64;
        let sent =
            tokio::time::timeout(p.options.publish_timeout, backplane.publish(payload)).await;
        if matches!(sent, Ok(Ok(()))) {
            bump(&p.counters.bytes_sent, bytes);
            p.echo.published(seq, started);
            bump(&p.counters.heartbeats_sent, 1);
        }
    }
}

/// Invalidations a message carries: each removed key, region expiry, sub-key expiry or clear
/// counts one (the receiver counts the same way).
pub(crate) fn invalidations(message: &Message) -> u64 {
    message
        .ops
        .iter()
        .filter(|op| !op.is_control())
        .map(|op| op.key_count().max(1) as u64)
        .sum()
}

/// One message of a batch, and how many of the batch's queued operations it carries.
struct Outgoing {
    message: Message,
    pending: usize,
}

/// Splits a batch into messages that each fit the wire limits, numbering them from `seq + 1`.
fn into_messages(p: &Propagation, mut seq: u64, ops: Vec<Pending>) -> Vec<Outgoing> {
    let mut messages = Vec::new();
    let mut builder = MessageBuilder::new(p.limits);
    let mut in_builder = 0;
    let mut seal =
        |builder: &mut MessageBuilder, in_builder: &mut usize, out: &mut Vec<Outgoing>| {
            seq += 1;
            let full = std::mem::replace(builder, MessageBuilder::new(p.limits));
            out.push(Outgoing {
                message: full.build(p.instance, seq, unix_micros(), p.started_unix_ms),
                pending: std::mem::take(in_builder),
            });
        };
    for op in ops {
        let mut pushed = push(&mut builder, op);
        if let Err(PushError::Full(op)) = pushed {
            seal(&mut builder, &mut in_builder, &mut messages);
            pushed = push(&mut builder, op);
        }
        if let Err(error) = pushed {
            // A key or region name too long for any message. Peers cannot be told which
            // entry changed, so they are told to drop everything instead of nothing.
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "an invalidation cannot be sent as is; peers are sent a clear instead"
            );
            if let Err(PushError::Full(_)) = builder.push(Op::Clear) {
                seal(&mut builder, &mut in_builder, &mut messages);
                let _ = builder.push(Op::Clear);
            }
        }
        in_builder += 1;
    }
    if !builder.is_empty() {
        seal(&mut builder, &mut in_builder, &mut messages);
    }
    messages
}

fn push(builder: &mut MessageBuilder, pending: Pending) -> Result<(), PushError<Pending>> {
    let result = match &pending {
        Pending::Remove(key) => builder
            .push_remove(key.as_str().to_owned())
            .map_err(|e| e.map_value(|_| ())),
        Pending::ExpireRegion(region) => builder
            .push(Op::ExpireRegion {
                region: region.clone(),
            })
            .map_err(|e| e.map_value(|_| ())),
        Pending::ExpireRegionKey(region, key) => builder
            .push(Op::ExpireRegionKey {
                region: region.clone(),
                key: key.clone(),
            })
            .map_err(|e| e.map_value(|_| ())),
        Pending::Clear => builder.push(Op::Clear).map_err(|e| e.map_value(|_| ())),
        // Taken out by `send_batch` before messages are built: it is a number, not an op.
        Pending::Lost => Ok(()),
    };
    result.map_err(|e| e.map_value(|()| pending))
}

/// Encodes under our limits, signed when a key is configured.
fn encode(p: &Propagation, message: &Message) -> Option<Bytes> {
    let encoded = match &p.keys {
        Some(keys) => wire::encode_signed(message, &p.limits, keys),
        None => wire::encode_with(message, &p.limits),
    };
    match encoded {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "could not encode an invalidation message; dropped"
            );
            None
        }
    }
}

/// A message of only `Clear`, numbered `seq`: what peers get instead of one that cannot be sent.
fn clear_message(p: &Propagation, seq: u64) -> Message {
    let mut builder = MessageBuilder::new(WireLimits::DEFAULT);
    let _ = builder.push(Op::Clear); // one op always fits an empty message
    builder.build(p.instance, seq, unix_micros(), p.started_unix_ms)
}

/// How [`publish_until_sent`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Accepted by the backplane; the successful attempt started at `started`.
    Sent { started: tokio::time::Instant },
    /// The backplane will never accept a payload this large; nothing was sent.
    TooLarge { size: usize, limit: usize },
    /// The cache is shutting down and the backplane still refuses it.
    ShutDown,
}

/// The longest wait between two attempts at a publish that invalidations wait on: the
/// `publish_timeout` (or `reconnect_initial_delay`, if longer), never more than
/// `reconnect_max_delay`. Peers that are back before this instance's own subscription (its
/// backoff has grown through the outage too) must not wait that backoff out for its
/// invalidations: once the backplane is back they go out within about this long. During an
/// outage it costs one attempt per period, only on instances that have something to send.
pub(crate) fn publish_retry_cap(options: &crate::options::BackplaneOptions) -> Duration {
    options
        .publish_timeout
        .max(options.reconnect_initial_delay)
        .min(options.reconnect_max_delay)
}

/// Publishes `payload`, retrying with backoff (capped by [`publish_retry_cap`], and cut short
/// when this instance's subscription comes back) until it is sent or the backplane says it
/// is too large (retrying cannot help). Once the cache is closed a failed attempt is not
/// retried ([`Publish::ShutDown`]), so a shutdown or drop never lingers on a dead backplane.
async fn publish_until_sent(p: &Propagation, backplane: &dyn Backplane, payload: Bytes) -> Publish {
    let mut retry = Retry::new(
        p.options.reconnect_initial_delay,
        publish_retry_cap(&p.options),
    );
    let mut failing_since: Option<Instant> = None;
    let mut shutdown = p.shutdown.subscribe();
    loop {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(
            p.options.publish_timeout,
            backplane.publish(payload.clone()),
        )
        .await
        {
            Ok(Ok(())) => {
                bump(&p.counters.bytes_sent, payload.len() as u64);
                if let Some(since) = failing_since {
                    tracing::info!(outage = ?since.elapsed(), "publishing invalidations again");
                }
                return Publish::Sent { started };
            }
            Ok(Err(BackplaneError::TooLarge { size, limit })) => {
                return Publish::TooLarge { size, limit };
            }
            outcome => {
                bump(&p.counters.publish_failures, 1);
                let _ = p.events.send(CacheEvent::PublishFailed);
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    match outcome {
                        Ok(Err(error)) => {
                            tracing::warn!(
                                error = &error as &dyn std::error::Error,
                                "publishing invalidations failed; they stay queued and are retried"
                            )
                        }
                        _ => {
                            tracing::warn!(timeout = ?p.options.publish_timeout, "publishing invalidations timed out; they stay queued and are retried")
                        }
                    }
                }
                if p.outbox.is_closed() {
                    return Publish::ShutDown;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry.next_delay()) => {}
                    () = p.retry_now.notified() => {}
                    _ = shutdown.wait_for(|closed| *closed) => {}
                }
            }
        }
    }
}
