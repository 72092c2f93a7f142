//! [`Regions`]: one cache's map from the global region, each region and each region sub-key
//! to its current [`ChangeToken`], plus the invalidation epoch that lets the store refuse
//! stale inserts.
//!
//! Expiring anything bumps the epoch to `e`, installs a fresh token with epoch `e` and only
//! then expires the old one. A load remembers the epoch it started at; if a token it collects
//! is expired or newer than that, an expiry overlapped the load and its value must not be
//! stored. The bump happens under the write lock of the map it installs into, so the tokens
//! of one slot are installed in epoch order.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::region::{CheckedName, Region, RegionNameError, SubKey, validate_region_name};
use crate::token::ChangeToken;

/// How many unused tokens [`Regions::collect_garbage`] drops per write-lock hold.
const GC_BATCH: usize = 256;

/// The per-cache registry of region tokens (never a process global: two caches in one
/// process each own one and do not affect each other).
///
/// - the **global** token, current until [`expire_global`](Self::expire_global) replaces
///   it, which expires everything; its epoch is also readable on its own with one atomic
///   load ([`global_epoch`](Self::global_epoch)), so a store can record the epoch in each
///   entry instead of a reference to the token;
/// - one token per **region** name ([`token_of::<R>()`](Self::token_of));
/// - one token per **(region, sub-key)** pair
///   ([`key_token_of::<R>("c1")`](Self::key_token_of)).
///
/// Every expiry is O(1) in the number of entries: one epoch bump, one map write, one atomic
/// flip. Tokens are created lazily by lookups; tokens no entry holds any more are dropped by
/// [`collect_garbage`](Self::collect_garbage), so the maps stay bounded by what live entries
/// use (plus what was created since the last collection).
///
/// ```
/// use nearcache_regions::{Regions, region};
///
/// region!(Catalog = "catalog");
/// let regions = Regions::new();
/// let c1 = regions.key_token_of::<Catalog>("c1");
/// let c2 = regions.key_token_of::<Catalog>("c2");
/// regions.expire_region_key_of::<Catalog>("c1");
/// assert!(c1.is_expired());
/// assert!(!c2.is_expired(), "other sub-keys are untouched");
/// assert!(!regions.key_token_of::<Catalog>("c1").is_expired(), "a fresh token replaced it");
/// ```
pub struct Regions {
    epoch: AtomicU64,
    /// Expiries that flipped a token something still held (and every global expiry).
    held_expiries: AtomicU64,
    global: RwLock<ChangeToken>,
    /// The current global token's epoch, readable without the lock.
    global_epoch: AtomicU64,
    /// Global expiries so far (see [`clears`](Self::clears)).
    clears: AtomicU64,
    regions: RwLock<RegionMap>,
}

#[derive(Default)]
struct RegionMap {
    slots: HashMap<Box<str>, RegionSlot>,
    /// Highest epoch of any token dropped together with its whole slot; new slots start here.
    watermark: u64,
}

struct RegionSlot {
    token: ChangeToken,
    sub_keys: HashMap<Box<str>, ChangeToken>,
    /// Highest epoch of any sub-key token dropped from this slot; new sub-key tokens start
    /// here, so a load spanning an expiry still sees a token newer than its start.
    sub_watermark: u64,
}

impl RegionSlot {
    fn new(watermark: u64) -> Self {
        RegionSlot {
            token: ChangeToken::with_epoch(watermark),
            sub_keys: HashMap::new(),
            sub_watermark: watermark,
        }
    }

    fn max_epoch(&self) -> u64 {
        self.token.epoch().max(self.sub_watermark)
    }
}

impl RegionMap {
    fn slot_mut(&mut self, name: &str) -> &mut RegionSlot {
        let watermark = self.watermark;
        self.slots
            .entry(Box::from(name))
            .or_insert_with(|| RegionSlot::new(watermark))
    }
}

impl Regions {
    /// An empty registry at epoch 0.
    pub fn new() -> Self {
        Regions {
            epoch: AtomicU64::new(0),
            held_expiries: AtomicU64::new(0),
            global: RwLock::new(ChangeToken::with_epoch(0)),
            global_epoch: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            regions: RwLock::new(RegionMap::default()),
        }
    }

    /// The invalidation epoch: how many expiries (of any kind) this registry has performed.
    ///
    /// A load reads it before its factory runs; see the module docs for the rule.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a load that started at `start_epoch` and collected `token` overlapped an expiry
    /// of that token's group: the token is expired, or it was installed after the load began.
    pub fn is_stale(token: &ChangeToken, start_epoch: u64) -> bool {
        token.is_expired() || token.epoch() > start_epoch
    }

    /// The epoch of the current global token: it changes exactly when
    /// [`expire_global`](Self::expire_global) replaces the token, so "the global token I
    /// read is still current" is `global_epoch() == token.epoch()`, one atomic load.
    ///
    /// ```
    /// use nearcache_regions::Regions;
    ///
    /// let regions = Regions::new();
    /// let token = regions.global();
    /// assert_eq!(regions.global_epoch(), token.epoch());
    /// regions.expire_global();
    /// assert_ne!(regions.global_epoch(), token.epoch());
    /// ```
    #[inline]
    pub fn global_epoch(&self) -> u64 {
        self.global_epoch.load(Ordering::Acquire)
    }

    /// The current global token.
    pub fn global(&self) -> ChangeToken {
        self.global.read().clone()
    }

    /// The current token of region `R`.
    pub fn token_of<R: Region>(&self) -> ChangeToken {
        self.region_token(CheckedName::<R>::NAME)
    }

    /// The current token of the region named `name`.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is empty or longer than
    /// [`MAX_REGION_NAME_LEN`](crate::MAX_REGION_NAME_LEN).
    pub fn token(&self, name: &str) -> Result<ChangeToken, RegionNameError> {
        validate_region_name(name)?;
        Ok(self.region_token(name))
    }

    /// The current token of sub-key `sub` of region `R`: only entries tied to that sub-key
    /// hold it.
    pub fn key_token_of<R: Region>(&self, sub: &(impl SubKey + ?Sized)) -> ChangeToken {
        self.sub_key_token(CheckedName::<R>::NAME, &sub.sub_key_text())
    }

    /// The current token of sub-key `sub` of the region named `name` (spelled as the typed
    /// functions spell it: see [`SubKey`]).
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is not a valid region name.
    pub fn key_token(
        &self,
        name: &str,
        sub: &(impl SubKey + ?Sized),
    ) -> Result<ChangeToken, RegionNameError> {
        validate_region_name(name)?;
        Ok(self.sub_key_token(name, &sub.sub_key_text()))
    }

    /// The current tokens of the region named `name` and of its sub-key `sub`, read
    /// together.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is not a valid region name.
    pub fn region_and_key_tokens(
        &self,
        name: &str,
        sub: &(impl SubKey + ?Sized),
    ) -> Result<[ChangeToken; 2], RegionNameError> {
        validate_region_name(name)?;
        Ok(self.region_and_sub_key_tokens(name, &sub.sub_key_text()))
    }

    /// The current tokens of region `R` and of its sub-key `sub`, read together.
    pub fn region_and_key_tokens_of<R: Region>(
        &self,
        sub: &(impl SubKey + ?Sized),
    ) -> [ChangeToken; 2] {
        self.region_and_sub_key_tokens(CheckedName::<R>::NAME, &sub.sub_key_text())
    }

    /// How many global expiries this registry has made: it moves by exactly one with each
    /// [`expire_global`](Self::expire_global) (unlike [`global_epoch`](Self::global_epoch),
    /// which region expiries move too), so a store can record only its low bits in each entry
    /// and know when they could come round again.
    ///
    /// It moves right after the global epoch: whoever reads a count reads a global epoch at
    /// least as new after it.
    ///
    /// ```
    /// use nearcache_regions::{Regions, region};
    ///
    /// region!(Catalog = "catalog");
    /// let regions = Regions::new();
    /// regions.expire_region_of::<Catalog>();
    /// assert_eq!(regions.clears(), 0);
    /// regions.expire_global();
    /// assert_eq!(regions.clears(), 1);
    /// ```
    #[inline]
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::Acquire)
    }

    /// Expires every entry (the global region). Returns the new epoch.
    pub fn expire_global(&self) -> u64 {
        self.expire_global_counted(1)
    }

    /// One global expiry that the clear count takes as `clears` of them in a row (at least
    /// one), for tests that need the count near some value without making billions of
    /// expiries. Returns the new epoch.
    ///
    /// A test hook (feature `test-util`), not part of the semver-stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn expire_global_as_many(&self, clears: u64) -> u64 {
        self.expire_global_counted(clears.max(1))
    }

    fn expire_global_counted(&self, clears: u64) -> u64 {
        let (old, epoch) = {
            let mut global = self.global.write();
            let epoch = self.bump();
            let old = std::mem::replace(&mut *global, ChangeToken::with_epoch(epoch));
            self.global_epoch.store(epoch, Ordering::Release);
            // After the epoch (see `clears`); under the lock, so counts move in epoch order.
            self.clears.fetch_add(clears, Ordering::AcqRel);
            (old, epoch)
        };
        old.expire();
        // Entries record the global epoch, not the token: a clear always kills entries.
        self.held_expiries.fetch_add(1, Ordering::Release);
        epoch
    }

    /// Expires every entry of region `R`. Returns the new epoch.
    pub fn expire_region_of<R: Region>(&self) -> u64 {
        self.expire_region_unchecked(CheckedName::<R>::NAME)
    }

    /// Expires every entry of the region named `name`, whether or not it was ever used here
    /// (a load that has not yet registered the region will still see the expiry). Returns the
    /// new epoch.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is not a valid region name; nothing is expired.
    pub fn expire_region(&self, name: &str) -> Result<u64, RegionNameError> {
        validate_region_name(name)?;
        Ok(self.expire_region_unchecked(name))
    }

    /// Expires the entries of region `R` tied to sub-key `sub`. Returns the new epoch.
    pub fn expire_region_key_of<R: Region>(&self, sub: &(impl SubKey + ?Sized)) -> u64 {
        self.expire_sub_key_unchecked(CheckedName::<R>::NAME, &sub.sub_key_text())
    }

    /// Expires the entries of region `name` tied to sub-key `sub` (spelled as the typed
    /// functions spell it: see [`SubKey`]). A sub-key nobody has used yet still gets a fresh
    /// token at the new epoch, so a load already running that ties itself to `sub`
    /// afterwards is not stored. Returns the new epoch.
    ///
    /// # Errors
    ///
    /// [`RegionNameError`] when `name` is not a valid region name; nothing is expired.
    pub fn expire_region_key(
        &self,
        name: &str,
        sub: &(impl SubKey + ?Sized),
    ) -> Result<u64, RegionNameError> {
        validate_region_name(name)?;
        Ok(self.expire_sub_key_unchecked(name, &sub.sub_key_text()))
    }

    /// Drops region and sub-key tokens that no entry holds any more; returns how many were
    /// dropped. Their epochs are folded into watermarks, so a later lookup creates a token no
    /// older than any dropped one (a load that spans both an expiry and a collection is
    /// refused, never wrongly stored).
    ///
    /// Cost: one pass over the maps under their *read* lock, which only finds candidates;
    /// they are then dropped in batches of 256 under the write lock, each re-checked
    /// there (a lookup may have handed the token out meanwhile). Lookups and expiries wait
    /// for one batch at most, never for the whole pass.
    pub fn collect_garbage(&self) -> usize {
        let candidates: Vec<(Box<str>, Option<Box<str>>)> = {
            let map = self.regions.read();
            let mut found = Vec::new();
            for (name, slot) in &map.slots {
                found.extend(
                    slot.sub_keys
                        .iter()
                        .filter(|(_, token)| token.handle_count() == 1)
                        .map(|(sub, _)| (name.clone(), Some(sub.clone()))),
                );
                if slot.token.handle_count() == 1 {
                    // Dropped only once its sub-keys are gone (checked under the write lock).
                    found.push((name.clone(), None));
                }
            }
            found
        };
        let mut dropped = 0;
        for batch in candidates.chunks(GC_BATCH) {
            let mut map = self.regions.write();
            let RegionMap { slots, watermark } = &mut *map;
            for (name, sub) in batch {
                let Some(slot) = slots.get_mut(name) else {
                    continue;
                };
                match sub {
                    Some(sub) => {
                        // Under the write lock nobody can take a handle from the map, and a
                        // token with one handle has no other holder to clone it from.
                        if let Some(token) = slot.sub_keys.get(sub)
                            && token.handle_count() == 1
                        {
                            slot.sub_watermark = slot.sub_watermark.max(token.epoch());
                            slot.sub_keys.remove(sub);
                            dropped += 1;
                        }
                    }
                    None => {
                        if slot.sub_keys.is_empty() && slot.token.handle_count() == 1 {
                            *watermark = (*watermark).max(slot.max_epoch());
                            slots.remove(name);
                            dropped += 1;
                        }
                    }
                }
            }
        }
        dropped
    }

    /// Number of regions with a token now (for monitoring and tests).
    pub fn region_count(&self) -> usize {
        self.regions.read().slots.len()
    }

    /// Number of sub-key tokens held now, over all regions (for monitoring and tests).
    pub fn sub_key_count(&self) -> usize {
        self.regions
            .read()
            .slots
            .values()
            .map(|slot| slot.sub_keys.len())
            .sum()
    }

    fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn region_token(&self, name: &str) -> ChangeToken {
        if let Some(slot) = self.regions.read().slots.get(name) {
            return slot.token.clone();
        }
        self.regions.write().slot_mut(name).token.clone()
    }

    fn sub_key_token(&self, name: &str, sub: &str) -> ChangeToken {
        if let Some(token) = self
            .regions
            .read()
            .slots
            .get(name)
            .and_then(|slot| slot.sub_keys.get(sub))
        {
            return token.clone();
        }
        let mut map = self.regions.write();
        let slot = map.slot_mut(name);
        let watermark = slot.sub_watermark;
        slot.sub_keys
            .entry(Box::from(sub))
            .or_insert_with(|| ChangeToken::with_epoch(watermark))
            .clone()
    }

    fn region_and_sub_key_tokens(&self, name: &str, sub: &str) -> [ChangeToken; 2] {
        if let Some(tokens) = self.regions.read().slots.get(name).and_then(|slot| {
            let sub_token = slot.sub_keys.get(sub)?;
            Some([slot.token.clone(), sub_token.clone()])
        }) {
            return tokens;
        }
        let mut map = self.regions.write();
        let slot = map.slot_mut(name);
        let watermark = slot.sub_watermark;
        let sub_token = slot
            .sub_keys
            .entry(Box::from(sub))
            .or_insert_with(|| ChangeToken::with_epoch(watermark))
            .clone();
        [slot.token.clone(), sub_token]
    }

    fn expire_region_unchecked(&self, name: &str) -> u64 {
        let (old, epoch) = {
            let mut map = self.regions.write();
            let epoch = self.bump();
            let slot = map.slot_mut(name);
            (
                std::mem::replace(&mut slot.token, ChangeToken::with_epoch(epoch)),
                epoch,
            )
        };
        self.expire_replaced(&old);
        epoch
    }

    fn expire_sub_key_unchecked(&self, name: &str, sub: &str) -> u64 {
        let (old, epoch) = {
            let mut map = self.regions.write();
            let epoch = self.bump();
            let slot = map.slot_mut(name);
            let old = slot
                .sub_keys
                .insert(Box::from(sub), ChangeToken::with_epoch(epoch));
            (old, epoch)
        };
        if let Some(old) = old {
            self.expire_replaced(&old);
        }
        epoch
    }

    /// Expires `old`, just replaced in the map, and counts the expiry if anything else holds
    /// the token. Checked after the flip: a holder can only come from another holder (the
    /// map no longer hands `old` out), so "no other handle" means no entry, stored or being
    /// stored, is tied to it, and no purge pass is needed for it.
    fn expire_replaced(&self, old: &ChangeToken) {
        old.expire();
        if old.handle_count() > 1 {
            // Release: a purger that reads the new count (acquire) also sees the flip.
            self.held_expiries.fetch_add(1, Ordering::Release);
        }
    }

    /// How many expiries so far flipped a token that some entry (or a load in progress)
    /// still held, plus every global expiry: the expiries that left dead entries behind.
    ///
    /// A purger remembers the count its last sweep started at; while it has not moved, no
    /// entry has died by a token since, and a requested sweep can be skipped. Expiring a
    /// sub-key or region nothing is tied to (the common case for fine-grained sub-keys)
    /// leaves it unchanged.
    pub fn held_expiries(&self) -> u64 {
        self.held_expiries.load(Ordering::Acquire)
    }
}

impl Default for Regions {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Regions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.regions.read();
        f.debug_struct("Regions")
            .field("epoch", &self.epoch())
            .field("regions", &map.slots.len())
            .field(
                "sub_keys",
                &map.slots.values().map(|s| s.sub_keys.len()).sum::<usize>(),
            )
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::region;

    region!(Catalog = "catalog"; Pricing = "pricing");

    #[test]
    fn expiring_a_region_flips_its_token_and_installs_a_newer_one() {
        let regions = Regions::new();
        let start = regions.epoch();
        let old = regions.token_of::<Catalog>();
        let other = regions.token_of::<Pricing>();
        let epoch = regions.expire_region_of::<Catalog>();
        assert!(old.is_expired());
        assert!(!other.is_expired(), "other regions are untouched");
        let new = regions.token_of::<Catalog>();
        assert!(!new.is_expired());
        assert_eq!(new.epoch(), epoch);
        assert!(
            Regions::is_stale(&new, start),
            "newer than a load that began before"
        );
        assert!(!Regions::is_stale(&new, epoch));
    }

    #[test]
    fn typed_and_named_access_reach_the_same_tokens() {
        let regions = Regions::new();
        let typed = regions.token_of::<Catalog>();
        assert!(typed.same_as(&regions.token("catalog").unwrap()));
        let sub = regions.key_token_of::<Catalog>("c1");
        assert!(sub.same_as(&regions.key_token("catalog", "c1").unwrap()));
        assert_eq!(regions.expire_region("catalog"), Ok(1));
        assert!(typed.is_expired());
        assert_eq!(regions.expire_region_key("catalog", "c1"), Ok(2));
        assert!(sub.is_expired());
    }

    #[test]
    fn bad_names_are_refused_and_expire_nothing() {
        let regions = Regions::new();
        assert_eq!(regions.expire_region(""), Err(RegionNameError::Empty));
        let long = "r".repeat(crate::MAX_REGION_NAME_LEN + 1);
        assert!(regions.expire_region_key(&long, "c1").is_err());
        assert!(regions.token("").is_err());
        assert!(regions.key_token("", "c1").is_err());
        assert_eq!(regions.epoch(), 0, "nothing was expired");
        assert_eq!(regions.region_count(), 0, "nothing was registered");
    }

    #[test]
    fn global_expiry_flips_the_global_token() {
        let regions = Regions::new();
        let global = regions.global();
        let epoch = regions.expire_global();
        assert!(global.is_expired());
        let fresh = regions.global();
        assert!(!fresh.is_expired());
        assert_eq!(fresh.epoch(), epoch);
        assert_eq!(
            regions.global_epoch(),
            epoch,
            "the lock-free epoch moved with it"
        );
        regions.expire_region("r").unwrap();
        assert_eq!(
            regions.global_epoch(),
            epoch,
            "only a global expiry moves it"
        );
    }

    #[test]
    fn sub_key_expiry_is_isolated_and_installs_unused_sub_keys() {
        let regions = Regions::new();
        let start = regions.epoch();
        let region = regions.token_of::<Catalog>();
        let c2 = regions.key_token_of::<Catalog>("c2");
        regions.expire_region_key_of::<Catalog>("c1");
        assert!(
            !region.is_expired(),
            "a sub-key expiry leaves the region token"
        );
        assert!(!c2.is_expired());
        let c1 = regions.key_token_of::<Catalog>("c1");
        assert!(
            Regions::is_stale(&c1, start),
            "a sub-key never used before still carries the expiry's epoch"
        );
    }

    #[test]
    fn region_and_key_tokens_come_as_a_pair() {
        let regions = Regions::new();
        let [region, sub] = regions.region_and_key_tokens_of::<Catalog>("c1");
        assert!(region.same_as(&regions.token_of::<Catalog>()));
        assert!(sub.same_as(&regions.key_token_of::<Catalog>("c1")));
        let [region_again, sub_again] = regions.region_and_key_tokens_of::<Catalog>("c1");
        assert!(region_again.same_as(&region) && sub_again.same_as(&sub));
    }

    #[test]
    fn garbage_collection_drops_unheld_tokens_and_keeps_held_ones() {
        let regions = Regions::new();
        let held = regions.key_token_of::<Catalog>("held");
        for i in 0..1_000 {
            drop(regions.key_token_of::<Catalog>(&format!("c{i}")));
        }
        drop(regions.token_of::<Pricing>());
        assert_eq!(regions.sub_key_count(), 1_001);
        assert_eq!(regions.region_count(), 2);
        let dropped = regions.collect_garbage();
        assert_eq!(
            dropped,
            1_000 + 1,
            "1,000 sub-keys and the unused Pricing region"
        );
        assert_eq!(regions.sub_key_count(), 1);
        assert_eq!(regions.region_count(), 1);
        assert!(held.same_as(&regions.key_token_of::<Catalog>("held")));
    }

    #[test]
    fn a_collected_expiry_still_refuses_loads_that_spanned_it() {
        let regions = Regions::new();
        let start = regions.epoch();
        // A sub-key expired while nobody holds it; the collection then forgets the token.
        regions.expire_region_key_of::<Catalog>("c1");
        regions.expire_region_of::<Pricing>();
        assert!(regions.collect_garbage() >= 2);
        assert_eq!(regions.sub_key_count(), 0);
        let c1 = regions.key_token_of::<Catalog>("c1");
        assert!(
            Regions::is_stale(&c1, start),
            "the watermark keeps the epoch"
        );
        let pricing = regions.token_of::<Pricing>();
        assert!(
            Regions::is_stale(&pricing, start),
            "the region watermark keeps it too"
        );
        // A load that began after the expiry is not refused.
        let later = regions.epoch();
        assert!(!Regions::is_stale(
            &regions.key_token_of::<Catalog>("c9"),
            later
        ));
    }

    #[test]
    fn only_expiries_of_held_tokens_count_as_leaving_dead_entries() {
        let regions = Regions::new();
        assert_eq!(regions.held_expiries(), 0);
        regions.expire_region_key_of::<Catalog>("never-used");
        let unheld = regions.key_token_of::<Catalog>("looked-up-then-dropped");
        drop(unheld);
        regions.expire_region_key_of::<Catalog>("looked-up-then-dropped");
        regions.expire_region_of::<Pricing>();
        assert_eq!(regions.held_expiries(), 0, "nothing held those tokens");

        let held = regions.key_token_of::<Catalog>("held");
        regions.expire_region_key_of::<Catalog>("held");
        assert!(held.is_expired());
        assert_eq!(regions.held_expiries(), 1);
        let region = regions.token_of::<Catalog>();
        regions.expire_region_of::<Catalog>();
        assert!(region.is_expired());
        assert_eq!(regions.held_expiries(), 2);
        regions.expire_global();
        assert_eq!(regions.held_expiries(), 3, "a clear always counts");
    }

    #[test]
    fn garbage_collection_in_batches_keeps_tokens_taken_meanwhile() {
        // More candidates than one batch, while other threads keep taking and dropping
        // tokens of the same sub-keys: every token still held afterwards is the registry's
        // current one (never dropped from under its holder).
        let regions = Regions::new();
        for i in 0..2_000 {
            drop(regions.key_token_of::<Catalog>(&format!("c{i}")));
        }
        let barrier = std::sync::Barrier::new(3);
        let kept: Vec<Vec<ChangeToken>> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..2)
                .map(|t| {
                    let (regions, barrier) = (&regions, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (0..2_000)
                            .filter(|i| i % 2 == t)
                            .map(|i| regions.key_token_of::<Catalog>(&format!("c{i}")))
                            .collect()
                    })
                })
                .collect();
            barrier.wait();
            regions.collect_garbage();
            takers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut still_current = 0;
        for (t, tokens) in kept.iter().enumerate() {
            for (n, token) in tokens.iter().enumerate() {
                let i = 2 * n + t;
                assert!(
                    token.same_as(&regions.key_token_of::<Catalog>(&format!("c{i}"))),
                    "sub-key c{i} was dropped while held"
                );
                still_current += 1;
            }
        }
        assert_eq!(still_current, 2_000);
        drop(kept);
        regions.collect_garbage();
        assert_eq!(regions.sub_key_count(), 0);
    }

    #[test]
    fn sub_key_map_stays_bounded_across_rounds() {
        let regions = Regions::new();
        for round in 0..20 {
            for i in 0..500 {
                let token = regions.key_token_of::<Catalog>(&format!("r{round}-{i}"));
                if i % 2 == 0 {
                    regions.expire_region_key_of::<Catalog>(&format!("r{round}-{i}"));
                }
                drop(token);
            }
            regions.collect_garbage();
            assert_eq!(regions.sub_key_count(), 0, "round {round}");
        }
    }

    #[test]
    fn concurrent_expiries_install_tokens_in_epoch_order() {
        for _ in 0..50 {
            let regions = Regions::new();
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..20 {
                            regions.expire_region_of::<Catalog>();
                            regions.expire_region_key_of::<Catalog>("c1");
                        }
                    });
                }
            });
            assert_eq!(regions.epoch(), 8 * 20 * 2);
            let last_sub = regions.key_token_of::<Catalog>("c1");
            let last_region = regions.token_of::<Catalog>();
            assert!(!last_sub.is_expired() && !last_region.is_expired());
            assert_eq!(
                last_sub.epoch().max(last_region.epoch()),
                regions.epoch(),
                "the latest install carries the latest epoch"
            );
        }
    }
}
