//! Single flight: the table of loads in progress, one [`Flight`] per key.
//!
//! quick_cache has placeholders, but when a loader fails its guard passes to *one* waiter,
//! which then runs its own loader: a failing backend is called once per waiter, in a line.
//! Guarantee 2 wants the error shared with the whole flight, so the store keeps its own table.
//!
//! - The table is sharded (`N` mutex-protected maps, `N` a power of two ≥ 4 × cores) by the
//!   key's hash. The hit path never touches it: only misses, `remove` and `set` lock a shard.
//! - A caller that misses locks the key's shard, re-checks the store (a flight may have just
//!   finished), then joins the key's flight or creates one and leads it.
//! - Waiters wait on the flight's [`Event`]: `.await` for async callers and a blocking
//!   `.wait()` for threads — one mechanism, so async and blocking callers share flights.
//! - The leader publishes its outcome (a value or its error, shared as an `Arc`) once; if it
//!   panics or is dropped, the outcome is [`Outcome::Abandoned`] and each waiter goes back
//!   through the table, where one of them becomes the next leader and the rest join it.
//!
//! # Late callers never get a value from before an invalidation
//!
//! A flight's value was read from the source at some point after the flight began. A caller
//! that arrives after an invalidation of that key *finished* must not be handed it: the
//! invalidation may have been for exactly the write that value predates. Which
//! invalidations matter is decided as finely as the information at hand allows:
//!
//! - **`remove`/`set` of the key** mark the flight (under this table's shard lock). A caller
//!   that finds a marked flight does not join it: it replaces it in the table with a fresh
//!   one, which it leads and later callers join (single flight among the late callers). The
//!   old flight finishes for the callers it already had, and stores nothing.
//! - **`clear`** moves the global epoch (and the clear count). A flight remembers the global
//!   epoch it began under; a caller that sees another one replaces the flight, as above.
//! - **Region and sub-key expiries** move the registry's epoch, but whether one concerns a
//!   flight is known only at its end: its factory ties the entry to regions as it runs. So a
//!   caller joins the flight and remembers the epoch it joined at. If that is the flight's
//!   start epoch, no expiry of any kind came between, and the value is as fresh as the
//!   caller. Otherwise the caller takes the value only if the leader, checking under the
//!   shard lock as it finishes, found no expiry of a region the value is tied to (the same
//!   check that decides whether the value is stored); if it found one, the caller goes
//!   through the table again and loads anew (one load among all such callers). An expiry of
//!   an unrelated region therefore never restarts a flight.
//!
//! A caller that overlaps the invalidation (it began before the invalidation returned) may
//! get the flight's value either way; only callers that begin afterwards are promised a
//! load that began after it.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use nearcache_keys::Key;
use nearcache_regions::Regions;

use crate::hash::KeyHashBuilder;
use crate::shim::{
    AtomicBool, AtomicUsize, Event, Listener, Mutex, MutexGuard, OnceLock, Ordering, ThreadToken,
    current_thread,
};
use crate::value::Payload;

/// How a flight ended.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The factory's value (or its `None`). `fresh`: the leader found, as it finished, that
    /// no invalidation had overlapped the load (see the module docs). `fail_safe`: the
    /// factory failed and this is the key's expired value standing in.
    Value {
        payload: Payload,
        fresh: bool,
        fail_safe: bool,
    },
    /// The factory's error, `Arc<E>` erased; `type_name` is `E`'s.
    Error {
        error: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
    /// The factory ran past the hard timeout (this long) and was cancelled, and no
    /// fail-safe value stood in.
    TimedOut(std::time::Duration),
    /// The leader panicked or was dropped before finishing; waiters go again.
    Abandoned,
}

/// One load in progress for one key.
pub(crate) struct Flight {
    outcome: OnceLock<Outcome>,
    done: Event,
    /// Set (under the table shard's lock) by `remove`/`set` of the key while it loads.
    invalidated: AtomicBool,
    /// Callers that joined this flight (for tests and diagnostics).
    waiters: AtomicUsize,
    /// Whether this load's hard timeout was counted (once per load, by whoever saw it
    /// first: its runner or a caller that stopped waiting).
    hard_timeout_counted: AtomicBool,
    /// Whether fail-safe serving this load's callers was counted (once per load).
    fail_safe_counted: AtomicBool,
    /// The registry's epoch when the flight began (read under the shard lock, before the
    /// factory runs).
    start_epoch: u64,
    /// The global epoch when the flight began, read after `start_epoch`.
    start_global_epoch: u64,
    /// The registry's clear count when the flight began, read after `start_global_epoch`:
    /// what the entry records, and what its completion check compares (see `clears`).
    start_clears: u64,
    /// The thread an async leader runs on (or, for an async factory driven elsewhere, the
    /// thread that started it), `None` for a blocking leader: a blocking caller on that
    /// same thread could never see the flight finish.
    async_leader_thread: Option<ThreadToken>,
}

/// Who is about to lead a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaderKind {
    /// A blocking caller: it runs the factory on its own thread.
    Blocking,
    /// An async caller: its factory runs wherever its task is polled.
    Async,
    /// An async factory driven on the blocking pool (`Handle::block_on`) for a caller on
    /// this thread (an eager refresh). On a current-thread runtime such a factory's timers
    /// and I/O are driven only by the runtime's own thread, which that caller's is: a
    /// blocking caller there must not wait for it either.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    AsyncFrom(ThreadToken),
}

impl Flight {
    fn new(regions: &Regions, leader: LeaderKind) -> Self {
        let start_epoch = regions.epoch();
        Flight {
            outcome: OnceLock::new(),
            done: Event::new(),
            invalidated: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            hard_timeout_counted: AtomicBool::new(false),
            fail_safe_counted: AtomicBool::new(false),
            start_epoch,
            start_global_epoch: regions.global_epoch(),
            start_clears: regions.clears(),
            async_leader_thread: match leader {
                LeaderKind::Blocking => None,
                LeaderKind::Async => Some(current_thread()),
                LeaderKind::AsyncFrom(thread) => Some(thread),
            },
        }
    }

    /// The registry's epoch when the flight began.
    pub(crate) fn start_epoch(&self) -> u64 {
        self.start_epoch
    }

    /// The global epoch when the flight began.
    pub(crate) fn start_global_epoch(&self) -> u64 {
        self.start_global_epoch
    }

    /// The clear count when the flight began.
    pub(crate) fn start_clears(&self) -> u64 {
        self.start_clears
    }

    /// Whether a blocking caller on this thread would wait for an async leader that only
    /// this thread can run (a current-thread runtime): it would wait forever.
    pub(crate) fn led_async_on_this_thread(&self) -> bool {
        self.async_leader_thread == Some(current_thread())
    }

    /// Whether a caller that arrives now must not join: an invalidation of this key (a
    /// `remove`, a `set`) or a `clear` has finished since the flight began.
    fn is_too_old_to_join(&self, regions: &Regions) -> bool {
        self.is_invalidated() || regions.global_epoch() != self.start_global_epoch
    }

    /// Marks the flight's result as stale: it will be returned but not stored.
    pub(crate) fn invalidate(&self) {
        self.invalidated.store(true, Ordering::Release);
    }

    pub(crate) fn is_invalidated(&self) -> bool {
        self.invalidated.load(Ordering::Acquire)
    }

    /// Whether this is the first time this load's hard timeout is seen (it is counted then).
    pub(crate) fn first_hard_timeout(&self) -> bool {
        !self.hard_timeout_counted.swap(true, Ordering::AcqRel)
    }

    /// Whether this is the first time fail-safe serves this load's callers (counted then).
    pub(crate) fn first_fail_safe(&self) -> bool {
        !self.fail_safe_counted.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Acquire)
    }

    /// Publishes the outcome and wakes every waiter. Only the first call has an effect.
    pub(crate) fn finish(&self, outcome: Outcome) {
        let _already_finished = self.outcome.set(outcome);
        self.done.notify(usize::MAX);
    }

    /// Whether the outcome is out and fail-safe's value stood in for the factory's.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn ended_fail_safe(&self) -> bool {
        matches!(
            self.outcome.get(),
            Some(Outcome::Value {
                fail_safe: true,
                ..
            })
        )
    }

    /// The outcome if it is out; else a listener for it, registered before the outcome is
    /// checked again, so that a `finish` in between is not missed.
    fn outcome_or_listener(&self) -> Result<&Outcome, impl Listener + '_> {
        if let Some(outcome) = self.outcome.get() {
            return Ok(outcome);
        }
        let listener = self.done.listen();
        match self.outcome.get() {
            Some(outcome) => Ok(outcome),
            None => Err(listener),
        }
    }

    /// Waits for the outcome, blocking the thread.
    pub(crate) fn wait_blocking(&self) -> &Outcome {
        loop {
            match self.outcome_or_listener() {
                Ok(outcome) => return outcome,
                Err(listener) => listener.wait(),
            }
        }
    }

    /// [`wait_blocking`](Self::wait_blocking) until `deadline`: `None` if it passed first.
    pub(crate) fn wait_blocking_until(&self, deadline: std::time::Instant) -> Option<&Outcome> {
        loop {
            match self.outcome_or_listener() {
                Ok(outcome) => return Some(outcome),
                Err(listener) => {
                    if listener.wait_deadline(deadline).is_none() {
                        return self.outcome.get();
                    }
                }
            }
        }
    }

    /// Waits for the outcome.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops this caller's wait.
    pub(crate) async fn wait(&self) -> &Outcome {
        loop {
            match self.outcome_or_listener() {
                Ok(outcome) => return outcome,
                Err(listener) => listener.await,
            }
        }
    }
}

impl fmt::Debug for Flight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flight")
            .field("finished", &self.outcome.get().is_some())
            .field("invalidated", &self.is_invalidated())
            .field("waiters", &self.waiters())
            .finish()
    }
}

type Shard = HashMap<Key, Arc<Flight>, KeyHashBuilder>;

#[repr(align(128))]
struct PaddedShard(Mutex<Shard>);

/// The flights of one store, sharded by key hash.
pub(crate) struct FlightTable {
    shards: Box<[PaddedShard]>,
    mask: u64,
}

/// A locked shard of the table; the store checks and writes quick_cache under it, so a
/// flight's check-then-insert and a `remove`/`set` of its key never interleave.
pub(crate) struct FlightShard<'a>(MutexGuard<'a, Shard>);

/// What a caller found in the table.
pub(crate) enum Joined {
    /// A flight was in progress: wait for it. `joined_at` is the registry's epoch when this
    /// caller joined: the value is this caller's only if it is `fresh` or no expiry came
    /// between the flight's start and `joined_at`.
    Waiter { flight: Arc<Flight>, joined_at: u64 },
    /// None was (or only one too old to join): this caller created it and must lead it.
    Leader(Arc<Flight>),
}

impl FlightTable {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let count = (cores * 4).max(4).next_power_of_two();
        FlightTable {
            shards: (0..count)
                .map(|_| PaddedShard(Mutex::new(HashMap::with_hasher(KeyHashBuilder))))
                .collect(),
            mask: count as u64 - 1,
        }
    }

    /// Locks the shard that holds `key`'s flight.
    pub(crate) fn lock(&self, key: &Key) -> FlightShard<'_> {
        // quick_cache picks its shard from the middle bits; use the top ones here.
        let index = (KeyHashBuilder.hash_one(key).rotate_left(20) & self.mask) as usize;
        FlightShard(self.shards[index].0.lock())
    }

    /// Locks and releases every shard in turn: each check-then-insert that held a shard when
    /// this began has finished when it returns (what the wrap fence waits for: see `clears`).
    pub(crate) fn wait_for_every_shard(&self) {
        for shard in &self.shards {
            drop(shard.0.lock());
        }
    }

    #[cfg(all(test, not(shuttle)))]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

impl FlightShard<'_> {
    /// The key's flight in progress, if any.
    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Flight>> {
        self.0.get(key)
    }

    /// Joins the key's flight, or starts one that the caller leads. A flight that an
    /// invalidation of the key or a `clear` has overtaken is not joined but replaced: it
    /// finishes for the callers it has, and later ones share the new flight.
    pub(crate) fn join_or_lead(
        &mut self,
        key: &Key,
        regions: &Regions,
        kind: LeaderKind,
    ) -> Joined {
        if let Some(flight) = self.0.get(key)
            && !flight.is_too_old_to_join(regions)
        {
            flight.waiters.fetch_add(1, Ordering::AcqRel);
            return Joined::Waiter {
                flight: Arc::clone(flight),
                joined_at: regions.epoch(),
            };
        }
        let flight = Arc::new(Flight::new(regions, kind));
        // Replaces an overtaken flight, if any; its leader's `remove` leaves this one alone.
        self.0.insert(key.clone(), Arc::clone(&flight));
        Joined::Leader(flight)
    }

    /// Starts a flight for `key` that the caller leads, unless one that a new caller could
    /// join is in progress (then `None`: a background refresh has nothing to add to it).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn lead_unless_running(
        &mut self,
        key: &Key,
        regions: &Regions,
        kind: LeaderKind,
    ) -> Option<Arc<Flight>> {
        if self
            .0
            .get(key)
            .is_some_and(|flight| !flight.is_too_old_to_join(regions))
        {
            return None;
        }
        let flight = Arc::new(Flight::new(regions, kind));
        self.0.insert(key.clone(), Arc::clone(&flight));
        Some(flight)
    }

    /// Removes `flight` from the table if it is still the key's flight.
    pub(crate) fn remove(&mut self, key: &Key, flight: &Arc<Flight>) {
        if self.0.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            self.0.remove(key);
        }
    }
}

impl fmt::Debug for FlightTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlightTable")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn lead(table: &FlightTable, regions: &Regions, key: &Key) -> Arc<Flight> {
        match table
            .lock(key)
            .join_or_lead(key, regions, LeaderKind::Blocking)
        {
            Joined::Leader(flight) => flight,
            Joined::Waiter { .. } => panic!("this caller must lead"),
        }
    }

    fn join(table: &FlightTable, regions: &Regions, key: &Key) -> (Arc<Flight>, u64) {
        match table
            .lock(key)
            .join_or_lead(key, regions, LeaderKind::Blocking)
        {
            Joined::Waiter { flight, joined_at } => (flight, joined_at),
            Joined::Leader(_) => panic!("this caller must join"),
        }
    }

    #[test]
    fn first_caller_leads_and_later_ones_wait() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        assert!(table.shard_count().is_power_of_two() && table.shard_count() >= 4);
        let key = Key::from_text("k");
        let leader = lead(&table, &regions, &key);
        let (waiter, joined_at) = join(&table, &regions, &key);
        assert!(Arc::ptr_eq(&leader, &waiter));
        assert_eq!(joined_at, leader.start_epoch());
        assert_eq!(leader.waiters(), 1);
        table.lock(&key).remove(&key, &leader);
        assert!(table.lock(&key).get(&key).is_none());
        lead(&table, &regions, &key);
    }

    #[test]
    fn removing_a_finished_flight_leaves_its_successor() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        let key = Key::from_text("k");
        let old = lead(&table, &regions, &key);
        table.lock(&key).remove(&key, &old);
        let new = lead(&table, &regions, &key);
        table.lock(&key).remove(&key, &old);
        assert!(
            table
                .lock(&key)
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &new))
        );
    }

    #[test]
    fn an_invalidated_flight_is_replaced_not_joined() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        let key = Key::from_text("k");
        let old = lead(&table, &regions, &key);
        table.lock(&key).get(&key).unwrap().invalidate();
        let new = lead(&table, &regions, &key);
        assert!(!Arc::ptr_eq(&old, &new));
        let (joined, _) = join(&table, &regions, &key);
        assert!(
            Arc::ptr_eq(&joined, &new),
            "later callers share the new flight"
        );
        table.lock(&key).remove(&key, &old);
        assert!(
            table
                .lock(&key)
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &new)),
            "the overtaken flight's end leaves its successor in place"
        );
    }

    #[test]
    fn a_clear_makes_later_callers_start_a_new_flight() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        let key = Key::from_text("k");
        let old = lead(&table, &regions, &key);
        regions.expire_global();
        let new = lead(&table, &regions, &key);
        assert!(!Arc::ptr_eq(&old, &new));
    }

    #[test]
    fn a_region_expiry_is_joined_with_the_epoch_it_came_after() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        let key = Key::from_text("k");
        let leader = lead(&table, &regions, &key);
        regions.expire_region("unrelated").unwrap();
        let (waiter, joined_at) = join(&table, &regions, &key);
        assert!(
            Arc::ptr_eq(&leader, &waiter),
            "a region expiry does not restart a flight"
        );
        assert!(joined_at > leader.start_epoch());
    }

    #[test]
    fn an_async_leader_is_known_by_its_thread() {
        let (table, regions) = (FlightTable::new(), Regions::new());
        let key = Key::from_text("k");
        let Joined::Leader(flight) =
            table
                .lock(&key)
                .join_or_lead(&key, &regions, LeaderKind::Async)
        else {
            panic!("leads")
        };
        assert!(flight.led_async_on_this_thread());
        let elsewhere =
            std::thread::scope(|s| s.spawn(|| flight.led_async_on_this_thread()).join());
        assert!(!elsewhere.unwrap());
        assert!(!lead(&table, &regions, &Key::from_text("j")).led_async_on_this_thread());
    }

    #[test]
    fn every_blocked_waiter_sees_the_outcome() {
        let regions = Regions::new();
        for _ in 0..20 {
            let flight = Flight::new(&regions, LeaderKind::Blocking);
            let barrier = std::sync::Barrier::new(9);
            std::thread::scope(|s| {
                let waiters: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            matches!(flight.wait_blocking(), Outcome::Abandoned)
                        })
                    })
                    .collect();
                barrier.wait();
                flight.finish(Outcome::Abandoned);
                for waiter in waiters {
                    assert!(waiter.join().unwrap());
                }
            });
        }
    }

    #[test]
    fn only_the_first_outcome_counts() {
        let flight = Flight::new(&Regions::new(), LeaderKind::Blocking);
        flight.finish(Outcome::Abandoned);
        flight.finish(Outcome::Value {
            payload: Payload::nothing::<u8>(),
            fresh: true,
            fail_safe: false,
        });
        assert!(matches!(flight.wait_blocking(), Outcome::Abandoned));
    }
}
