//! Get-or-create: the hit path, joining or leading a flight, and the leader's
//! check-then-insert that keeps a value loaded across an invalidation out of the store.
//!
//! The stale-insert rule: a flight reads the regions' epoch, then the global epoch, then the
//! clear count when it begins, before its factory runs. Its value is *fresh* unless, at the
//! end, the flight was invalidated (`remove`/`set` of the key), the global epoch or the clear
//! count has moved or the global epoch was already newer than the start (a `clear`), or a
//! token the factory collected is expired or was installed after the start (a region expiry,
//! even one that came before the factory asked for the region). Only a fresh value is
//! stored; a stale one is returned to the callers that overlapped the invalidation, and never
//! to one that joined after it (see `flight`).
//! The check and the insert happen under the key's flight-shard lock, which `remove`, `set`
//! and joining callers also take, so nothing slips between them; token expiries need no
//! lock, because an entry stored just before its token flips is dead on arrival and never
//! returned.
//!
//! Fail-safe: when a factory fails (an error, a panic, a hard timeout), the leader looks,
//! under the same flight-shard lock, for the key's entry *kept* past its time expiry (see
//! `EntryOptions::fail_safe_max_duration`). Only an entry that no invalidation has touched is kept
//! (`remove` and `set` replace it under that lock; a `clear` or region expiry kills it by
//! clear count and token, which the check reads), so what fail-safe serves merely expired. It is
//! handed to every caller of the flight in place of the error and re-armed, alive, for the
//! throttle.

use std::any::{Any, type_name};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nearcache_keys::Key;

use crate::entry::{EntryOptions, Standing, StoredEntry};
use crate::error::{FactoryTimeout, LoadError, TypeMismatch, WouldDeadlock};
use crate::flight::{Flight, Joined, LeaderKind, Outcome};
use crate::removal::{RemovalCause, Removals};
use crate::shown::Shown;
use crate::source::Source;
use crate::stats::Counter;
use crate::store::StoreInner;
use crate::timeout::Waited;
use crate::value::{Payload, Shape, mismatch};

/// What a caller found: a usable hit, a flight to wait for, or a flight to lead.
pub(crate) enum Acquired<'a, S> {
    Hit(Result<S, TypeMismatch>),
    Wait { flight: Arc<Flight>, joined_at: u64 },
    Lead(Leader<'a>),
}

/// What a get-or-create caller goes on with: the lead of the key's load, or its answer (a
/// hit, or the outcome of a flight it joined).
pub(crate) enum Turn<'a, S, E> {
    Lead(Leader<'a>),
    Answer(Result<S, LoadError<E>>),
}

/// Why a factory run gave no value.
pub(crate) enum Failed<E> {
    /// It returned `Err`.
    Error(E),
    /// It panicked: the payload, resumed when no fail-safe value stands in.
    Panic(Box<dyn Any + Send>),
    /// It ran past the hard timeout (this long) and was cancelled.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    TimedOut(std::time::Duration),
}

/// The caller running a flight's factory. Dropping it unfinished (a panic in the factory,
/// or an async caller dropped mid-load) abandons the flight so a waiter takes over.
pub(crate) struct Leader<'a> {
    inner: &'a StoreInner,
    key: Key,
    flight: Arc<Flight>,
    bypass: bool,
    finished: bool,
}

impl StoreInner {
    /// `read` of the live entry under `key`, if any: the entry is checked and read in place
    /// under its shard's read lock (a read clones at most the value's `Arc`). A dead one
    /// found on the way is removed.
    ///
    /// Memory ordering: the clear count is loaded (acquire) before the shard's read lock is
    /// taken, so a `clear` whose count store this load missed is ordered after this read
    /// began, as if the read had happened just before the `clear` (linearisable at the
    /// load). Entries are published by the shard's write lock and read under its read lock
    /// (the lock's acquire/release orders the entry's fields). Region tokens are loaded with
    /// acquire: a read that sees a token expired returns nothing, and one that does not is
    /// ordered before the expiry. The sliding window's last access is a relaxed hint: it is
    /// only ever raised (`fetch_max`), so a stale read can only make an entry look older
    /// than it is, by at most the concurrent touch it missed.
    #[inline(always)] // the hit path: one frame from the caller's loop to quick_cache's lookup
    pub(crate) fn lookup_with<R>(&self, key: &Key, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        self.lookup::<true, R>(key, |entry| read(entry.payload()))
    }

    /// [`lookup_with`](Self::lookup_with), reading the whole live entry.
    #[inline(always)]
    pub(crate) fn lookup_entry_with<R>(
        &self,
        key: &Key,
        read: impl FnOnce(&StoredEntry) -> R,
    ) -> Option<R> {
        self.lookup::<true, R>(key, read)
    }

    /// [`lookup_entry_with`](Self::lookup_entry_with); with `REMOVE_DEAD` false a dead entry
    /// is left in place (for callers that hold a flight-shard lock, where a removal listener
    /// must not run: the insert that follows replaces it and reports it then).
    #[inline(always)]
    fn lookup<const REMOVE_DEAD: bool, R>(
        &self,
        key: &Key,
        read: impl FnOnce(&StoredEntry) -> R,
    ) -> Option<R> {
        let clears = self.regions.clears();
        let entry = self.cache.read_guard(key)?;
        if entry.is_live(&self.clock, clears) {
            return Some(read(&entry));
        }
        drop(entry);
        if REMOVE_DEAD {
            self.remove_dead(key);
        }
        None
    }

    /// Removes `key`'s entry if it is (still) dead: a live one stored meanwhile stays. Kept
    /// out of line: the hit path above stays small. Called with no lock held.
    #[cold]
    #[inline(never)]
    fn remove_dead(&self, key: &Key) {
        let (now, clears) = (self.clock.now(), self.regions.clears());
        if let Some((key, entry)) = self
            .cache
            .remove_if(key, |held| !held.is_kept_at(now, clears))
        {
            self.stats.incr(Counter::Expirations);
            if self.listener.is_some() {
                let cause = entry.removal_cause(now, clears, RemovalCause::Expired);
                drop(entry);
                self.report_one(key, cause);
            }
        }
    }

    /// What `entry`, taken out of the store now, is reported as; `alive`: why, if it is live.
    fn removal(&self, key: Key, entry: &StoredEntry, alive: RemovalCause) -> Removals {
        let mut removals = Removals::default();
        if self.listener.is_some() {
            let cause = entry.removal_cause(self.clock.now(), self.regions.clears(), alive);
            removals.push(key, cause);
        }
        removals
    }

    /// Stores `entry` (`None`: it was dead on arrival) under `key`. The caller holds the
    /// key's flight-shard lock, and reports the returned removals once it has let go of it.
    /// An entry that is not stored also removes the key's old one, which is dead, negative
    /// or superseded. Returns whether it was stored.
    pub(crate) fn insert_locked(&self, key: &Key, entry: Option<StoredEntry>) -> (bool, Removals) {
        let replaced = |old: Option<(Key, StoredEntry)>| match old {
            Some((key, entry)) => self.removal(key, &entry, RemovalCause::Replaced),
            None => Removals::default(),
        };
        match entry {
            None => {
                self.stats.incr(Counter::Expirations);
                (false, replaced(self.cache.remove(key)))
            }
            Some(entry) if u64::from(entry.weight()) > self.max_entry_weight => {
                self.stats.incr(Counter::InsertsRejectedTooHeavy);
                tracing::warn!(
                    key = %self.shown(key),
                    weight = entry.weight(),
                    max_entry_weight = self.max_entry_weight,
                    "entry is heavier than one shard's share of the weight budget: \
                     returned but not cached (lower its weight, raise max_weight, or use fewer shards)"
                );
                (false, replaced(self.cache.remove(key)))
            }
            Some(entry) => {
                let listening = self.listener.is_some();
                let mut evicted = self.cache.insert(key.clone(), entry, listening);
                self.stats.incr(Counter::Inserts);
                let mut removals = replaced(evicted.replaced.take());
                if listening {
                    for (key, entry) in evicted.evictions() {
                        removals.append(self.removal(key, &entry, RemovalCause::Evicted));
                    }
                }
                (true, removals)
            }
        }
    }

    #[inline]
    fn usable<S: Shape>(&self, key: &Key) -> Option<Result<S, TypeMismatch>> {
        self.lookup_entry_with(key, |entry| hit_of::<S>(entry, key))?
    }

    /// [`usable`](Self::usable) for a caller holding the key's flight-shard lock.
    #[inline]
    fn usable_locked<S: Shape>(&self, key: &Key) -> Option<Result<S, TypeMismatch>> {
        self.lookup::<false, _>(key, |entry| hit_of::<S>(entry, key))?
    }

    /// The hit path of get-or-create alone: the stored value when it is one this shape
    /// returns as is, counted as a hit. `None` when the caller must take its load path —
    /// a miss, a bypass, a disabled store, a cached `None` a plain caller cannot use, or a
    /// value of another type (the load path reads the entry again and returns the
    /// mismatch) — counting nothing: the load path counts that call.
    ///
    /// The loaders check it first: a hit then never builds the load's state (for the async
    /// loaders a future of hundreds of bytes holding the factory's future and a flight wait;
    /// for both, the leader or waiter handle of `acquire`), and carries no error.
    #[inline]
    pub(crate) fn try_hit<S: Shape>(&self, key: &Key) -> Option<S> {
        if self.reads_off() {
            return None;
        }
        // A re-armed fail-safe value is marked for the shapes that carry their source
        // (`served_as` is the identity for the others, so plain hits pay nothing for it).
        let hit = self.lookup_entry_with(key, |entry| {
            S::hit(entry.payload()).map(|value| {
                if entry.is_re_armed() {
                    value.served_as(Source::FailSafe)
                } else {
                    value
                }
            })
        })??;
        self.stats.incr(Counter::Hits);
        Some(hit)
    }

    /// The hit path of the detached loaders: [`try_hit`](Self::try_hit), and whether this
    /// read claimed the entry's eager refresh (the caller then starts it). Only these loaders
    /// pay the extra check; `get` and the other loaders never do.
    #[inline]
    pub(crate) fn try_hit_refreshing<S: Shape>(
        &self,
        key: &Key,
    ) -> Option<(Result<S, TypeMismatch>, bool)> {
        if self.reads_off() {
            return None;
        }
        let (typed, due, re_armed) = self.lookup_entry_with(key, |entry| {
            (
                entry.payload().read::<S::Value>(),
                entry.claim_refresh(&self.clock),
                entry.is_re_armed(),
            )
        })?;
        let hit = marked(S::from_typed(typed)?, re_armed);
        self.stats.incr(Counter::Hits);
        Some((hit.map_err(|()| self.mismatch::<S::Value>(key)), due))
    }

    /// Leads a background refresh of `key`, unless a load of it that callers could join is
    /// in progress already (one load at a time per key, refresh or not). Only a refresh that
    /// leads is counted in `eager_refreshes`: one that finds a load running starts nothing.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn lead_refresh(&self, key: &Key, kind: LeaderKind) -> Option<Leader<'_>> {
        let flight = self
            .flights
            .lock(key)
            .lead_unless_running(key, &self.regions, kind)?;
        self.stats.incr(Counter::EagerRefreshes);
        self.stats.incr(Counter::Loads);
        Some(Leader {
            inner: self,
            key: key.clone(),
            flight,
            bypass: false,
            finished: false,
        })
    }

    /// A background refresh with a blocking factory, on this (blocking-pool) thread. Its
    /// value is stored under the same rule as any load's (not if an invalidation overlapped
    /// it); its error or panic is dropped (the current value stays until it expires), as is
    /// the fail-safe value a failure may find (nobody waits for it).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn refresh_sync<S, E, F>(&self, key: &Key, factory: F)
    where
        S: Shape,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        let Some(leader) = self.lead_refresh(key, LeaderKind::Blocking) else {
            return;
        };
        let mut entry = leader.entry();
        let result = run_blocking(factory, &mut entry);
        if leader.finish::<S, E>(entry, result).is_err() {
            tracing::debug!(key = %self.shown(key), "an eager refresh failed; the current value stays");
        }
    }

    /// A background refresh with an async factory, run to completion on this
    /// (blocking-pool) thread by `runtime`, under the hard timeout if one is set. `from`:
    /// the current-thread runtime's thread the hit that started it ran on, if it did
    /// (blocking callers there do not wait for it; see [`LeaderKind::AsyncFrom`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn refresh_async<S, E, F>(
        &self,
        runtime: &tokio::runtime::Handle,
        from: Option<crate::shim::ThreadToken>,
        key: &Key,
        factory: F,
    ) where
        S: Shape,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        let kind = from.map_or(LeaderKind::Blocking, LeaderKind::AsyncFrom);
        let Some(leader) = self.lead_refresh(key, kind) else {
            return;
        };
        let mut entry = leader.entry();
        let result = runtime.block_on(async {
            let run = CatchUnwind(std::pin::pin!(factory(&mut entry)));
            self.run_detached(&leader, run).await
        });
        if leader.finish::<S, E>(entry, result).is_err() {
            tracing::debug!(key = %self.shown(key), "an eager refresh failed; the current value stays");
        }
    }

    /// Drives the future of a factory that runs detached from its callers (a refresh, a
    /// detached load) under the hard timeout: at it the future is dropped (`Cancel`), or
    /// the timeout is counted and the future driven to its end (`Background`).
    #[cfg(feature = "tokio")]
    pub(crate) async fn run_detached<T, E, F>(
        &self,
        leader: &Leader<'_>,
        mut run: CatchUnwind<'_, F>,
    ) -> Result<T, Failed<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let Some(limit) = self.hard_timeout else {
            return run.await;
        };
        match tokio::time::timeout(limit, &mut run).await {
            Ok(result) => result,
            Err(_elapsed) => {
                leader.count_hard_timeout();
                match self.hard_timeout_action {
                    crate::options::OnHardTimeout::Background => run.await,
                    // The factory's future is dropped on return.
                    crate::options::OnHardTimeout::Cancel => Err(Failed::TimedOut(limit)),
                }
            }
        }
    }

    /// The error of a read of `T` under `key` that found another type. Cold: the entry is
    /// read again for the name of the type it holds (if it is gone meanwhile, the error
    /// says so).
    #[cold]
    #[inline(never)]
    pub(crate) fn mismatch<T: ?Sized>(&self, key: &Key) -> TypeMismatch {
        let found = self
            .cache
            .read(key, |entry| entry.payload().type_name())
            .unwrap_or("an entry removed since");
        mismatch::<T>(key, found)
    }

    pub(crate) fn acquire<S: Shape>(
        &self,
        key: &Key,
        bypass: bool,
        kind: LeaderKind,
    ) -> Acquired<'_, S> {
        if !bypass && let Some(hit) = self.usable::<S>(key) {
            return Acquired::Hit(hit);
        }
        let mut shard = self.flights.lock(key);
        // A flight may have finished between the miss and the lock: its insert is visible now.
        if !bypass && let Some(hit) = self.usable_locked::<S>(key) {
            return Acquired::Hit(hit);
        }
        match shard.join_or_lead(key, &self.regions, kind) {
            Joined::Waiter { flight, joined_at } => Acquired::Wait { flight, joined_at },
            Joined::Leader(flight) => {
                drop(shard);
                self.stats.incr(Counter::Loads);
                Acquired::Lead(Leader {
                    inner: self,
                    key: key.clone(),
                    flight,
                    bypass,
                    finished: false,
                })
            }
        }
    }

    /// [`acquire`](Self::acquire) for a caller's get-or-create loop, counting its first pass
    /// as a hit or a miss: a caller that goes round again (its flight was abandoned, or too
    /// old to join) is not counted twice.
    pub(crate) fn acquire_counted<S: Shape>(
        &self,
        key: &Key,
        bypass: bool,
        kind: LeaderKind,
        counted: &mut bool,
    ) -> Acquired<'_, S> {
        let acquired = self.acquire::<S>(key, bypass, kind);
        if !*counted {
            *counted = true;
            self.stats.incr(match acquired {
                Acquired::Hit(_) => Counter::Hits,
                Acquired::Wait { .. } | Acquired::Lead(_) => Counter::Misses,
            });
        }
        acquired
    }

    /// Acquires `key` until this caller leads its load or has its answer: a hit, or the
    /// outcome of a flight it joined, waited for on this thread. A joined flight that gives
    /// no answer for this caller (abandoned, or stale for it) sends it round again.
    pub(crate) fn lead_or_answer_sync<S: Shape, E: Send + Sync + 'static>(
        &self,
        key: &Key,
        bypass: bool,
        counted: &mut bool,
    ) -> Turn<'_, S, E> {
        loop {
            match self.acquire_counted::<S>(key, bypass, LeaderKind::Blocking, counted) {
                Acquired::Hit(hit) => return Turn::Answer(hit.map_err(LoadError::TypeMismatch)),
                Acquired::Wait { flight, joined_at } => {
                    if let Some(result) = self.wait_sync::<S, E>(&flight, joined_at, key, bypass) {
                        return Turn::Answer(result);
                    }
                }
                Acquired::Lead(leader) => return Turn::Lead(leader),
            }
        }
    }

    /// [`lead_or_answer_sync`](Self::lead_or_answer_sync) for an async caller, which waits
    /// for a joined flight without blocking.
    pub(crate) async fn lead_or_answer_async<S: Shape, E: Send + Sync + 'static>(
        &self,
        key: &Key,
        bypass: bool,
        counted: &mut bool,
    ) -> Turn<'_, S, E> {
        loop {
            match self.acquire_counted::<S>(key, bypass, LeaderKind::Async, counted) {
                Acquired::Hit(hit) => return Turn::Answer(hit.map_err(LoadError::TypeMismatch)),
                Acquired::Wait { flight, joined_at } => {
                    if let Some(result) = self
                        .wait_async::<S, E>(&flight, joined_at, key, bypass)
                        .await
                    {
                        return Turn::Answer(result);
                    }
                }
                Acquired::Lead(leader) => return Turn::Lead(leader),
            }
        }
    }

    /// The blocking get-or-create.
    #[inline(never)]
    pub(crate) fn load_sync<S, E, F>(&self, key: &Key, factory: F) -> Result<S, LoadError<E>>
    where
        S: Shape,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        if !self.enabled {
            self.stats.incr(Counter::Misses);
            self.stats.incr(Counter::Loads);
            let mut entry = EntryOptions::new(key.clone(), Arc::clone(&self.regions));
            return self.pass_through(factory(&mut entry));
        }
        let bypass = self.read_bypass();
        match self.lead_or_answer_sync::<S, E>(key, bypass, &mut false) {
            Turn::Lead(leader) => self.lead_sync::<S, E, F>(leader, factory),
            Turn::Answer(answer) => answer,
        }
    }

    /// The async get-or-create.
    pub(crate) async fn load_async<S, E, F>(&self, key: &Key, factory: F) -> Result<S, LoadError<E>>
    where
        S: Shape,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        if !self.enabled {
            self.stats.incr(Counter::Misses);
            self.stats.incr(Counter::Loads);
            let mut entry = EntryOptions::new(key.clone(), Arc::clone(&self.regions));
            return self.pass_through(factory(&mut entry).await);
        }
        let bypass = self.read_bypass();
        match self
            .lead_or_answer_async::<S, E>(key, bypass, &mut false)
            .await
        {
            Turn::Lead(leader) => self.lead_async::<S, E, F>(leader, factory).await,
            Turn::Answer(answer) => answer,
        }
    }

    /// Runs a load's async factory in place, in the leading caller's task, under the hard
    /// timeout (which cancels it: the factory may borrow from its caller).
    pub(crate) async fn lead_async<S, E, F>(
        &self,
        leader: Leader<'_>,
        factory: F,
    ) -> Result<S, LoadError<E>>
    where
        S: Shape,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        let mut entry = leader.entry();
        let result = {
            let run = CatchUnwind(std::pin::pin!(factory(&mut entry)));
            #[cfg(feature = "tokio")]
            let result = match self.hard_timeout {
                None => run.await,
                Some(limit) => {
                    self.cancels_in_place();
                    match tokio::time::timeout(limit, run).await {
                        Ok(result) => result,
                        Err(_elapsed) => {
                            leader.count_hard_timeout();
                            Err(Failed::TimedOut(limit))
                        }
                    }
                }
            };
            #[cfg(not(feature = "tokio"))]
            let result = run.await;
            result
        };
        leader.finish::<S, E>(entry, result)
    }

    /// Runs a load's blocking factory in place, on the leading caller's thread (untimed:
    /// nothing can stop a blocking function from outside).
    pub(crate) fn lead_sync<S, E, F>(
        &self,
        leader: Leader<'_>,
        factory: F,
    ) -> Result<S, LoadError<E>>
    where
        S: Shape,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E>,
    {
        let mut entry = leader.entry();
        let result = run_blocking(factory, &mut entry);
        leader.finish::<S, E>(entry, result)
    }

    /// A blocking caller's wait for another caller's load, up to its timeouts; `None`:
    /// go again (see [`resolve`]).
    pub(crate) fn wait_sync<S: Shape, E: Send + Sync + 'static>(
        &self,
        flight: &Flight,
        joined_at: u64,
        key: &Key,
        bypass: bool,
    ) -> Option<Result<S, LoadError<E>>> {
        match self.wait_sync_waited::<S, E>(flight, key, bypass) {
            Waited::Answered(answer) => Some(answer),
            Waited::Outcome(outcome) => self.resolve_marked(outcome, flight, joined_at, key),
        }
    }

    /// [`wait_sync`](Self::wait_sync), up to the flight's outcome or the caller's own
    /// answer (a timeout's, or `WouldDeadlock`).
    pub(crate) fn wait_sync_waited<'f, S: Shape, E: Send + Sync + 'static>(
        &self,
        flight: &'f Flight,
        key: &Key,
        bypass: bool,
    ) -> Waited<'f, S, E> {
        let waited = crate::blocking::wait_blocking(|handed_off| {
            if !handed_off && flight.led_async_on_this_thread() {
                return None;
            }
            Some(self.wait_blocking_timed::<S, E>(flight, key, bypass))
        });
        waited.unwrap_or_else(|| {
            Waited::Answered(Err(LoadError::WouldDeadlock(WouldDeadlock::new(key))))
        })
    }

    /// [`resolve`], marking a value that fail-safe stood in with (see `Source`).
    pub(crate) fn resolve_marked<S: Shape, E: Send + Sync + 'static>(
        &self,
        outcome: &Outcome,
        flight: &Flight,
        joined_at: u64,
        key: &Key,
    ) -> Option<Result<S, LoadError<E>>> {
        let resolved = resolve::<S, E>(outcome, flight, joined_at, key, self.log_keys)?;
        match outcome {
            Outcome::Value {
                fail_safe: true, ..
            } => Some(resolved.map(|value| self.served_expired(value, Source::FailSafe))),
            _ => Some(resolved),
        }
    }

    /// `value`, an expired one served from `source`: marked, and reported to the store's
    /// listener for it, if any.
    pub(crate) fn served_expired<S: Shape>(&self, value: S, source: Source) -> S {
        self.announce_expired(source);
        value.served_as(source)
    }

    /// Tells the store's listener, if any, that an expired value was served from `source`.
    pub(crate) fn announce_expired(&self, source: Source) {
        if let Some(listener) = self.expired_listener.get() {
            listener(source);
        }
    }

    /// An async caller's wait for another caller's load (or a detached runner's), up to its
    /// timeouts; `None`: go again (see [`resolve`]).
    pub(crate) async fn wait_async<S: Shape, E: Send + Sync + 'static>(
        &self,
        flight: &Flight,
        joined_at: u64,
        key: &Key,
        bypass: bool,
    ) -> Option<Result<S, LoadError<E>>> {
        match self.wait_timed::<S, E>(flight, key, bypass).await {
            Waited::Answered(answer) => Some(answer),
            Waited::Outcome(outcome) => self.resolve_marked(outcome, flight, joined_at, key),
        }
    }

    /// Logs, once per store, that a load led in place is cancelled at the hard timeout
    /// although `OnHardTimeout::Background` is set: its factory may borrow from its caller,
    /// so nothing can run it once that caller has its answer.
    #[cfg(feature = "tokio")]
    fn cancels_in_place(&self) {
        if self.hard_timeout_action == crate::options::OnHardTimeout::Background
            && !self
                .background_refused_logged
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "hard_timeout_action is background, but a get_or_create that is not detached \
                 runs its factory in place: it is cancelled at the hard timeout; use the \
                 get_or_create_detached loaders for loads that must finish in the background"
            );
        }
    }

    fn pass_through<S: Shape, E>(&self, result: Result<S::Loaded, E>) -> Result<S, LoadError<E>> {
        match result {
            Ok(loaded) => Ok(S::from_loaded(loaded).0),
            Err(error) => {
                self.stats.incr(Counter::LoadErrors);
                Err(LoadError::Factory(Arc::new(error)))
            }
        }
    }

    /// Ends a flight with a value: decides under the key's flight-shard lock whether an
    /// invalidation overlapped it, stores it (when `store`) if none did, and takes the
    /// flight out of the table. Returns whether the value is fresh (no invalidation
    /// overlapped the load): only then may callers that joined after an expiry take it.
    ///
    /// The freshness check must sit under the lock: a caller that joins after an expiry
    /// finished does so under this lock, so the check here sees that expiry.
    ///
    /// The removals it caused are reported by the caller once the flight has finished.
    fn complete(
        &self,
        leader: &Leader<'_>,
        payload: &Payload,
        entry: EntryOptions,
        store: bool,
    ) -> (bool, Removals) {
        let flight = &leader.flight;
        let (start_epoch, start_global) = (flight.start_epoch(), flight.start_global_epoch());
        let start_clears = flight.start_clears();
        let mut shard = self.flights.lock(&leader.key);
        let mut removals = Removals::default();
        // Whole counts, never the entry's 32 bits: a load that spans a wrap fence is refused
        // here (see `clears`).
        let fresh = !(entry.overlapped_expiry(start_epoch)
            || flight.is_invalidated()
            || start_global > start_epoch
            || self.regions.global_epoch() != start_global
            || self.regions.clears() != start_clears);
        if !store || self.read_bypass() {
            // Not to be stored, or bypass began during the load: store nothing until it ends.
        } else if !fresh {
            self.stats.incr(Counter::InsertsRejectedStale);
            tracing::debug!(key = %self.shown(&leader.key), "invalidated while loading: returned, not stored");
        } else {
            let stored =
                entry.into_stored(payload.clone(), start_clears, &self.clock, &self.defaults);
            removals = self.insert_locked(&leader.key, stored).1;
        }
        shard.remove(&leader.key, flight);
        (fresh, removals)
    }

    /// Ends a flight whose factory failed: takes it out of the table and, under the same
    /// lock, finds the value fail-safe serves instead: the key's entry kept past its time
    /// expiry (never one an invalidation touched), if the caller can use it. That entry is
    /// re-armed alive for the throttle. Nothing stands in while reads bypass the store (it
    /// may have missed invalidations).
    /// Ends a flight that stores nothing (a batch's failed keys): takes it out of the table.
    fn complete_without_value(&self, leader: &Leader<'_>) {
        self.flights
            .lock(&leader.key)
            .remove(&leader.key, &leader.flight);
    }

    fn complete_failed<S: Shape>(&self, leader: &Leader<'_>) -> Option<(S, Payload)> {
        let key = &leader.key;
        let mut shard = self.flights.lock(key);
        shard.remove(key, &leader.flight);
        if leader.bypass || self.read_bypass() {
            return None;
        }
        let (now, clears) = (self.clock.now(), self.regions.clears());
        let (payload, re_armed) = self.cache.read(key, |held| {
            (held.standing_at(now, clears) == Standing::Kept).then(|| {
                (
                    held.payload().clone(),
                    held.re_armed(&self.clock, now, self.fail_safe_throttle),
                )
            })
        })??;
        let served = match S::from_stored(&payload, key)? {
            Ok(served) => served,
            Err(_) => return None,
        };
        let removals = match re_armed {
            Some(re_armed) => self.insert_locked(key, Some(re_armed)).1,
            None => Removals::default(),
        };
        drop(shard);
        self.report(removals);
        if leader.flight.first_fail_safe() {
            self.stats.incr(Counter::FailSafeActivations);
        }
        Some((served, payload))
    }
}

impl Leader<'_> {
    /// A fresh entry for this flight's factory (never shared with any other load).
    pub(crate) fn entry(&self) -> EntryOptions {
        EntryOptions::new(self.key.clone(), Arc::clone(&self.inner.regions))
    }

    /// Ends the load with `result` (see `complete` and `complete_failed`), for a leader
    /// that hands the answer to its caller: a fail-safe value is announced to the
    /// store's listener (`served_expired`).
    pub(crate) fn finish<S: Shape, E: Send + Sync + 'static>(
        self,
        entry: EntryOptions,
        result: Result<S::Loaded, Failed<E>>,
    ) -> Result<S, LoadError<E>> {
        let inner = self.inner;
        match self.finish_unannounced::<S, E>(entry, result) {
            (Ok(served), true) => Ok(inner.served_expired(served, Source::FailSafe)),
            (answer, _) => answer,
        }
    }

    /// [`finish`](Self::finish), announcing nothing: also returns whether fail-safe stood
    /// in (its value is returned unmarked), for a runner whose caller may take the
    /// flight's outcome, and announce it, itself.
    pub(crate) fn finish_unannounced<S: Shape, E: Send + Sync + 'static>(
        mut self,
        entry: EntryOptions,
        result: Result<S::Loaded, Failed<E>>,
    ) -> (Result<S, LoadError<E>>, bool) {
        let inner = self.inner;
        // `finished` is set only once the outcome is out: if anything here unwinds (a value's
        // `Drop` run by the insert, say), the drop guard still abandons the flight.
        match result {
            Ok(loaded) => {
                let (value, payload) = S::from_loaded(loaded);
                let store = !self.bypass && (inner.cache_none || !payload.is_nothing());
                let (fresh, removals) = inner.complete(&self, &payload, entry, store);
                self.flight.finish(Outcome::Value {
                    payload,
                    fresh,
                    fail_safe: false,
                });
                self.finished = true;
                inner.report(removals);
                (Ok(value), false)
            }
            Err(failed) => {
                if matches!(failed, Failed::Error(_)) {
                    inner.stats.incr(Counter::LoadErrors);
                }
                if let Some((served, payload)) = inner.complete_failed::<S>(&self) {
                    tracing::warn!(
                        key = %inner.shown(&self.key),
                        cause = failed.cause(),
                        "the factory failed: serving the expired value (fail-safe)"
                    );
                    self.flight.finish(Outcome::Value {
                        payload,
                        fresh: true,
                        fail_safe: true,
                    });
                    self.finished = true;
                    return (Ok(served), true);
                }
                match failed {
                    Failed::Error(error) => {
                        let error = Arc::new(error);
                        self.flight.finish(Outcome::Error {
                            error: Arc::clone(&error) as _,
                            type_name: type_name::<E>(),
                        });
                        self.finished = true;
                        (Err(LoadError::Factory(error)), false)
                    }
                    Failed::TimedOut(after) => {
                        self.flight.finish(Outcome::TimedOut(after));
                        self.finished = true;
                        let timeout = FactoryTimeout::new(&self.key, after);
                        (Err(LoadError::Timeout(timeout)), false)
                    }
                    // Unfinished: the drop guard abandons the flight as the panic unwinds.
                    Failed::Panic(panic) => resume_unwind(panic),
                }
            }
        }
    }

    /// Ends the flight with `error` (counted by the caller: a batch's one error fails
    /// several flights) and shares it with every waiter.
    pub(crate) fn fail<E: Send + Sync + 'static>(mut self, error: Arc<E>) -> LoadError<E> {
        self.inner.complete_without_value(&self);
        self.flight.finish(Outcome::Error {
            error: Arc::clone(&error) as _,
            type_name: type_name::<E>(),
        });
        self.finished = true;
        LoadError::Factory(error)
    }

    /// The key this flight loads.
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    /// Counts this load's hard timeout, unless a waiter already did.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn count_hard_timeout(&self) {
        if self.flight.first_hard_timeout() {
            self.inner.stats.incr(Counter::HardTimeouts);
        }
    }
}

/// A hit on `entry`, read as `S`; an expired value fail-safe re-armed is marked as such.
#[inline]
fn hit_of<S: Shape>(entry: &StoredEntry, key: &Key) -> Option<Result<S, TypeMismatch>> {
    Some(marked(
        S::from_stored(entry.payload(), key)?,
        entry.is_re_armed(),
    ))
}

/// `hit`, marked `Source::FailSafe` if it is a re-armed fail-safe value (only the
/// `Loaded` shape records it; the listener is not told: nothing failed on this call).
#[inline(always)]
fn marked<S: Shape, X>(hit: Result<S, X>, re_armed: bool) -> Result<S, X> {
    if re_armed {
        hit.map(|value| value.served_as(Source::FailSafe))
    } else {
        hit
    }
}

/// A leader handed to a runner on another thread (a detached load): it owns its store.
/// Dropped before it ran (the runtime shut down before the runner started), it abandons the
/// flight as a dropped [`Leader`] does.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct DetachedLeader {
    inner: Arc<StoreInner>,
    key: Key,
    flight: Arc<Flight>,
    bypass: bool,
    ran: bool,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl Leader<'_> {
    /// This leader, for a runner elsewhere; `inner` is the store it borrows from.
    pub(crate) fn detach(mut self, inner: Arc<StoreInner>) -> DetachedLeader {
        // The detached leader's guard stands in for this one's.
        self.finished = true;
        DetachedLeader {
            inner,
            key: self.key.clone(),
            flight: Arc::clone(&self.flight),
            bypass: self.bypass,
            ran: false,
        }
    }

    /// This load's flight.
    pub(crate) fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl DetachedLeader {
    /// Runs `lead` with the leader, on this thread.
    pub(crate) fn run<R>(mut self, lead: impl FnOnce(Leader<'_>) -> R) -> R {
        self.ran = true;
        lead(self.leader())
    }

    fn leader(&self) -> Leader<'_> {
        Leader {
            inner: &self.inner,
            key: self.key.clone(),
            flight: Arc::clone(&self.flight),
            bypass: self.bypass,
            finished: false,
        }
    }

    /// The store it leads a load of.
    pub(crate) fn inner_arc(&self) -> &Arc<StoreInner> {
        &self.inner
    }
}

impl Drop for DetachedLeader {
    fn drop(&mut self) {
        if !self.ran {
            drop(self.leader()); // its drop guard abandons the flight
        }
    }
}

/// Runs a blocking factory, its panic caught as [`Failed::Panic`].
pub(crate) fn run_blocking<T, E, F>(factory: F, entry: &mut EntryOptions) -> Result<T, Failed<E>>
where
    F: FnOnce(&mut EntryOptions) -> Result<T, E>,
{
    match catch_unwind(AssertUnwindSafe(|| factory(entry))) {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(error)) => Err(Failed::Error(error)),
        Err(panic) => Err(Failed::Panic(panic)),
    }
}

/// A factory's future whose panic ends it as [`Failed::Panic`] instead of unwinding.
pub(crate) struct CatchUnwind<'a, F>(pub(crate) Pin<&'a mut F>);

impl<F, T, E> Future for CatchUnwind<'_, F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Failed<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let run = &mut self.get_mut().0;
        match catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(loaded))) => Poll::Ready(Ok(loaded)),
            Ok(Poll::Ready(Err(error))) => Poll::Ready(Err(Failed::Error(error))),
            Err(panic) => Poll::Ready(Err(Failed::Panic(panic))),
        }
    }
}

impl<E> Failed<E> {
    /// What failed, for log events.
    fn cause(&self) -> &'static str {
        match self {
            Failed::Error(_) => "error",
            Failed::Panic(_) => "panic",
            Failed::TimedOut(_) => "hard_timeout",
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.inner.stats.incr(Counter::LoadAbandons);
        self.inner
            .flights
            .lock(&self.key)
            .remove(&self.key, &self.flight);
        self.flight.finish(Outcome::Abandoned);
        if std::thread::panicking() {
            tracing::warn!(key = %self.inner.shown(&self.key), "the factory panicked; a waiter takes the load over");
        } else {
            tracing::debug!(key = %self.inner.shown(&self.key), "the loading caller was dropped; a waiter takes the load over");
        }
    }
}

/// A waiter's result from its flight's outcome; `None` means go again: the flight was
/// abandoned, a plain caller met a `None`, the value predates an expiry that had finished
/// before this caller joined (`joined_at` is past the flight's start and the leader found
/// the value stale), or the leader's factory failed with an error of another type than this
/// caller's (an infallible loader joining a fallible one, say): that error cannot be handed
/// over, and nothing is stored under the key, so there is no type mismatch to report — the
/// caller loads for itself.
pub(crate) fn resolve<S: Shape, E: Send + Sync + 'static>(
    outcome: &Outcome,
    flight: &Flight,
    joined_at: u64,
    key: &Key,
    log_keys: bool,
) -> Option<Result<S, LoadError<E>>> {
    match outcome {
        Outcome::Value { payload, fresh, .. } => {
            if !fresh && joined_at != flight.start_epoch() {
                tracing::debug!(key = %Shown::new(key, log_keys), "joined a load after an expiry that made it stale: loading again");
                return None;
            }
            S::from_payload(payload.clone(), key)
                .map(|result| result.map_err(LoadError::TypeMismatch))
        }
        Outcome::Error { error, type_name } => match Arc::clone(error).downcast::<E>() {
            Ok(error) => Some(Err(LoadError::Factory(error))),
            Err(_) => {
                tracing::debug!(key = %Shown::new(key, log_keys), leader_error = type_name, "the load this caller joined failed with another error type: loading again");
                None
            }
        },
        Outcome::TimedOut(after) => Some(Err(LoadError::Timeout(FactoryTimeout::new(key, *after)))),
        Outcome::Abandoned => None,
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use crate::{LoadError, Store, StoreOptions, StoreStats};

    fn counts(stats: StoreStats) -> (u64, u64, u64) {
        (stats.hits, stats.misses, stats.loads)
    }

    /// The hit fast path (`try_hit`) and the load path count each call exactly once, in
    /// every flavour: a hit, a miss, a cached `None` read by a plain caller, a bypass, and a
    /// hit of the wrong type.
    #[tokio::test]
    async fn every_loader_counts_each_call_once() {
        let store = Store::new(StoreOptions::default()).unwrap();
        let k = nearcache_keys::Key::from_text("k");
        let none = nearcache_keys::Key::from_text("none");

        // A miss, then hits, through each loader.
        store
            .get_or_create(&k, async |_| Ok::<_, Infallible>(1_u8))
            .await
            .unwrap();
        assert_eq!(counts(store.stats()), (0, 1, 1));
        store
            .get_or_create_sync(&k, |_| Ok::<_, Infallible>(2_u8))
            .unwrap();
        store
            .get_or_create(&k, async |_| Ok::<_, Infallible>(2_u8))
            .await
            .unwrap();
        let hit = store
            .get_or_create_optional(&k, async |_| Ok::<_, Infallible>(Some(2_u8)))
            .await
            .unwrap();
        assert_eq!(hit.as_deref(), Some(&1));
        store
            .get_or_create_optional_sync(&k, |_| Ok::<_, Infallible>(Some(2_u8)))
            .unwrap();
        assert_eq!(counts(store.stats()), (4, 1, 1), "four hits, no load");

        // A cached `None` is a hit for an optional caller and a miss for a plain one.
        store
            .get_or_create_optional_sync(&none, |_| Ok::<Option<u8>, Infallible>(None))
            .unwrap();
        assert_eq!(counts(store.stats()), (4, 2, 2));
        assert!(
            store
                .get_or_create_optional(&none, async |_| Ok::<_, Infallible>(Some(3_u8)))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(counts(store.stats()), (5, 2, 2));
        let loaded = store
            .get_or_create(&none, async |_| Ok::<_, Infallible>(3_u8))
            .await
            .unwrap();
        assert_eq!(*loaded, 3);
        assert_eq!(counts(store.stats()), (5, 3, 3), "one miss, one load");

        // A hit of the wrong type is one hit and an error, not a load.
        let mismatch = store
            .get_or_create(&k, async |_| Ok::<_, Infallible>(1_u64))
            .await;
        assert!(matches!(mismatch, Err(LoadError::TypeMismatch(_))));
        assert_eq!(counts(store.stats()), (6, 3, 3));

        // Bypassed reads skip the fast path: one miss and one load per call.
        store.set_read_bypass(true);
        store
            .get_or_create(&k, async |_| Ok::<_, Infallible>(9_u8))
            .await
            .unwrap();
        store
            .get_or_create_sync(&k, |_| Ok::<_, Infallible>(9_u8))
            .unwrap();
        assert_eq!(counts(store.stats()), (6, 5, 5));
    }
}
