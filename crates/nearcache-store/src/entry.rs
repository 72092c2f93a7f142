//! Entries: [`EntryOptions`], the handle a factory sets options through, and the stored form the
//! cache keeps (value, tokens, deadlines), with its liveness check.
//!
//! **Tokens are never inherited.** Each load creates its own `EntryOptions` and hands it only to its
//! own factory. There is no ambient "current entry" (no thread-local, no task-local), so a
//! factory that loads another key inside itself gives that key a fresh `EntryOptions`: neither
//! entry's regions, tokens or expiry leak into the other, in either direction.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nearcache_keys::Key;
use nearcache_regions::{ChangeToken, Region, RegionNameError, Regions, SubKey};

use crate::clears::bits_of;
use crate::clock::{StoreClock, StoreInstant, StoreSpan};
use crate::removal::RemovalCause;
use crate::value::Payload;

/// The options of the entry being loaded (or `set`), given to its factory as `&mut EntryOptions`.
///
/// Whatever the factory sets overrides the store's defaults field by field; what it leaves
/// alone keeps the default. Setters return `&mut Self` so they chain.
///
/// ```
/// use std::time::Duration;
/// use nearcache_keys::Key;
/// use nearcache_regions::region;
/// use nearcache_store::{Store, StoreOptions};
///
/// region!(Catalog = "catalog");
/// let store = Store::new(StoreOptions::default())?;
/// let key = Key::from_text("Product:get-42");
/// let product = store.get_or_create_sync(&key, |entry| {
///     entry
///         .region_key::<Catalog>("c1")
///         .time_to_live(Duration::from_secs(60));
///     Ok::<_, std::io::Error>("forty-two")
/// })?;
/// assert_eq!(*product, "forty-two");
/// store.expire_region_key::<Catalog>("c1");
/// assert!(store.get::<&str>(&key)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Tokens are never inherited
///
/// Each load creates its own `EntryOptions` and hands it only to its own factory; there is no
/// ambient "current entry" (no thread-local, no task-local). A factory that loads another key
/// inside itself gives that key a fresh `EntryOptions`, so neither entry's regions, tokens or expiry
/// leak into the other, in either direction.
#[derive(Debug)]
pub struct EntryOptions {
    key: Key,
    regions: Arc<Regions>,
    absolute: Option<Absolute>,
    sliding: Option<Duration>,
    weight: Option<u32>,
    fail_safe: Option<Duration>,
    soft_timeout: Option<Duration>,
    eager_refresh: Option<f64>,
    tokens: TokenSet,
    /// Highest epoch among the region tokens collected (for the stale-insert rule).
    region_epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absolute {
    After(Duration),
    At(Instant),
}

impl EntryOptions {
    pub(crate) fn new(key: Key, regions: Arc<Regions>) -> Self {
        EntryOptions {
            key,
            regions,
            absolute: None,
            sliding: None,
            weight: None,
            fail_safe: None,
            soft_timeout: None,
            eager_refresh: None,
            tokens: TokenSet::default(),
            region_epoch: 0,
        }
    }

    /// The key being loaded.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Expire the entry `ttl` after it is stored (moka's `time_to_live`). Zero: returned to
    /// the caller but not stored. `Duration::MAX` (or anything past the clock's range): never.
    pub fn time_to_live(&mut self, ttl: Duration) -> &mut Self {
        self.absolute = Some(Absolute::After(ttl));
        self
    }

    /// Expire the entry at `deadline` (measured on the store's clock: the time left until
    /// `deadline` when the entry is stored). A deadline already past: not stored.
    pub fn expires_at(&mut self, deadline: Instant) -> &mut Self {
        self.absolute = Some(Absolute::At(deadline));
        self
    }

    /// Expire the entry once it has not been read for `idle` (moka's `time_to_idle`; each
    /// read restarts the window, with 1 ms resolution). Zero: not stored. `Duration::MAX`:
    /// never.
    pub fn time_to_idle(&mut self, idle: Duration) -> &mut Self {
        self.sliding = Some(idle);
        self
    }

    /// The former name of [`time_to_live`](Self::time_to_live).
    #[deprecated(since = "0.2.0", note = "renamed `time_to_live`, the name moka uses")]
    pub fn absolute_expiration(&mut self, ttl: Duration) -> &mut Self {
        self.time_to_live(ttl)
    }

    /// The former name of [`expires_at`](Self::expires_at).
    #[deprecated(since = "0.2.0", note = "renamed `expires_at`")]
    pub fn absolute_expiration_at(&mut self, deadline: Instant) -> &mut Self {
        self.expires_at(deadline)
    }

    /// The former name of [`time_to_idle`](Self::time_to_idle).
    #[deprecated(since = "0.2.0", note = "renamed `time_to_idle`, the name moka uses")]
    pub fn sliding_expiration(&mut self, idle: Duration) -> &mut Self {
        self.time_to_idle(idle)
    }

    /// Ties the entry to `token`: the entry dies when the token is expired. If the token is
    /// already expired when the load finishes, the value is returned but not stored.
    ///
    /// For regions use [`region`](Self::region) and friends, which also catch an expiry
    /// that happened after the load started but before the token was fetched.
    pub fn token(&mut self, token: ChangeToken) -> &mut Self {
        self.tokens.push(token);
        self
    }

    /// Ties the entry to region `R`: [`Store::expire_region::<R>()`](crate::Store::expire_region)
    /// (or a peer's expiry by name) expires it.
    pub fn region<R: Region>(&mut self) -> &mut Self {
        let token = self.regions.token_of::<R>();
        self.push_region_token(token);
        self
    }

    /// Ties the entry to sub-key `sub` of region `R` (and so to `R` itself): expiring
    /// `R`'s sub-key `sub` expires it, other sub-keys do not, and expiring all of `R` does.
    pub fn region_key<R: Region>(&mut self, sub: &(impl SubKey + ?Sized)) -> &mut Self {
        let [region, sub] = self.regions.region_and_key_tokens_of::<R>(sub);
        self.push_region_token(region);
        self.push_region_token(sub);
        self
    }

    /// [`region`](Self::region) by name, for regions known only at run time.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is empty or too long; the entry is unchanged.
    pub fn region_by_name(&mut self, name: &str) -> Result<&mut Self, RegionNameError> {
        let token = self.regions.token(name)?;
        self.push_region_token(token);
        Ok(self)
    }

    /// [`region_key`](Self::region_key) by region name, for regions known only at run time.
    /// The sub-key is spelled as the typed functions spell it, so
    /// `region_key_by_name("catalog", "a-b")` is undone by `expire_region_key::<Catalog>("a-b")`.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is empty or too long; the entry is unchanged.
    pub fn region_key_by_name(
        &mut self,
        name: &str,
        sub: &(impl SubKey + ?Sized),
    ) -> Result<&mut Self, RegionNameError> {
        let [region, sub] = self.regions.region_and_key_tokens(name, sub)?;
        self.push_region_token(region);
        self.push_region_token(sub);
        Ok(self)
    }

    /// The entry's weight against the store's `max_weight` budget (ignored when the store
    /// counts entries). Zero is raised to 1, so every entry can be evicted.
    pub fn weight(&mut self, weight: u32) -> &mut Self {
        self.weight = Some(weight);
        self
    }

    /// Keep the entry up to `max` after its time expires (absolute or sliding), so that if
    /// a later load of the key fails (an error, a panic, a hard timeout) its callers get
    /// this value instead of the error. While kept it is never returned by `get` nor as a
    /// get-or-create hit, and it still counts against the capacity. Invalidations (`remove`,
    /// `set`, region and sub-key expiries, `clear`) drop it for good. Zero turns it off for
    /// this entry; unset, the store's `fail_safe_max_duration` applies.
    pub fn fail_safe_max_duration(&mut self, max: Duration) -> &mut Self {
        self.fail_safe = Some(max);
        self
    }

    /// How long a later load of this key, once the entry has expired and is kept for
    /// fail-safe, is waited for before callers get this (expired) value while the load goes
    /// on (see the store's `soft_timeout`). It is recorded with the entry, so it applies to
    /// the load that replaces it. Zero turns it off for this entry; unset, the store's
    /// `soft_timeout` applies. One not shorter than the store's `hard_timeout` never fires.
    pub fn soft_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Reload the entry in the background once `fraction` of its absolute time to live has
    /// passed (0.8: after 8 s of 10 s), when it is read through a `get_or_create_detached*`
    /// loader; callers keep getting this value meanwhile. Overrides the store's
    /// `eager_refresh_threshold`. A fraction outside (0, 1), or NaN, turns it off for this
    /// entry. Entries without an absolute expiration are never refreshed early.
    pub fn eager_refresh_threshold(&mut self, fraction: f64) -> &mut Self {
        self.eager_refresh = Some(fraction);
        self
    }

    fn push_region_token(&mut self, token: ChangeToken) {
        self.region_epoch = self.region_epoch.max(token.epoch());
        self.tokens.push(token);
    }

    /// Whether an expiry overlapped a load that started at `start_epoch`: a collected token
    /// is expired, or a region token was installed after the load began.
    pub(crate) fn overlapped_expiry(&self, start_epoch: u64) -> bool {
        self.region_epoch > start_epoch || self.tokens.any_expired()
    }

    /// The stored form, or `None` when it would be dead on arrival (zero or past expiry, an
    /// expired token, or a `clear` since `clears`, the clear count the load started under).
    pub(crate) fn into_stored(
        self,
        payload: Payload,
        clears: u64,
        clock: &StoreClock,
        defaults: &EntryDefaults,
    ) -> Option<StoredEntry> {
        let now = clock.now();
        let deadline = match self.absolute.or(defaults.absolute.map(Absolute::After)) {
            None => StoreInstant::NEVER,
            Some(Absolute::After(ttl)) => clock.after(now, ttl),
            Some(Absolute::At(at)) => {
                clock.after(now, at.saturating_duration_since(Instant::now()))
            }
        };
        let sliding = self
            .sliding
            .or(defaults.sliding)
            .map_or(StoreSpan::NEVER, |idle| clock.span(idle));
        let weight = if defaults.weighted {
            self.weight.unwrap_or(1).max(1)
        } else {
            1
        };
        let refresh_at = match self.eager_refresh.or(defaults.eager_refresh) {
            Some(fraction)
                if deadline != StoreInstant::NEVER && fraction > 0.0 && fraction < 1.0 =>
            {
                now.after(deadline.since(now).fraction(fraction))
            }
            _ => StoreInstant::NEVER,
        };
        let fail_safe = if deadline == StoreInstant::NEVER && sliding == StoreSpan::NEVER {
            StoreSpan::ZERO // it never expires by time: nothing to keep it past
        } else {
            self.fail_safe
                .or(defaults.fail_safe)
                .map_or(StoreSpan::ZERO, |window| clock.span(window))
        };
        // Only a kept entry is ever waited on with a soft timeout.
        let soft_timeout = if fail_safe == StoreSpan::ZERO {
            0
        } else {
            self.soft_timeout.or(defaults.soft_timeout).map_or(0, |d| {
                u64::try_from(d.as_nanos()).map_or(!RE_ARMED, |nanos| nanos.min(!RE_ARMED))
            })
        };
        let current = self.regions.clears();
        let stored = StoredEntry::new(
            payload,
            bits_of(clears),
            false,
            self.tokens,
            Timing {
                deadline,
                sliding,
                fail_safe,
                soft_timeout,
                refresh_at,
            },
            now,
            weight,
        );
        stored.is_live_at(now, current).then_some(stored)
    }
}

/// The store-wide defaults an entry falls back on; the default is none of them (entries
/// never expire, are not weighted, and are not kept for fail-safe).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EntryDefaults {
    pub(crate) absolute: Option<Duration>,
    pub(crate) sliding: Option<Duration>,
    pub(crate) weighted: bool,
    /// How long entries are kept past their time expiry for fail-safe (none: not kept).
    pub(crate) fail_safe: Option<Duration>,
    /// How long a load is waited for before a kept value is served (none: not).
    pub(crate) soft_timeout: Option<Duration>,
    /// The fraction of the time to live after which a detached read refreshes the entry.
    pub(crate) eager_refresh: Option<f64>,
}

/// An entry's tokens: two inline (most entries have 0–2), the rest spilled to the heap.
#[derive(Default, Clone)]
pub(crate) struct TokenSet {
    inline: [Option<ChangeToken>; 2],
    spill: Box<[ChangeToken]>,
}

impl TokenSet {
    fn push(&mut self, token: ChangeToken) {
        if self.iter().any(|held| held.same_as(&token)) {
            return;
        }
        for slot in &mut self.inline {
            if slot.is_none() {
                *slot = Some(token);
                return;
            }
        }
        let mut spill = std::mem::take(&mut self.spill).into_vec();
        spill.push(token);
        self.spill = spill.into_boxed_slice();
    }

    fn iter(&self) -> impl Iterator<Item = &ChangeToken> {
        self.inline.iter().flatten().chain(self.spill.iter())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.iter().count()
    }

    /// No tokens (they fill the inline slots first).
    fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    #[inline]
    fn any_expired(&self) -> bool {
        match &self.inline[0] {
            None => false,
            Some(first) => {
                first.is_expired()
                    || self.inline[1].as_ref().is_some_and(ChangeToken::is_expired)
                    || self.spill.iter().any(ChangeToken::is_expired)
            }
        }
    }
}

/// The tokens themselves (expired or not, and their epochs), not the inline/spill split.
impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What the cache holds for a key, read in place under its shard's read lock (never cloned).
///
/// The value, deadline, weight and the clear count the entry was loaded under are inline;
/// region and user tokens and a sliding window's state are boxed, and only for entries that
/// have any, so a plain entry is 40 bytes in its shard's slot and nothing else.
pub(crate) struct StoredEntry {
    payload: Payload,
    /// Absolute deadline on the store clock, [`StoreInstant::NEVER`] for none.
    deadline: StoreInstant,
    /// The low 32 bits of the clear count ([`Regions::clears`]) when the load started (or
    /// the `set` ran): the entry is dead once the count has moved on (a `clear`). 32 bits are
    /// enough because of the wrap fence (see `clears`), and leave room for the weight inline
    /// in 40 bytes.
    stamp: u32,
    weight: u32,
    shared: Option<Box<Shared>>,
}

/// [`Shared::soft_timeout`]'s top bit: the entry is an expired value re-armed by fail-safe
/// for the throttle.
const RE_ARMED: u64 = 1 << 63;

/// The parts of an entry most entries do not have.
struct Shared {
    tokens: TokenSet,
    /// Sliding window, [`StoreSpan::NEVER`] for none.
    sliding: StoreSpan,
    /// The last read (or the store), a [`StoreInstant`] in its raw form.
    last_access: AtomicU64,
    /// How long past its time expiry the entry is kept for fail-safe (zero: not kept).
    fail_safe: StoreSpan,
    /// How long a load replacing this entry (once kept) is waited for before the entry is
    /// served, in nanoseconds (0: not), in the low 63 bits (292 years); the top bit is
    /// [`RE_ARMED`] (a re-armed entry is always boxed, and the flag here keeps both the
    /// inline record at 40 bytes and this box at 72). A timer's duration, never compared
    /// with the store clock, so it stays in nanoseconds.
    soft_timeout: u64,
    /// When a detached read starts a background refresh, a [`StoreInstant`] in its raw form;
    /// [`StoreInstant::NEVER`] for none, or once one read has claimed it (so one refresh
    /// starts, however many read).
    refresh_at: AtomicU64,
}

impl Shared {
    /// When the sliding window runs out if nothing reads the entry again
    /// ([`StoreInstant::NEVER`] without a window).
    fn idle_until(&self) -> StoreInstant {
        StoreInstant::from_raw(self.last_access.load(Ordering::Relaxed)).after(self.sliding)
    }
}

/// When an entry expires by time, and how long it is kept after that for fail-safe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Absolute deadline on the store clock, [`StoreInstant::NEVER`] for none.
    pub(crate) deadline: StoreInstant,
    /// Sliding window, [`StoreSpan::NEVER`] for none.
    pub(crate) sliding: StoreSpan,
    /// Fail-safe window past the time expiry (zero: none).
    pub(crate) fail_safe: StoreSpan,
    /// Soft timeout of a load replacing the kept entry, in nanoseconds (0: none).
    pub(crate) soft_timeout: u64,
    /// When an eager refresh is due ([`StoreInstant::NEVER`]: none).
    pub(crate) refresh_at: StoreInstant,
}

/// What an entry is to a load that failed: whether it may stand in for the failed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Alive: a hit.
    Live,
    /// Expired by time only, within its fail-safe window: kept, served only in place of a
    /// failed load.
    Kept,
    /// Invalidated, or past its fail-safe window: never served again.
    Dead,
}

impl StoredEntry {
    fn new(
        payload: Payload,
        stamp: u32,
        re_armed: bool,
        tokens: TokenSet,
        timing: Timing,
        now: StoreInstant,
        weight: u32,
    ) -> Self {
        let Timing {
            deadline,
            sliding,
            fail_safe,
            soft_timeout,
            refresh_at,
        } = timing;
        let boxed = re_armed
            || !tokens.is_empty()
            || sliding != StoreSpan::NEVER
            || fail_safe != StoreSpan::ZERO
            || refresh_at != StoreInstant::NEVER;
        let shared = boxed.then(|| {
            Box::new(Shared {
                tokens,
                sliding,
                last_access: AtomicU64::new(now.raw()),
                fail_safe,
                soft_timeout: if re_armed {
                    soft_timeout | RE_ARMED
                } else {
                    soft_timeout
                },
                refresh_at: AtomicU64::new(refresh_at.raw()),
            })
        });
        StoredEntry {
            payload,
            deadline,
            stamp,
            weight,
            shared,
        }
    }

    /// Whether this is an expired value fail-safe re-armed for the throttle (a hit on it is
    /// marked `Source::FailSafe`).
    #[inline]
    pub(crate) fn is_re_armed(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.soft_timeout & RE_ARMED != 0)
    }

    /// Whether no `clear` has happened since the entry was loaded, given the store's
    /// current clear count: the one comparison every check of an entry makes (exact thanks
    /// to the wrap fence: see `clears`).
    #[inline(always)]
    fn clear_matches(&self, clears: u64) -> bool {
        self.stamp == bits_of(clears)
    }

    /// Whether the entry may be returned now, given the store's current clear count;
    /// restarts its sliding window if so.
    ///
    /// Costs a comparison for the global region and one atomic load per token; the clock is
    /// read only for entries that expire by time, and a sliding entry's last access is
    /// written at most once per millisecond. An entry with neither tokens nor a deadline
    /// (the common case) is checked inline; the rest out of line, so the hit path stays
    /// small enough to inline into its caller.
    #[inline(always)]
    pub(crate) fn is_live(&self, clock: &StoreClock, clears: u64) -> bool {
        if self.shared.is_none() && self.deadline == StoreInstant::NEVER {
            return self.clear_matches(clears);
        }
        self.is_live_timed(clock, clears)
    }

    #[inline(never)]
    fn is_live_timed(&self, clock: &StoreClock, clears: u64) -> bool {
        if !self.clear_matches(clears) {
            return false;
        }
        let sliding = match &self.shared {
            None => None,
            Some(shared) => {
                if shared.tokens.any_expired() {
                    return false;
                }
                (shared.sliding != StoreSpan::NEVER).then_some(shared)
            }
        };
        if self.deadline == StoreInstant::NEVER && sliding.is_none() {
            return true;
        }
        let now = clock.now();
        if now >= self.deadline {
            return false;
        }
        if let Some(shared) = sliding {
            let last = StoreInstant::from_raw(shared.last_access.load(Ordering::Relaxed));
            // One subtraction for both tests (a window is never zero: such entries are dead
            // on arrival, never stored).
            let idle = now.since(last);
            if idle >= shared.sliding {
                return false;
            }
            // Relaxed: the last access is a hint only ever raised; a reader that misses a
            // concurrent raise sees the entry as older than it is by at most that touch.
            if idle > clock.touch_granularity() {
                shared.last_access.fetch_max(now.raw(), Ordering::Relaxed);
            }
        }
        true
    }

    /// Whether the entry is alive at `now` under clear count `clears`, without touching it
    /// (the purger's check).
    pub(crate) fn is_live_at(&self, now: StoreInstant, clears: u64) -> bool {
        self.clear_matches(clears)
            && now < self.deadline
            && self.shared.as_ref().is_none_or(|shared| {
                !shared.tokens.any_expired()
                    && (shared.sliding == StoreSpan::NEVER || now < shared.idle_until())
            })
    }

    /// Why this entry leaves if it is removed now: `alive` (the remover's reason) while it
    /// is live; otherwise [`Invalidated`](RemovalCause::Invalidated) when a `clear` or an
    /// expired token killed it, [`Expired`](RemovalCause::Expired) when its time did.
    pub(crate) fn removal_cause(
        &self,
        now: StoreInstant,
        clears: u64,
        alive: RemovalCause,
    ) -> RemovalCause {
        let invalidated = !self.clear_matches(clears)
            || self
                .shared
                .as_ref()
                .is_some_and(|shared| shared.tokens.any_expired());
        if invalidated {
            RemovalCause::Invalidated
        } else if self.is_live_at(now, clears) {
            alive
        } else {
            RemovalCause::Expired
        }
    }

    /// Whether the entry is alive, kept for fail-safe, or dead at `now` under clear count
    /// `clears` (without touching it). An invalidated entry (a `clear` since it was
    /// loaded, an expired token) is dead whatever its fail-safe window.
    pub(crate) fn standing_at(&self, now: StoreInstant, clears: u64) -> Standing {
        if self.is_live_at(now, clears) {
            return Standing::Live;
        }
        let Some(shared) = self
            .shared
            .as_ref()
            .filter(|s| s.fail_safe != StoreSpan::ZERO)
        else {
            return Standing::Dead;
        };
        if !self.clear_matches(clears) || shared.tokens.any_expired() {
            return Standing::Dead;
        }
        if now < self.kept_until(shared) {
            Standing::Kept
        } else {
            Standing::Dead
        }
    }

    /// When the fail-safe window of this entry ends: its time expiry (absolute, or sliding
    /// from the last access) plus the window.
    fn kept_until(&self, shared: &Shared) -> StoreInstant {
        self.deadline
            .min(shared.idle_until())
            .after(shared.fail_safe)
    }

    /// Whether the store holds on to the entry at `now` (alive, or kept for fail-safe): the
    /// purger and the readers remove only entries that are not.
    pub(crate) fn is_kept_at(&self, now: StoreInstant, clears: u64) -> bool {
        self.standing_at(now, clears) != Standing::Dead
    }

    /// A copy of this kept entry, alive again for `throttle` from `now` (so a failing
    /// source is not called again meanwhile), with the same tokens and clear count (so an
    /// invalidation still kills it) and the rest of its original fail-safe window after
    /// that. `None` when it has no fail-safe window or `throttle` is zero.
    pub(crate) fn re_armed(
        &self,
        clock: &StoreClock,
        now: StoreInstant,
        throttle: Duration,
    ) -> Option<StoredEntry> {
        let shared = self
            .shared
            .as_ref()
            .filter(|s| s.fail_safe != StoreSpan::ZERO)?;
        if throttle.is_zero() {
            return None;
        }
        let kept_until = self.kept_until(shared);
        let deadline = clock.after(now, throttle);
        let re_armed = StoredEntry::new(
            self.payload.clone(),
            self.stamp,
            true,
            shared.tokens.clone(),
            Timing {
                deadline,
                sliding: StoreSpan::NEVER,
                // What is left of the window once the throttle ends (none: dead then).
                fail_safe: kept_until.since(deadline),
                soft_timeout: shared.soft_timeout & !RE_ARMED,
                refresh_at: StoreInstant::NEVER,
            },
            now,
            self.weight,
        );
        Some(re_armed)
    }

    /// The soft timeout a load replacing this entry waits for before serving it, if the
    /// entry is kept for fail-safe and has one.
    pub(crate) fn soft_timeout(&self) -> Option<Duration> {
        let shared = self.shared.as_ref()?;
        let nanos = shared.soft_timeout & !RE_ARMED;
        (nanos != 0).then(|| Duration::from_nanos(nanos))
    }

    /// Whether this read is the one that starts the entry's eager refresh: it is due at
    /// `now` and no read claimed it before (one compare-and-swap, only once it is due).
    /// Entries without one cost a branch.
    #[inline]
    pub(crate) fn claim_refresh(&self, clock: &StoreClock) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let at = shared.refresh_at.load(Ordering::Relaxed);
        at != StoreInstant::NEVER.raw()
            && clock.now() >= StoreInstant::from_raw(at)
            && shared
                .refresh_at
                .compare_exchange(
                    at,
                    StoreInstant::NEVER.raw(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The value (a hit clones it: one reference count).
    #[inline(always)]
    pub(crate) fn payload(&self) -> &Payload {
        &self.payload
    }

    #[inline]
    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use nearcache_regions::region;

    region!(Catalog = "catalog"; Pricing = "pricing");

    fn defaults() -> EntryDefaults {
        EntryDefaults {
            absolute: None,
            sliding: None,
            weighted: false,
            fail_safe: None,
            soft_timeout: None,
            eager_refresh: None,
        }
    }

    fn entry(regions: &Arc<Regions>) -> EntryOptions {
        EntryOptions::new(Key::from_text("k"), Arc::clone(regions))
    }

    /// A mock clock reading `nanos` (on the mock clock a tick is a nanosecond).
    fn clock_at(nanos: u64) -> StoreClock {
        let (clock, mock) = quanta::Clock::mock();
        mock.increment(Duration::from_nanos(nanos));
        StoreClock::new(clock)
    }

    fn at(nanos: u64) -> StoreInstant {
        StoreInstant::from_raw(nanos)
    }

    fn store(entry: EntryOptions, regions: &Regions, now: u64) -> Option<StoredEntry> {
        store_on(entry, regions, &clock_at(now))
    }

    fn store_on(entry: EntryOptions, regions: &Regions, clock: &StoreClock) -> Option<StoredEntry> {
        entry.into_stored(
            Payload::value(Arc::new(1_u8)),
            regions.clears(),
            clock,
            &defaults(),
        )
    }

    #[test]
    fn token_sets_dedupe_and_spill_past_two() {
        let mut set = TokenSet::default();
        let a = ChangeToken::new();
        set.push(a.clone());
        set.push(a.clone());
        assert_eq!(set.len(), 1);
        let tokens: Vec<ChangeToken> = (0..4).map(|_| ChangeToken::new()).collect();
        for token in &tokens {
            set.push(token.clone());
        }
        assert_eq!(set.len(), 5);
        assert!(!set.any_expired());
        tokens[3].expire();
        assert!(set.any_expired(), "a spilled token counts too");
    }

    #[test]
    fn region_key_ties_the_entry_to_the_sub_key_and_the_region() {
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        e.region_key::<Catalog>("c1").region::<Catalog>();
        assert_eq!(e.tokens.len(), 2, "the region token is not added twice");
        let stored = store(e, &regions, 0).unwrap();
        regions.expire_region_key_of::<Catalog>("c2");
        assert!(stored.is_live_at(at(0), 0));
        regions.expire_region_of::<Catalog>();
        assert!(
            !stored.is_live_at(at(0), 0),
            "expiring the region expires its sub-keys' entries"
        );
    }

    #[test]
    fn debug_shows_every_option_and_each_token() {
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        e.region_key::<Catalog>("c1").weight(3);
        let shown = format!("{e:?}");
        let fields = [
            "key",
            "absolute",
            "sliding",
            "weight: Some(3)",
            "fail_safe",
            "soft_timeout",
            "eager_refresh",
            "region_epoch",
        ];
        for field in fields {
            assert!(shown.contains(field), "{field} missing from {shown}");
        }
        assert_eq!(shown.matches("ChangeToken").count(), 2, "{shown}");
    }

    #[test]
    fn by_name_setters_validate_and_match_typed_ones() {
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        assert!(e.region_by_name("").is_err());
        assert!(e.region_key_by_name(&"x".repeat(300), "c1").is_err());
        assert_eq!(e.tokens.len(), 0);
        e.region_key_by_name("pricing", "p1").unwrap();
        let stored = store(e, &regions, 0).unwrap();
        regions.expire_region_key_of::<Pricing>("p1");
        assert!(!stored.is_live_at(at(0), 0));
    }

    #[test]
    fn a_region_expired_after_the_load_began_marks_the_entry_stale() {
        let regions = Arc::new(Regions::new());
        let start = regions.epoch();
        regions.expire_region_of::<Catalog>();
        let mut e = entry(&regions);
        e.region::<Catalog>();
        assert!(e.overlapped_expiry(start));
        let mut later = entry(&regions);
        later.region::<Catalog>();
        assert!(!later.overlapped_expiry(regions.epoch()));
    }

    #[test]
    fn user_tokens_are_checked_for_expiry_only() {
        let regions = Arc::new(Regions::new());
        let token = ChangeToken::with_epoch(1_000);
        let mut e = entry(&regions);
        e.token(token.clone());
        assert!(
            !e.overlapped_expiry(0),
            "a foreign token's epoch does not count"
        );
        token.expire();
        assert!(e.overlapped_expiry(0));
        assert!(store(e, &regions, 0).is_none(), "dead on arrival");
    }

    #[test]
    fn zero_and_past_expiries_are_dead_on_arrival() {
        let regions = Arc::new(Regions::new());
        let mut zero = entry(&regions);
        zero.time_to_live(Duration::ZERO);
        assert!(store(zero, &regions, 5).is_none());
        let mut idle = entry(&regions);
        idle.time_to_idle(Duration::ZERO);
        assert!(store(idle, &regions, 5).is_none());
        let mut past = entry(&regions);
        past.expires_at(Instant::now());
        assert!(store(past, &regions, 5).is_none());
    }

    #[test]
    #[allow(deprecated)]
    fn the_former_setter_names_set_the_same_expiries() {
        let regions = Arc::new(Regions::new());
        let (mut old, mut new) = (entry(&regions), entry(&regions));
        old.absolute_expiration(Duration::from_secs(3))
            .sliding_expiration(Duration::from_secs(2));
        new.time_to_live(Duration::from_secs(3))
            .time_to_idle(Duration::from_secs(2));
        assert_eq!((old.absolute, old.sliding), (new.absolute, new.sliding));
        assert_eq!(new.absolute, Some(Absolute::After(Duration::from_secs(3))));
        assert_eq!(new.sliding, Some(Duration::from_secs(2)));
        let deadline = Instant::now() + Duration::from_secs(5);
        old.absolute_expiration_at(deadline);
        new.expires_at(deadline);
        assert_eq!(old.absolute, new.absolute);
        assert_eq!(new.absolute, Some(Absolute::At(deadline)));
    }

    #[test]
    fn overflowing_expiries_mean_never() {
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        e.time_to_live(Duration::MAX).time_to_idle(Duration::MAX);
        let stored = store(e, &regions, 5).unwrap();
        assert!(stored.is_live_at(at(u64::MAX - 1), 0));
        let mut far = entry(&regions);
        far.expires_at(Instant::now() + Duration::from_secs(1 << 40));
        assert!(
            store(far, &regions, u64::MAX - 10)
                .unwrap()
                .is_live_at(at(u64::MAX - 1), 0)
        );
    }

    #[test]
    fn weights_apply_only_to_weighted_stores_and_never_drop_to_zero() {
        let regions = Arc::new(Regions::new());
        let weighted = EntryDefaults {
            weighted: true,
            ..defaults()
        };
        let mut heavy = entry(&regions);
        heavy.weight(7);
        let payload = Payload::value(Arc::new(()));
        let stored = heavy.into_stored(payload.clone(), regions.clears(), &clock_at(0), &weighted);
        assert_eq!(stored.map(|s| s.weight()), Some(7));
        let mut zero = entry(&regions);
        zero.weight(0);
        let stored = zero.into_stored(payload.clone(), regions.clears(), &clock_at(0), &weighted);
        assert_eq!(stored.map(|s| s.weight()), Some(1));
        let mut ignored = entry(&regions);
        ignored.weight(7);
        let stored = ignored.into_stored(payload, regions.clears(), &clock_at(0), &defaults());
        assert_eq!(stored.map(|s| s.weight()), Some(1));
    }

    #[test]
    fn sliding_reads_extend_the_window_and_are_coarse() {
        let (clock, mock) = quanta::Clock::mock();
        let clock = StoreClock::new(clock);
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        e.time_to_idle(Duration::from_secs(10));
        let stored = store_on(e, &regions, &clock).unwrap();
        mock.increment(Duration::from_secs(6));
        assert!(stored.is_live(&clock, 0), "read at 6 s restarts the window");
        mock.increment(Duration::from_secs(6));
        assert!(stored.is_live(&clock, 0), "12 s: 6 s since the last read");
        let later = clock.after(clock.now(), Duration::from_secs(10));
        assert!(!stored.is_live_at(later, 0));
        mock.increment(Duration::from_micros(500));
        assert!(stored.is_live(&clock, 0));
        assert_eq!(
            stored
                .shared
                .as_ref()
                .unwrap()
                .last_access
                .load(Ordering::Relaxed),
            12_000_000_000,
            "a read within 1 ms of the last write does not write"
        );
        mock.increment(Duration::from_secs(11));
        assert!(!stored.is_live(&clock, 0));
    }

    #[test]
    fn an_eager_refresh_is_claimed_once_and_only_when_due() {
        let (clock, mock) = quanta::Clock::mock();
        let clock = StoreClock::new(clock);
        let regions = Arc::new(Regions::new());
        let mut e = entry(&regions);
        e.time_to_live(Duration::from_secs(10))
            .eager_refresh_threshold(0.8);
        let stored = store_on(e, &regions, &clock).unwrap();
        mock.increment(Duration::from_millis(7_999));
        assert!(!stored.claim_refresh(&clock), "not due before 8 s");
        mock.increment(Duration::from_millis(1));
        assert!(stored.claim_refresh(&clock), "due at 8 s");
        assert!(!stored.claim_refresh(&clock), "claimed once");
        for fraction in [0.0, 1.0, -0.5, f64::NAN] {
            let mut off = entry(&regions);
            off.time_to_live(Duration::from_secs(10))
                .eager_refresh_threshold(fraction);
            let stored = store(off, &regions, 0).unwrap();
            assert!(stored.shared.is_none(), "{fraction}: nothing to box");
        }
        let mut sliding = entry(&regions);
        sliding
            .time_to_idle(Duration::from_secs(10))
            .eager_refresh_threshold(0.5);
        let stored = store_on(sliding, &regions, &clock).unwrap();
        mock.increment(Duration::from_secs(9));
        assert!(!stored.claim_refresh(&clock), "no absolute expiry: never");
    }

    #[test]
    fn a_stored_entry_is_small() {
        // Documented in the crate docs: keep them in sync.
        let inline = std::mem::size_of::<StoredEntry>();
        assert_eq!(
            inline, 40,
            "payload 16, deadline 8, stamp 4, weight 4, box 8"
        );
        let shared = std::mem::size_of::<Shared>();
        assert!(shared <= 72, "{shared}");
    }

    /// The re-armed flag shares the box's soft-timeout field: neither reads as the other.
    #[test]
    fn the_re_armed_flag_and_the_soft_timeout_stay_apart() {
        let (clock, mock) = quanta::Clock::mock();
        let clock = StoreClock::new(clock);
        let regions = Arc::new(Regions::new());
        let kept = |soft: Duration| {
            let mut e = entry(&regions);
            e.time_to_live(Duration::from_secs(1))
                .fail_safe_max_duration(Duration::from_secs(3_600))
                .soft_timeout(soft);
            store_on(e, &regions, &clock).unwrap()
        };
        let longest = kept(Duration::MAX);
        assert!(
            !longest.is_re_armed(),
            "the longest soft timeout is not the flag"
        );
        assert!(longest.soft_timeout().is_some());
        let original = kept(Duration::from_secs(5));
        mock.increment(Duration::from_secs(2));
        let now = clock.now();
        assert_eq!(original.standing_at(now, 0), Standing::Kept);
        let re_armed = original
            .re_armed(&clock, now, Duration::from_secs(1))
            .unwrap();
        assert!(re_armed.is_re_armed() && !original.is_re_armed());
        assert_eq!(re_armed.soft_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(re_armed.standing_at(now, 0), Standing::Live);
        assert_eq!(
            re_armed.standing_at(now, 1),
            Standing::Dead,
            "a clear ends it"
        );
        let again = re_armed.re_armed(&clock, now, Duration::from_secs(1));
        assert!(
            again.is_some_and(|e| e.is_re_armed() && e.soft_timeout() == original.soft_timeout())
        );
    }

    #[test]
    fn a_global_expiry_kills_every_entry_by_epoch() {
        let regions = Arc::new(Regions::new());
        let stored = store(entry(&regions), &regions, 0).unwrap();
        assert!(stored.is_live_at(at(0), regions.clears()));
        regions.expire_region_of::<Catalog>();
        assert!(
            stored.is_live_at(at(0), regions.clears()),
            "a region is not global"
        );
        regions.expire_global();
        assert!(!stored.is_live_at(at(0), regions.clears()));
        let clock = StoreClock::new(quanta::Clock::new());
        assert!(!stored.is_live(&clock, regions.clears()));
        let mut tied = entry(&regions);
        tied.region::<Catalog>();
        let old = regions.clears();
        regions.expire_global();
        assert!(
            tied.into_stored(
                Payload::value(Arc::new(1_u8)),
                old,
                &clock_at(0),
                &defaults()
            )
            .is_none(),
            "loaded under a clear count that a clear moved on from: dead on arrival"
        );
    }

    #[test]
    fn only_entries_with_tokens_or_a_sliding_window_box_anything() {
        let regions = Arc::new(Regions::new());
        let value = Arc::new(7_u8);
        let plain = entry(&regions)
            .into_stored(
                Payload::value(Arc::clone(&value)),
                regions.clears(),
                &clock_at(0),
                &defaults(),
            )
            .unwrap();
        assert!(
            plain.shared.is_none(),
            "no second allocation for a plain entry"
        );
        let out = plain.payload().downcast::<u8>(&Key::from_text("k"));
        assert!(
            Arc::ptr_eq(&out.unwrap().unwrap(), &value),
            "the stored Arc itself"
        );
        let mut tied = entry(&regions);
        tied.region::<Catalog>();
        assert!(store(tied, &regions, 0).unwrap().shared.is_some());
        let mut idle = entry(&regions);
        idle.time_to_idle(Duration::from_secs(1));
        assert!(store(idle, &regions, 0).unwrap().shared.is_some());
    }
}
