//! Callers that stop waiting for a load: the soft and the hard timeout of a wait.
//!
//! A caller that is not running the factory itself (it joined another caller's load, or
//! a detached loader's factory runs on the runtime) waits for the flight with two
//! deadlines, both measured from when it began to wait:
//!
//! - the **soft timeout**, only when the key's expired value is kept for fail-safe (the
//!   entry's own `EntryOptions::soft_timeout`, else the store's): at it the caller gets that
//!   value and the load goes on; its result is stored under the no-stale-insert rule of
//!   every load, so an invalidation that overlaps it keeps it out;
//! - the **hard timeout**: the caller gets the kept value if there is one, else
//!   [`LoadError::Timeout`]. Whether the factory goes on is its runner's business (see
//!   `OnHardTimeout`); a waiter cannot stop another caller's factory.
//!
//! The kept value is looked up under the key's flight-shard lock, as the fail-safe of a
//! failed load is: `remove` and `set` replace it under that lock, and a `clear`, a region or
//! sub-key expiry kill it by epoch and token, which the look-up checks. So a caller never
//! gets a value that was invalidated, however long it waited. It is not re-armed: the load
//! is still running, and its result (or its own fail-safe) replaces it.

use std::time::Duration;

use nearcache_keys::Key;

use crate::entry::Standing;
use crate::error::{FactoryTimeout, LoadError};
use crate::flight::{Flight, Outcome};
use crate::source::Source;
use crate::stats::Counter;
use crate::store::StoreInner;
use crate::value::Shape;

/// How a timed wait ended.
pub(crate) enum Waited<'f, S, E> {
    /// The flight finished: resolve its outcome as usual.
    Outcome(&'f Outcome),
    /// The caller stopped waiting at a timeout, with this answer.
    Answered(Result<S, LoadError<E>>),
}

impl StoreInner {
    /// The soft timeout a caller waiting for `key`'s load uses: the kept entry's, if it is
    /// kept for fail-safe now and is shorter than the hard timeout.
    pub(crate) fn soft_timeout_for(&self, key: &Key, bypass: bool) -> Option<Duration> {
        if bypass || self.read_bypass() {
            return None;
        }
        let (now, clears) = (self.clock.now(), self.regions.clears());
        let soft = self
            .cache
            .read(key, |held| {
                (held.standing_at(now, clears) == Standing::Kept)
                    .then(|| held.soft_timeout())
                    .flatten()
            })
            .flatten()?;
        match self.hard_timeout {
            Some(hard) if soft >= hard => None,
            _ => Some(soft),
        }
    }

    /// `key`'s value kept for fail-safe, for a caller that stops waiting for its load; read
    /// under the key's flight-shard lock (see the module docs). Nothing while reads bypass
    /// the store.
    fn kept_value<S: Shape>(&self, key: &Key, bypass: bool) -> Option<S> {
        if bypass || self.read_bypass() {
            return None;
        }
        let shard = self.flights.lock(key);
        let (now, clears) = (self.clock.now(), self.regions.clears());
        let payload = self
            .cache
            .read(key, |held| {
                (held.standing_at(now, clears) == Standing::Kept).then(|| held.payload().clone())
            })
            .flatten()?;
        drop(shard);
        S::from_stored(&payload, key)?.ok()
    }

    /// The answer of a caller whose soft timeout passed: the kept value, counted, or `None`
    /// (it is gone: invalidated or past its window) to go on waiting.
    pub(crate) fn answer_at_soft_timeout<S: Shape, E>(
        &self,
        key: &Key,
        bypass: bool,
    ) -> Option<Result<S, LoadError<E>>> {
        let served = self.kept_value::<S>(key, bypass)?;
        self.stats.incr(Counter::SoftTimeouts);
        tracing::debug!(
            key = %self.shown(key),
            "the load is past the soft timeout: serving the expired value while it goes on"
        );
        Some(Ok(self.served_expired(served, Source::SoftTimeout)))
    }

    /// The answer of a caller whose hard timeout (`after`) passed while waiting for
    /// `flight`: the kept value, else the timeout error. The load's timeout and fail-safe
    /// are counted once per load.
    pub(crate) fn answer_at_hard_timeout<S: Shape, E>(
        &self,
        flight: &Flight,
        key: &Key,
        bypass: bool,
        after: Duration,
    ) -> Result<S, LoadError<E>> {
        if flight.first_hard_timeout() {
            self.stats.incr(Counter::HardTimeouts);
        }
        match self.kept_value::<S>(key, bypass) {
            Some(served) => {
                if flight.first_fail_safe() {
                    self.stats.incr(Counter::FailSafeActivations);
                }
                tracing::warn!(
                    key = %self.shown(key),
                    cause = "hard_timeout",
                    "the factory failed: serving the expired value (fail-safe)"
                );
                Ok(self.served_expired(served, Source::FailSafe))
            }
            None => Err(LoadError::Timeout(FactoryTimeout::new(key, after))),
        }
    }

    /// Waits for `flight` as a caller that does not run its factory, blocking the thread,
    /// until the outcome or a timeout (module docs).
    pub(crate) fn wait_blocking_timed<'f, S: Shape, E>(
        &self,
        flight: &'f Flight,
        key: &Key,
        bypass: bool,
    ) -> Waited<'f, S, E> {
        let started = std::time::Instant::now();
        if let Some(soft) = self.soft_timeout_for(key, bypass) {
            if let Some(outcome) = flight.wait_blocking_until(started + soft) {
                return Waited::Outcome(outcome);
            }
            if let Some(answer) = self.answer_at_soft_timeout(key, bypass) {
                return Waited::Answered(answer);
            }
        }
        let Some(hard) = self.hard_timeout else {
            return Waited::Outcome(flight.wait_blocking());
        };
        match flight.wait_blocking_until(started + hard) {
            Some(outcome) => Waited::Outcome(outcome),
            None => Waited::Answered(self.answer_at_hard_timeout(flight, key, bypass, hard)),
        }
    }

    /// [`wait_blocking_timed`](Self::wait_blocking_timed) for an async caller, on tokio's
    /// timers.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it only stops this caller's wait.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_timed<'f, S: Shape, E>(
        &self,
        flight: &'f Flight,
        key: &Key,
        bypass: bool,
    ) -> Waited<'f, S, E> {
        let started = tokio::time::Instant::now();
        if let Some(soft) = self.soft_timeout_for(key, bypass) {
            if let Ok(outcome) = tokio::time::timeout_at(started + soft, flight.wait()).await {
                return Waited::Outcome(outcome);
            }
            if let Some(answer) = self.answer_at_soft_timeout(key, bypass) {
                return Waited::Answered(answer);
            }
        }
        let Some(hard) = self.hard_timeout else {
            return Waited::Outcome(flight.wait().await);
        };
        match tokio::time::timeout_at(started + hard, flight.wait()).await {
            Ok(outcome) => Waited::Outcome(outcome),
            Err(_elapsed) => {
                Waited::Answered(self.answer_at_hard_timeout(flight, key, bypass, hard))
            }
        }
    }

    /// Without tokio no timeout can be set (the options refuse it): the plain wait.
    #[cfg(not(feature = "tokio"))]
    pub(crate) async fn wait_timed<'f, S: Shape, E>(
        &self,
        flight: &'f Flight,
        _key: &Key,
        _bypass: bool,
    ) -> Waited<'f, S, E> {
        Waited::Outcome(flight.wait().await)
    }
}

#[cfg(all(test, not(shuttle), feature = "tokio"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use nearcache_keys::Key;

    use crate::{Store, StoreOptions};

    const SECOND: Duration = Duration::from_secs(1);

    /// The soft timeout a waiter uses is the kept entry's own (else the store's), only while
    /// the entry is kept, and only when shorter than the hard timeout.
    #[test]
    fn a_waiters_soft_timeout_is_the_kept_entrys_and_only_while_it_is_kept() {
        let (clock, mock) = quanta::Clock::mock();
        let store = Store::with_clock(
            StoreOptions {
                fail_safe_max_duration: Some(600 * SECOND),
                soft_timeout: Some(Duration::from_millis(100)),
                hard_timeout: Some(SECOND),
                ..StoreOptions::default()
            },
            clock,
        )
        .unwrap();
        let inner = &store.inner;
        let key = |name: &str| Key::from_text(name);
        let cases = [
            ("default", None, Some(Duration::from_millis(100))),
            (
                "own",
                Some(Duration::from_millis(30)),
                Some(Duration::from_millis(30)),
            ),
            ("off", Some(Duration::ZERO), None),
            ("not_shorter", Some(SECOND), None),
        ];
        for (name, own, _) in cases {
            store.set_with(key(name), 1_u8, |entry| {
                entry.time_to_live(10 * SECOND);
                if let Some(own) = own {
                    entry.soft_timeout(own);
                }
            });
            assert_eq!(
                inner.soft_timeout_for(&key(name), false),
                None,
                "{name}: live"
            );
        }
        mock.increment(11 * SECOND);
        for (name, _, expected) in cases {
            assert_eq!(
                inner.soft_timeout_for(&key(name), false),
                expected,
                "{name}"
            );
            assert_eq!(
                inner.soft_timeout_for(&key(name), true),
                None,
                "{name}: bypass"
            );
        }
        store.remove(&key("own"));
        assert_eq!(inner.soft_timeout_for(&key("own"), false), None, "removed");
    }
}
