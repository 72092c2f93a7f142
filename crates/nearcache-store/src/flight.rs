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

use std::any::Any;
use std::collections::HashMap;
use std::fmt;

use nearcache_keys::Key;

use crate::hash::KeyHashBuilder;
use crate::shim::{
    AtomicBool, AtomicUsize, Event, Listener, Mutex, MutexGuard, OnceLock, Ordering,
};
use crate::value::Payload;
use std::hash::BuildHasher;
use std::sync::Arc;

/// How a flight ended.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The factory's value (or its `None`).
    Value(Payload),
    /// The factory's error, `Arc<E>` erased; `type_name` is `E`'s.
    Error {
        error: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
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
}

impl Flight {
    fn new() -> Self {
        Flight {
            outcome: OnceLock::new(),
            done: Event::new(),
            invalidated: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
        }
    }

    /// Marks the flight's result as stale: it will be returned but not stored.
    pub(crate) fn invalidate(&self) {
        self.invalidated.store(true, Ordering::Release);
    }

    pub(crate) fn is_invalidated(&self) -> bool {
        self.invalidated.load(Ordering::Acquire)
    }

    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Acquire)
    }

    /// Publishes the outcome and wakes every waiter. Only the first call has an effect.
    pub(crate) fn finish(&self, outcome: Outcome) {
        let _already_finished = self.outcome.set(outcome);
        self.done.notify(usize::MAX);
    }

    /// Waits for the outcome, blocking the thread.
    pub(crate) fn wait_blocking(&self) -> &Outcome {
        loop {
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            let listener = self.done.listen();
            // Checked again after registering, so a `finish` in between is not missed.
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            listener.wait();
        }
    }

    /// Waits for the outcome.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops this caller's wait.
    pub(crate) async fn wait(&self) -> &Outcome {
        loop {
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            let listener = self.done.listen();
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            listener.await;
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
    /// A flight was in progress: wait for it.
    Waiter(Arc<Flight>),
    /// None was: this caller created it and must lead it.
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

    #[cfg(test)]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

impl FlightShard<'_> {
    /// The key's flight in progress, if any.
    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Flight>> {
        self.0.get(key)
    }

    /// Joins the key's flight, or starts one that the caller leads.
    pub(crate) fn join_or_lead(&mut self, key: &Key) -> Joined {
        if let Some(flight) = self.0.get(key) {
            flight.waiters.fetch_add(1, Ordering::AcqRel);
            return Joined::Waiter(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::new());
        self.0.insert(key.clone(), Arc::clone(&flight));
        Joined::Leader(flight)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn first_caller_leads_and_later_ones_wait() {
        let table = FlightTable::new();
        assert!(table.shard_count().is_power_of_two() && table.shard_count() >= 4);
        let key = Key::from_text("k");
        let leader = match table.lock(&key).join_or_lead(&key) {
            Joined::Leader(flight) => flight,
            Joined::Waiter(_) => panic!("the first caller must lead"),
        };
        let waiter = match table.lock(&key).join_or_lead(&key) {
            Joined::Waiter(flight) => flight,
            Joined::Leader(_) => panic!("a second caller must join"),
        };
        assert!(Arc::ptr_eq(&leader, &waiter));
        assert_eq!(leader.waiters(), 1);
        table.lock(&key).remove(&key, &leader);
        assert!(table.lock(&key).get(&key).is_none());
        assert!(matches!(
            table.lock(&key).join_or_lead(&key),
            Joined::Leader(_)
        ));
    }

    #[test]
    fn removing_a_finished_flight_leaves_its_successor() {
        let table = FlightTable::new();
        let key = Key::from_text("k");
        let Joined::Leader(old) = table.lock(&key).join_or_lead(&key) else {
            panic!("leads")
        };
        table.lock(&key).remove(&key, &old);
        let Joined::Leader(new) = table.lock(&key).join_or_lead(&key) else {
            panic!("leads")
        };
        table.lock(&key).remove(&key, &old);
        assert!(
            table
                .lock(&key)
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &new))
        );
    }

    #[test]
    fn every_blocked_waiter_sees_the_outcome() {
        for _ in 0..20 {
            let flight = Flight::new();
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
        let flight = Flight::new();
        flight.finish(Outcome::Abandoned);
        flight.finish(Outcome::Value(Payload::nothing::<u8>()));
        assert!(matches!(flight.wait_blocking(), Outcome::Abandoned));
    }
}
