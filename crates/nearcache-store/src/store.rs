//! [`Store`]: the public face of the local cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use nearcache_keys::Key;
use nearcache_regions::{Region, RegionNameError, Regions, SubKey};

use crate::backend::Backend;
use crate::clock::StoreClock;
use crate::entry::{EntryDefaults, EntryOptions};
use crate::error::{LoadError, OptionsError, TypeMismatch};
use crate::flight::FlightTable;
use crate::options::{OnHardTimeout, StoreOptions};
use crate::purge::{self, PurgeProgress, PurgeSignal, Wake};
use crate::removal::{Listener, RemovalCause, Removals};
use crate::shim::Mutex;
use crate::shown::Shown;
use crate::source::{Loaded, Source};
use crate::stats::{Counter, Stats, StoreStats};
use crate::value::Payload;

/// What [`Store::on_expired_served`] calls.
pub(crate) type ExpiredListener = Box<dyn Fn(Source) + Send + Sync>;

/// The in-process cache: typed values under [`Key`]s, with expiry, regions and single-flight
/// loads shared by async and blocking callers.
///
/// Cloning is cheap (one `Arc`); clones share everything. Each store owns its regions, its
/// counters and one background purger thread, which stops when the last clone is dropped.
///
/// ```
/// use std::sync::Arc;
/// use nearcache_keys::Key;
/// use nearcache_store::{Store, StoreOptions};
///
/// let store = Store::new(StoreOptions::default())?;
/// let key = Key::from_text("Product:get-42");
/// let first: Arc<String> = store.get_or_create_sync(&key, |_entry| {
///     Ok::<_, std::io::Error>(String::from("forty-two"))
/// })?;
/// let again = store.get::<String>(&key)?.expect("cached");
/// assert!(Arc::ptr_eq(&first, &again));
/// assert_eq!(store.stats().loads, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
}

/// Everything a store shares between its clones, its loads and its purger.
pub(crate) struct StoreInner {
    pub(crate) cache: Backend,
    pub(crate) flights: FlightTable,
    pub(crate) regions: Arc<Regions>,
    pub(crate) clock: StoreClock,
    pub(crate) stats: Arc<Stats>,
    pub(crate) defaults: EntryDefaults,
    pub(crate) enabled: bool,
    pub(crate) cache_none: bool,
    pub(crate) max_entry_weight: u64,
    /// Whether log events show keys as they are (else their hash).
    pub(crate) log_keys: bool,
    /// Told of each entry that leaves, outside every lock (see `removal`).
    pub(crate) listener: Option<Listener>,
    /// How long a value served by fail-safe is re-armed for.
    pub(crate) fail_safe_throttle: Duration,
    /// Longest an async factory may run (feature `tokio`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) hard_timeout: Option<Duration>,
    /// What happens to a factory at the hard timeout.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) hard_timeout_action: OnHardTimeout,
    /// Whether a load through a loader that never refreshes early, with an eager refresh
    /// threshold set, was logged (once).
    pub(crate) no_eager_loader_logged: AtomicBool,
    /// Told of each expired value handed out (see [`Store::on_expired_served`]).
    pub(crate) expired_listener: std::sync::OnceLock<ExpiredListener>,
    /// Whether a `Background` hard timeout that had to cancel was logged (once).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) background_refused_logged: AtomicBool,
    /// The runtime eager refreshes run on: the one the store was built in (feature `tokio`).
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Whether the missing runtime for an eager refresh was logged (once).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) no_runtime_logged: AtomicBool,
    /// Why reads cannot use the store now: [`BYPASS`] while the read bypass is on,
    /// [`DISABLED`] for good in a disabled store. One byte, so that the hit path checks both
    /// with one load.
    reads_off: AtomicU8,
    purge: Arc<PurgeSignal>,
    /// [`Regions::held_expiries`] as the last sweep started (only the purger and
    /// `purge_now` write it; a stale read costs at most one extra sweep).
    swept_held: AtomicU64,
    /// Held by each `clear`: clears run one at a time, so the clear count stays put while a
    /// wrap fence sweeps (see `clears`).
    pub(crate) clearing: Mutex<()>,
}

/// [`StoreInner::reads_off`]: the read bypass is on.
const BYPASS: u8 = 1;
/// [`StoreInner::reads_off`]: the store is disabled (never changes).
const DISABLED: u8 = 2;

impl StoreInner {
    /// Whether reads bypass the store now.
    ///
    /// Acquire, paired with the Release in [`Store::set_read_bypass`]: whoever lifts the
    /// bypass first makes the store safe to read again (the facade clears it, moving the
    /// clear count), and a reader that sees the bypass lifted must also see that clear, or
    /// it could serve an entry the clear was meant to kill. On x86 both are plain moves.
    #[inline]
    pub(crate) fn read_bypass(&self) -> bool {
        self.reads_off.load(Ordering::Acquire) & BYPASS != 0
    }

    /// Whether reads miss without looking: the store is disabled or bypassed. One load,
    /// with the same Acquire as [`read_bypass`](Self::read_bypass) and for the same reason.
    #[inline(always)]
    pub(crate) fn reads_off(&self) -> bool {
        self.reads_off.load(Ordering::Acquire) != 0
    }

    /// Reports `removals` to the listener, if any. The caller holds no store lock.
    #[inline]
    pub(crate) fn report(&self, removals: Removals) {
        if let Some(listener) = &self.listener {
            removals.report(listener);
        }
    }

    /// Reports one removal. The caller holds no store lock.
    pub(crate) fn report_one(&self, key: Key, cause: RemovalCause) {
        if let Some(listener) = &self.listener {
            let mut removals = Removals::default();
            removals.push(key, cause);
            removals.report(listener);
        }
    }

    /// Removes `key` as `remove` does; a live entry is reported with `cause`.
    fn remove_as(&self, key: &Key, cause: RemovalCause) -> bool {
        let removed = {
            let shard = self.flights.lock(key);
            if let Some(flight) = shard.get(key) {
                flight.invalidate();
            }
            self.cache.remove(key)
        };
        let Some((key, entry)) = removed else {
            return false;
        };
        let (now, clears) = (self.clock.now(), self.regions.clears());
        let live = entry.is_live_at(now, clears);
        self.stats.incr(if live {
            Counter::Removals
        } else {
            Counter::Expirations
        });
        if self.listener.is_some() {
            let cause = entry.removal_cause(now, clears, cause);
            drop(entry);
            self.report_one(key, cause);
        }
        live
    }

    /// `key` as log events show it.
    pub(crate) fn shown<'a>(&self, key: &'a Key) -> Shown<'a> {
        Shown::new(key, self.log_keys)
    }

    /// The read of `get` and `get_optional`: `None` on a miss, `Some(Some(value))` when the
    /// entry holds a `T`, `Some(None)` when it holds anything else (a cached `None`, another
    /// type: [`not_a_value`](Self::not_a_value) sorts that out). Counted as a hit (whatever
    /// the entry holds) or a miss.
    #[inline(always)]
    fn read<T: Send + Sync + 'static>(&self, key: &Key) -> Option<Option<Arc<T>>> {
        if self.reads_off() {
            self.stats.incr(Counter::Misses);
            return None;
        }
        match self.lookup_with(key, Payload::value_of::<T>) {
            Some(read) => {
                self.stats.incr(Counter::Hits);
                Some(read)
            }
            None => {
                self.stats.incr(Counter::Misses);
                None
            }
        }
    }

    /// What a read that found something other than a `T` under `key` returns: the entry is
    /// read again (cold, so that the hit path carries no enum of these cases), and the
    /// answer is what it holds at this second read (a read linearises there if the entry
    /// changed in between): a cached `None` of `T` is `Ok(Some(None))`, nothing is
    /// `Ok(None)`, another type is a [`TypeMismatch`] naming it.
    #[cold]
    #[inline(never)]
    fn not_a_value<T: Send + Sync + 'static>(
        &self,
        key: &Key,
    ) -> Result<Option<Option<Arc<T>>>, TypeMismatch> {
        self.lookup_with(key, |payload| payload.downcast::<T>(key))
            .transpose()
    }

    /// One purge pass: removes dead entries, then unused region tokens. A pass woken only by
    /// requests skips the sweep while no expiry since the last sweep killed an entry
    /// ([`Regions::held_expiries`] has not moved); time-expired entries are swept by the
    /// interval's passes and by [`Store::purge_now`].
    fn purge(&self, wake: Wake) -> usize {
        let served = self.purge.begin_pass();
        // Read before the sweep starts: an expiry counted after this is swept next time.
        let held = self.regions.held_expiries();
        let removed = if wake == Wake::Requested && held == self.swept_held.load(Ordering::Relaxed)
        {
            0
        } else {
            self.swept_held.store(held, Ordering::Relaxed);
            let now = self.clock.now();
            let clears = self.regions.clears();
            self.cache.sweep(
                |entry| !entry.is_kept_at(now, clears),
                |key, entry| {
                    if self.listener.is_some() {
                        let cause = entry.removal_cause(now, clears, RemovalCause::Expired);
                        drop(entry);
                        self.report_one(key, cause);
                    }
                },
            )
        };
        self.stats.add(Counter::Expirations, removed as u64);
        let tokens = self.regions.collect_garbage();
        self.purge.end_pass(served);
        tracing::debug!(
            removed,
            tokens,
            "purged dead entries and unused region tokens"
        );
        removed
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.purge.shutdown();
    }
}

impl Store {
    /// A store with `options` on the real clock, and its purger thread.
    ///
    /// # Errors
    ///
    /// [`OptionsError`] when an option cannot make a working store (zero capacity, zero
    /// purge interval, …) or the purger thread cannot be started.
    pub fn new(options: StoreOptions) -> Result<Store, OptionsError> {
        Store::build(options, quanta::Clock::new(), None)
    }

    /// A store whose expiry runs on `clock`: pass [`Clock::mock`](crate::Clock::mock)'s
    /// clock in tests and move time with its [`Mock`](crate::Mock).
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock(options: StoreOptions, clock: quanta::Clock) -> Result<Store, OptionsError> {
        Store::build(options, clock, None)
    }

    /// A store on the real clock that calls `listener`
    /// with the key and the [`RemovalCause`] of each entry that leaves it: evicted, expired,
    /// invalidated (`remove`, a region or sub-key expiry, `clear`), replaced, or removed for
    /// a peer ([`remove_from_peer`](Self::remove_from_peer)). Each removal is reported once.
    ///
    /// **When it runs.** On the thread that removed the entry — a caller of `set`,
    /// `remove` or a get-or-create whose insert evicted or replaced it, a read that found it
    /// dead, or the purger thread (time expiries, and every entry of a region expiry or
    /// `clear`, which are O(1) and leave their entries to the purger) — after every store
    /// lock is released, and never on a hit. Entries tied to a region are reported when the
    /// purger sweeps them out, shortly after the expiry (or by [`purge_now`](Self::purge_now)).
    ///
    /// **What it may do.** Anything that does not wait for a load: read (`get`), `set`,
    /// `remove`, expire, `len`, `stats` — none of these can deadlock, since no store lock is
    /// held. It must not call a get-or-create, which could wait for a load this very thread
    /// is in the middle of leading. Keep it quick: the caller that removed the entry (its
    /// waiters included, for a load's insert) waits for it. A listener that panics is
    /// logged and the removal stands.
    ///
    /// Without a listener nothing of this costs anything.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use nearcache_keys::Key;
    /// use nearcache_store::{RemovalCause, Store, StoreOptions};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let store = Store::with_removal_listener(StoreOptions::default(), move |key, cause| {
    ///     log.lock().unwrap().push((key.to_string(), cause));
    /// })?;
    /// let key = Key::from_text("k");
    /// store.set(key.clone(), 1_u8);
    /// store.set(key.clone(), 2_u8);
    /// store.remove(&key);
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     [(String::from("k"), RemovalCause::Replaced), (String::from("k"), RemovalCause::Invalidated)]
    /// );
    /// # Ok::<(), nearcache_store::OptionsError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_removal_listener(
        options: StoreOptions,
        listener: impl Fn(&Key, RemovalCause) + Send + Sync + 'static,
    ) -> Result<Store, OptionsError> {
        Store::build(options, quanta::Clock::new(), Some(Arc::new(listener)))
    }

    /// [`with_removal_listener`](Self::with_removal_listener) on `clock` (see
    /// [`with_clock`](Self::with_clock)).
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock_and_removal_listener(
        options: StoreOptions,
        clock: quanta::Clock,
        listener: impl Fn(&Key, RemovalCause) + Send + Sync + 'static,
    ) -> Result<Store, OptionsError> {
        Store::build(options, clock, Some(Arc::new(listener)))
    }

    fn build(
        options: StoreOptions,
        clock: quanta::Clock,
        listener: Option<Listener>,
    ) -> Result<Store, OptionsError> {
        let sizing = options.sizing()?;
        let stats = Arc::new(Stats::new());
        let cache = Backend::build(sizing, options.shards, Arc::clone(&stats))?;
        let purge = Arc::new(PurgeSignal::default());
        let inner = Arc::new(StoreInner {
            max_entry_weight: cache.max_entry_weight(),
            log_keys: options.log_keys,
            listener,
            fail_safe_throttle: options.fail_safe_throttle,
            hard_timeout: options.hard_timeout,
            hard_timeout_action: options.hard_timeout_action,
            background_refused_logged: AtomicBool::new(false),
            expired_listener: std::sync::OnceLock::new(),
            no_eager_loader_logged: AtomicBool::new(false),
            #[cfg(feature = "tokio")]
            runtime: tokio::runtime::Handle::try_current().ok(),
            no_runtime_logged: AtomicBool::new(false),
            cache,
            flights: FlightTable::new(),
            regions: Arc::new(Regions::new()),
            clock: StoreClock::new(clock),
            stats,
            defaults: EntryDefaults {
                absolute: options.time_to_live,
                sliding: options.time_to_idle,
                weighted: sizing.weighted,
                fail_safe: options.fail_safe_max_duration,
                soft_timeout: options.soft_timeout,
                eager_refresh: options.eager_refresh_threshold,
            },
            enabled: options.enabled,
            cache_none: options.cache_none,
            reads_off: AtomicU8::new(if options.enabled { 0 } else { DISABLED }),
            purge: Arc::clone(&purge),
            swept_held: AtomicU64::new(0),
            clearing: Mutex::new(()),
        });
        if options.enabled {
            purge::spawn(
                Arc::downgrade(&inner),
                purge,
                options.purge_interval,
                |inner: &StoreInner, wake| {
                    inner.purge(wake);
                },
            )
            .map_err(OptionsError::PurgerThread)?;
        }
        Ok(Store { inner })
    }

    /// The value under `key`, if it is there, alive, and a `T`. A cached `None` (negative
    /// entry) reads as `None` here; [`get_optional`](Self::get_optional) tells them apart.
    ///
    /// The hit path: one shard read lock, one atomic load per token, a clock read only for
    /// entries that expire by time, no allocation.
    ///
    /// # Errors
    ///
    /// [`TypeMismatch`] when `key` holds a value of another type.
    #[inline]
    pub fn get<T: Send + Sync + 'static>(&self, key: &Key) -> Result<Option<Arc<T>>, TypeMismatch> {
        match self.inner.read::<T>(key) {
            Some(Some(value)) => Ok(Some(value)),
            None => Ok(None),
            Some(None) => Ok(self.inner.not_a_value::<T>(key)?.flatten()),
        }
    }

    /// The entry under `key`: `None` on a miss, `Some(None)` for a cached `None` (stored by
    /// an `_optional` loader), `Some(Some(value))` for a value.
    ///
    /// # Errors
    ///
    /// [`TypeMismatch`] when `key` holds a value (or a cached `None`) of another type.
    #[inline]
    pub fn get_optional<T: Send + Sync + 'static>(
        &self,
        key: &Key,
    ) -> Result<Option<Option<Arc<T>>>, TypeMismatch> {
        match self.inner.read::<T>(key) {
            Some(Some(value)) => Ok(Some(Some(value))),
            None => Ok(None),
            Some(None) => self.inner.not_a_value::<T>(key),
        }
    }

    /// The value under `key`, loading it with `factory` on a miss.
    ///
    /// Concurrent callers of one key — async and blocking alike — share one flight: the
    /// factory runs once and every caller gets the same `Arc`. The factory sets the entry's
    /// expiry and regions through its `&mut EntryOptions`, which belongs to this load alone (tokens
    /// are never inherited by loads it starts). If the key is removed or set, a region it
    /// uses is expired, or the store is cleared while the factory runs, the value is returned
    /// but not stored.
    ///
    /// `cache_none` does not apply here (a generic `T` cannot be known to be an `Option`): use
    /// [`get_or_create_optional`](Self::get_or_create_optional) for factories that may find
    /// nothing. A cached `None` under `key` counts as a miss here.
    ///
    /// A factory must not load its own key (it would wait for itself).
    ///
    /// # Errors
    ///
    /// [`LoadError::Factory`] with the factory's error, the same `Arc` for every caller of
    /// the flight (nothing is cached; the next call loads again);
    /// [`LoadError::TypeMismatch`] when `key` holds, or the flight produced, another type.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future while it waits only stops its wait; dropping it
    /// while it runs the factory abandons the flight, and one of its waiters takes over.
    pub async fn get_or_create<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Arc<T>>(key) {
            return Ok(hit);
        }
        self.inner.note_no_eager_refresh();
        // Boxed so that this future stays small: a hit above never builds the load's state.
        Box::pin(self.inner.load_async::<Arc<T>, E, F>(key, factory)).await
    }

    /// [`get_or_create`](Self::get_or_create), returning with the value where it came from:
    /// a hit, a load, or the key's expired value (fail-safe, or a soft timeout); see
    /// [`Source`].
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create).
    pub async fn get_or_create_with_source<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Loaded<Arc<T>>>(key) {
            return Ok(hit);
        }
        self.inner.note_no_eager_refresh();
        Box::pin(self.inner.load_async::<Loaded<Arc<T>>, E, F>(key, factory)).await
    }

    /// Calls `listener` each time an expired value is handed out in place of a load's:
    /// for each caller given it (fail-safe, or a soft timeout), and for a background load
    /// (an eager refresh, a detached load its callers left) that failed and re-armed it.
    /// It runs on the thread that serves the value, with no store lock held: keep it short.
    /// Returns `false` (and drops `listener`) when one is set already.
    pub fn on_expired_served(&self, listener: impl Fn(Source) + Send + Sync + 'static) -> bool {
        self.inner.expired_listener.set(Box::new(listener)).is_ok()
    }

    /// The blocking twin of [`get_or_create`](Self::get_or_create), sharing flights with
    /// async callers of the same key.
    ///
    /// Meant for threads outside an async runtime. If it would have to wait for a load that
    /// an async caller leads on this same thread (a current-thread runtime, which this call
    /// holds), it returns [`LoadError::WouldDeadlock`] instead of hanging. With the `tokio`
    /// feature, on a multi-thread tokio runtime a wait runs inside
    /// `tokio::task::block_in_place`, which makes it sound.
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create), and [`LoadError::WouldDeadlock`] as above.
    #[inline]
    pub fn get_or_create_sync<T, E, F>(&self, key: &Key, factory: F) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Arc<T>>(key) {
            return Ok(hit);
        }
        self.load_sync_after_miss(key, factory)
    }

    /// The miss path of [`get_or_create_sync`](Self::get_or_create_sync), out of line so
    /// that the hit path inlines into its caller.
    #[inline(never)]
    fn load_sync_after_miss<T, E, F>(&self, key: &Key, factory: F) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        self.inner.note_no_eager_refresh();
        self.inner.load_sync::<Arc<T>, E, F>(key, factory)
    }

    /// [`get_or_create_sync`](Self::get_or_create_sync), returning with the value where it
    /// came from (see [`Source`]).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_sync_with_source<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Loaded<Arc<T>>>(key) {
            return Ok(hit);
        }
        self.inner.note_no_eager_refresh();
        self.inner.load_sync::<Loaded<Arc<T>>, E, F>(key, factory)
    }

    /// Like [`get_or_create`](Self::get_or_create), for a factory that may find nothing:
    /// its `Ok(None)` is stored as a negative entry when `cache_none` is on (the default) and
    /// only returned when it is off.
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create).
    pub async fn get_or_create_optional<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Option<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<Option<T>, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Option<Arc<T>>>(key) {
            return Ok(hit);
        }
        // Boxed so that this future stays small: a hit above never builds the load's state.
        self.inner.note_no_eager_refresh();
        Box::pin(self.inner.load_async::<Option<Arc<T>>, E, F>(key, factory)).await
    }

    /// The blocking twin of [`get_or_create_optional`](Self::get_or_create_optional); on
    /// async runtimes it behaves as [`get_or_create_sync`](Self::get_or_create_sync).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_optional_sync<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Option<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<Option<T>, E>,
    {
        if let Some(hit) = self.inner.try_hit::<Option<Arc<T>>>(key) {
            return Ok(hit);
        }
        self.inner.note_no_eager_refresh();
        self.inner.load_sync::<Option<Arc<T>>, E, F>(key, factory)
    }

    /// Stores `value` under `key` with the default expiry, replacing what was there. A load
    /// of `key` in progress is not stored (its callers still get their value). Returns
    /// whether the value was stored (not when the store is disabled, the entry would be
    /// dead at once, or it is too heavy).
    pub fn set<T: Send + Sync + 'static>(&self, key: Key, value: T) -> bool {
        self.set_with(key, value, |_| {})
    }

    /// Like [`set`](Self::set), with entry options (expiry, regions, weight) set by
    /// `configure`.
    pub fn set_with<T: Send + Sync + 'static>(
        &self,
        key: Key,
        value: T,
        configure: impl FnOnce(&mut EntryOptions),
    ) -> bool {
        let inner = &*self.inner;
        if !inner.enabled {
            return false;
        }
        let mut entry = EntryOptions::new(key.clone(), Arc::clone(&inner.regions));
        configure(&mut entry);
        let clears = inner.regions.clears();
        let stored = entry.into_stored(
            Payload::value(Arc::new(value)),
            clears,
            &inner.clock,
            &inner.defaults,
        );
        let (stored, removals) = {
            let shard = inner.flights.lock(&key);
            if let Some(flight) = shard.get(&key) {
                flight.invalidate();
            }
            // A clear since the count was read killed the value: it is not inserted (after a
            // wrap fence's sweep it must not be: see `clears`).
            let stored = stored.filter(|_| inner.regions.clears() == clears);
            inner.insert_locked(&key, stored)
        };
        inner.report(removals);
        stored
    }

    /// Removes `key`. A load of `key` in progress is not stored (its callers still get their
    /// value). Returns whether a live entry was removed.
    pub fn remove(&self, key: &Key) -> bool {
        self.inner.remove_as(key, RemovalCause::Invalidated)
    }

    /// [`remove`](Self::remove) on behalf of another instance that invalidated `key` (what
    /// the facade does when it applies a peer's message): the removal listener is told
    /// [`RemovalCause::PeerInvalidated`].
    pub fn remove_from_peer(&self, key: &Key) -> bool {
        self.inner.remove_as(key, RemovalCause::PeerInvalidated)
    }

    /// Expires every entry (the global region), including those tied to no region, and
    /// wakes the purger. O(1); loads in progress are not stored. Clears run one at a time,
    /// and one in every 2^31 removes every entry from before it before it returns, holding
    /// each cache shard's write lock for a scan of that shard (what lets an entry record the
    /// clear count in 32 bits); expire the global region through this, not through
    /// [`regions`](Self::regions).
    pub fn clear(&self) {
        let fenced = self.inner.expire_all();
        self.inner.report_fenced(fenced);
        self.inner.purge.request();
    }

    /// Expires every entry of region `R` and wakes the purger. O(1); loads in progress that
    /// use `R` (even ones that ask for it after this call) are not stored.
    pub fn expire_region<R: Region>(&self) {
        self.inner.regions.expire_region_of::<R>();
        self.inner.purge.request();
    }

    /// Expires the entries of region `R` tied to sub-key `sub`; other sub-keys keep theirs.
    pub fn expire_region_key<R: Region>(&self, sub: &(impl SubKey + ?Sized)) {
        self.inner.regions.expire_region_key_of::<R>(sub);
        self.inner.purge.request();
    }

    /// [`expire_region`](Self::expire_region) by name (what a peer's message carries).
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is empty or too long; nothing is expired.
    pub fn expire_region_by_name(&self, name: &str) -> Result<(), RegionNameError> {
        self.inner.regions.expire_region(name)?;
        self.inner.purge.request();
        Ok(())
    }

    /// [`expire_region_key`](Self::expire_region_key) by region name. The sub-key is spelled
    /// as the typed functions spell it; a sub-key's text as it travels between instances goes
    /// in as a [`SubKeyText`](nearcache_regions::SubKeyText).
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is empty or too long; nothing is expired.
    pub fn expire_region_key_by_name(
        &self,
        name: &str,
        sub: &(impl SubKey + ?Sized),
    ) -> Result<(), RegionNameError> {
        self.inner.regions.expire_region_key(name, sub)?;
        self.inner.purge.request();
        Ok(())
    }

    /// This store's region registry. Expiring regions through it directly works, but only
    /// the store's own `expire_*` methods wake the purger (otherwise the periodic sweep finds
    /// the dead entries). Clear through [`clear`](Self::clear), not `expire_global`: only
    /// `clear` keeps the clear count that entries record in 32 bits from coming round.
    pub fn regions(&self) -> &Regions {
        &self.inner.regions
    }

    /// Entries held now, dead ones not yet purged included.
    pub fn len(&self) -> usize {
        self.inner.cache.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.inner.cache.is_empty()
    }

    /// Total weight held now (the entry count when the store has no weight budget).
    pub fn weight(&self) -> u64 {
        self.inner.cache.weight()
    }

    /// Total weight the store holds at most (summed over shards).
    pub fn capacity(&self) -> u64 {
        self.inner.cache.capacity()
    }

    /// The heaviest entry the store admits: 97 % of one shard's share of the capacity.
    /// Heavier entries are returned to their callers but not stored.
    pub fn max_entry_weight(&self) -> u64 {
        self.inner.max_entry_weight
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats.snapshot()
    }

    /// While on, reads miss and every get-or-create loads (still one flight per key) without
    /// storing. The facade turns it on while its backplane has been down for longer than it
    /// may serve possibly stale entries. `set` still stores.
    ///
    /// Lifting it is a Release write: everything this thread did before — in particular a
    /// [`clear`](Self::clear) that makes the store safe again — is visible to every reader
    /// that sees the bypass lifted (they load it with Acquire).
    pub fn set_read_bypass(&self, on: bool) {
        // Read-modify-writes with Release order the same as the store they replace; they
        // leave the `DISABLED` bit alone.
        if on {
            self.inner.reads_off.fetch_or(BYPASS, Ordering::Release);
        } else {
            self.inner.reads_off.fetch_and(!BYPASS, Ordering::Release);
        }
    }

    /// Whether reads bypass the store now.
    pub fn is_read_bypassed(&self) -> bool {
        self.inner.read_bypass()
    }

    /// Runs a purge pass on this thread: removes dead entries, then drops unused region
    /// tokens. Returns how many entries it removed.
    pub fn purge_now(&self) -> usize {
        self.inner.purge(Wake::Interval)
    }

    /// Where the background purger is.
    pub fn purge_progress(&self) -> PurgeProgress {
        self.inner.purge.progress()
    }

    /// Blocks until `until` holds for the purger's progress, or `timeout` passes; returns
    /// whether it holds. For tests and orderly shutdowns:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use nearcache_store::{Store, StoreOptions};
    /// # let store = Store::new(StoreOptions::default())?;
    /// store.clear();
    /// let requested = store.purge_progress().requested;
    /// assert!(store.wait_for_purge(|p| p.served >= requested, Duration::from_secs(10)));
    /// # Ok::<(), nearcache_store::OptionsError>(())
    /// ```
    pub fn wait_for_purge(
        &self,
        until: impl Fn(&PurgeProgress) -> bool,
        timeout: Duration,
    ) -> bool {
        self.inner.purge.wait_until(until, timeout)
    }

    /// How many callers have joined `key`'s flight in progress (waiters that were dropped
    /// since included), or `None` when no flight is in progress. For tests that need every
    /// caller parked before the factory finishes.
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn flight_waiters(&self, key: &Key) -> Option<usize> {
        self.inner.flights.lock(key).get(key).map(|f| f.waiters())
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("enabled", &self.inner.enabled)
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("read_bypass", &self.is_read_bypassed())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Compile-time checks: the handle crosses threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
};

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_last_handle_stops_the_purger() {
        let store = Store::new(StoreOptions::default()).unwrap();
        let signal = Arc::clone(&store.inner.purge);
        let weak = Arc::downgrade(&store.inner);
        let clone = store.clone();
        drop(store);
        assert!(weak.upgrade().is_some(), "a clone keeps it alive");
        drop(clone);
        assert!(weak.upgrade().is_none());
        assert!(signal.is_shut_down());
    }

    #[test]
    fn lifting_the_bypass_never_enables_a_disabled_store() {
        // The bypass and "disabled" share one byte that the hit path loads once.
        let key = Key::from_text("k");
        let enabled = Store::new(StoreOptions::default()).unwrap();
        enabled.set(key.clone(), 1_u8);
        enabled.set_read_bypass(true);
        assert!(enabled.is_read_bypassed());
        assert!(enabled.get::<u8>(&key).unwrap().is_none());
        enabled.set_read_bypass(false);
        assert!(!enabled.is_read_bypassed());
        assert_eq!(enabled.get::<u8>(&key).unwrap().as_deref(), Some(&1));

        let disabled = Store::new(StoreOptions {
            enabled: false,
            ..StoreOptions::default()
        })
        .unwrap();
        disabled.set_read_bypass(true);
        disabled.set_read_bypass(false);
        assert!(!disabled.is_read_bypassed());
        assert!(disabled.inner.reads_off(), "still disabled");
        let loaded = disabled.get_or_create_sync(&key, |_| Ok::<_, std::convert::Infallible>(2_u8));
        assert_eq!(*loaded.unwrap(), 2);
        let again = disabled.get_or_create_sync(&key, |_| Ok::<_, std::convert::Infallible>(3_u8));
        assert_eq!(*again.unwrap(), 3, "nothing was stored");
    }

    #[test]
    fn a_disabled_store_spawns_no_purger_and_stores_nothing() {
        let store = Store::new(StoreOptions {
            enabled: false,
            ..StoreOptions::default()
        })
        .unwrap();
        let key = Key::from_text("k");
        assert!(!store.set(key.clone(), 1_u8));
        assert!(store.get::<u8>(&key).unwrap().is_none());
        assert_eq!(store.purge_now(), 0);
    }
}
