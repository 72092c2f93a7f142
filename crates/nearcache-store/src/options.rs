//! [`StoreOptions`]: what one store is configured with, its defaults, and their validation.
//!
//! The one definition of the store's settings: the `nearcache` facade embeds this struct in
//! its own options (flattened, so a config file names these keys at its top level) instead of
//! copying them. Serde reads durations as human text (`"15m"`, `"250ms"`); every field has a
//! default, so a config file names only what it changes; an unknown field is an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::OptionsError;

/// Options of one [`Store`](crate::Store).
///
/// ```
/// use std::time::Duration;
/// use nearcache_store::StoreOptions;
///
/// let options = StoreOptions {
///     time_to_idle: Some(Duration::from_secs(15 * 60)),
///     max_capacity: 50_000,
///     ..StoreOptions::default()
/// };
/// assert!(options.enabled && options.cache_none);
///
/// // The same from a config file (the former .NET names are read too):
/// let read: StoreOptions = toml::from_str("sliding_expiration = \"15m\"\nmax_capacity = 50000").unwrap();
/// assert_eq!(read, options);
/// ```
///
/// # Capacity and the weight budget
///
/// By default the store holds at most [`max_capacity`](Self::max_capacity) entries. With
/// [`max_weight`](Self::max_weight) set it holds entries up to that total weight instead;
/// each entry weighs what its factory sets with [`EntryOptions::weight`](crate::EntryOptions::weight)
/// (default 1, minimum 1), and `max_capacity` only sizes internal tables (the expected number
/// of entries).
///
/// The budget is split evenly over the store's shards, and one entry must fit in one shard's
/// share (97 % of it, the share quick_cache admits as "hot"). A heavier entry is returned to its
/// caller but not stored, counted in
/// [`inserts_rejected_too_heavy`](crate::StoreStats::inserts_rejected_too_heavy) and logged;
/// [`Store::max_entry_weight`](crate::Store::max_entry_weight) tells the limit. If entries can be
/// a large fraction of the budget, set fewer [`shards`](Self::shards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// `false` turns the store into a pass-through: every get-or-create runs its factory,
    /// nothing is stored, and reads miss (the facade still publishes invalidations, so peers
    /// stay coherent). Default `true`.
    pub enabled: bool,
    /// Time to live (absolute expiration, from insertion) for entries whose factory sets
    /// none. Zero means such entries are never stored; `Duration::MAX` (or any overflowing
    /// value) means never. Default: none. Also read as `absolute_expiration`, its former name.
    #[serde(with = "humantime_serde", alias = "absolute_expiration")]
    pub time_to_live: Option<Duration>,
    /// Time to idle (sliding expiration) for entries whose factory sets none: an entry not
    /// read for this long expires (each read restarts it, with 1 ms resolution). Zero means
    /// such entries are never stored. Default: none. Also read as `sliding_expiration`, its
    /// former name.
    #[serde(with = "humantime_serde", alias = "sliding_expiration")]
    pub time_to_idle: Option<Duration>,
    /// Most entries held at once (when `max_weight` is unset); the expected number of entries
    /// otherwise. Must be at least 1. Default 10,000.
    pub max_capacity: u64,
    /// A weight budget instead of an entry count: entries weigh what their factory says
    /// (default 1). Must be at least 1. Default: none.
    pub max_weight: Option<u64>,
    /// Whether a factory's `Ok(None)` is stored as a negative entry by the `_optional`
    /// loaders. Default `true`.
    pub cache_none: bool,
    /// How often the background purger sweeps out time-expired entries (token expiries wake
    /// it at once). Must not be zero. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// Number of shards of the underlying cache, rounded up to a power of two; quick_cache
    /// may use fewer so each shard holds at least 32 entries. Fewer shards let heavier
    /// entries fit a weight budget; more spread contention. Not zero. Default: none
    /// (4 × cores).
    pub shards: Option<usize>,
    /// Whether keys appear as they are in log events and spans. Keys may hold personal data,
    /// so by default they show as `#` and 16 hex digits of
    /// [`stable_key_hash`](crate::stable_key_hash) (the same key gives the same hash on every
    /// instance). Default `false`.
    pub log_keys: bool,
    /// Fail-safe: how long entries that expire by time are kept past their expiry, unless
    /// their factory sets [`EntryOptions::fail_safe_max_duration`](crate::EntryOptions::fail_safe_max_duration):
    /// if a get-or-create then finds the entry expired and its factory fails (an error, a
    /// panic, a hard timeout), the callers get the expired value instead of the error. Kept
    /// entries are never returned by reads, still count against the capacity, and are
    /// dropped for good by any invalidation. Default: none (fail-safe off).
    #[serde(with = "humantime_serde")]
    pub fail_safe_max_duration: Option<Duration>,
    /// How long an expired value served by fail-safe is served again (as a live entry)
    /// before the factory is tried again, so a failing source is not called by every
    /// caller. Zero: the factory is tried on every call. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub fail_safe_throttle: Duration,
    /// Longest a get-or-create waits for its load (feature `tokio`). Past it the caller gets
    /// the fail-safe value when there is one, else [`LoadError::Timeout`](crate::LoadError::Timeout),
    /// and the factory is cancelled or left to finish per
    /// [`hard_timeout_action`](Self::hard_timeout_action). An async caller running its
    /// factory in place cancels it (its future is dropped); a blocking caller running its
    /// factory in place is not timed (nothing can stop a blocking function from outside),
    /// but callers waiting for its load are. Async callers need a tokio runtime with its time
    /// driver. Not zero. Default: none.
    #[serde(with = "humantime_serde")]
    pub hard_timeout: Option<Duration>,
    /// Eager refresh: once this fraction of an entry's absolute time to live has passed
    /// (0.8: after 48 s of a minute), the first read of it through
    /// [`Store::get_or_create_detached`](crate::Store::get_or_create_detached) (or its
    /// blocking twin) starts one background reload through the key's single flight, while
    /// callers keep getting the current value. Needs the `tokio` feature and a store built
    /// inside a tokio runtime (its handle runs the reload); without one nothing is refreshed
    /// early (logged once). Strictly between 0 and 1. Default: none.
    pub eager_refresh_threshold: Option<f64>,
    /// Soft timeout: when the key's expired value is kept for fail-safe and the load has
    /// not finished within this long, a caller that is not running the factory itself gets
    /// that value while the load goes on and stores its result (unless an invalidation
    /// overlapped it). The detached loaders always run their factory elsewhere when a
    /// timeout is set, so their callers always can; a caller of the other loaders that leads
    /// the load runs its factory in place and waits for it. Without a kept value callers wait
    /// (up to the hard timeout). Per entry: [`EntryOptions::soft_timeout`](crate::EntryOptions::soft_timeout).
    /// Feature `tokio`, not zero, shorter than `hard_timeout`. Default: none.
    #[serde(with = "humantime_serde")]
    pub soft_timeout: Option<Duration>,
    /// What happens to a factory still running at the hard timeout (its callers get the
    /// fail-safe value or [`LoadError::Timeout`](crate::LoadError::Timeout) either way).
    /// Default [`OnHardTimeout::Cancel`].
    pub hard_timeout_action: OnHardTimeout,
}

/// What happens to a factory still running at `hard_timeout`. Its callers stop waiting
/// either way: they get the fail-safe value, else [`LoadError::Timeout`](crate::LoadError::Timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnHardTimeout {
    /// The factory is cancelled (an async factory's future is dropped) and nothing is
    /// stored. A blocking factory cannot be stopped from outside: it finishes and its value
    /// is stored as with `Background`.
    #[default]
    Cancel,
    /// The factory goes on and its value is stored when it comes, unless an invalidation
    /// overlapped the load. Only a factory that can outlive its caller can go on: the
    /// detached loaders'. A load led by a caller of the other loaders is cancelled (logged
    /// once per store).
    Background,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            enabled: true,
            time_to_live: None,
            time_to_idle: None,
            max_capacity: 10_000,
            max_weight: None,
            cache_none: true,
            purge_interval: Duration::from_secs(60),
            shards: None,
            log_keys: false,
            fail_safe_max_duration: None,
            fail_safe_throttle: Duration::from_secs(30),
            hard_timeout: None,
            eager_refresh_threshold: None,
            soft_timeout: None,
            hard_timeout_action: OnHardTimeout::Cancel,
        }
    }
}

/// The capacity the underlying cache is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    /// Total weight the cache holds.
    pub(crate) weight_capacity: u64,
    /// Expected number of entries.
    pub(crate) estimated_entries: usize,
    /// Whether entries carry their own weight (else each weighs 1).
    pub(crate) weighted: bool,
}

impl StoreOptions {
    /// Checks the options and works out the cache's sizing.
    pub(crate) fn sizing(&self) -> Result<Sizing, OptionsError> {
        if self.purge_interval.is_zero() {
            return Err(OptionsError::ZeroPurgeInterval);
        }
        if self.shards == Some(0) {
            return Err(OptionsError::ZeroShards);
        }
        if self.hard_timeout.is_some_and(|t| t.is_zero()) {
            return Err(OptionsError::ZeroHardTimeout);
        }
        if self.hard_timeout.is_some() && !cfg!(feature = "tokio") {
            return Err(OptionsError::TimeoutsNeedTokio);
        }
        if self.soft_timeout.is_some_and(|t| t.is_zero()) {
            return Err(OptionsError::ZeroSoftTimeout);
        }
        if self.soft_timeout.is_some() && !cfg!(feature = "tokio") {
            return Err(OptionsError::TimeoutsNeedTokio);
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout)
            && soft >= hard
        {
            return Err(OptionsError::SoftTimeoutNotShorter { soft, hard });
        }
        if let Some(threshold) = self.eager_refresh_threshold
            && !(threshold > 0.0 && threshold < 1.0)
        {
            return Err(OptionsError::EagerRefreshThreshold { threshold });
        }
        if !self.enabled {
            // A pass-through stores nothing; keep a minimal table.
            return Ok(Sizing {
                weight_capacity: 1,
                estimated_entries: 1,
                weighted: false,
            });
        }
        let estimated_entries = usize::try_from(self.max_capacity.max(1)).unwrap_or(usize::MAX);
        match self.max_weight {
            Some(0) => Err(OptionsError::ZeroWeight),
            Some(budget) => Ok(Sizing {
                weight_capacity: budget,
                estimated_entries,
                weighted: true,
            }),
            None if self.max_capacity == 0 => Err(OptionsError::ZeroCapacity),
            None => Ok(Sizing {
                weight_capacity: self.max_capacity,
                estimated_entries,
                weighted: false,
            }),
        }
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The default options with `change` applied.
    fn defaults_but(change: impl FnOnce(&mut StoreOptions)) -> StoreOptions {
        let mut options = StoreOptions::default();
        change(&mut options);
        options
    }

    /// Asserts that `options` are refused with an error that `is` accepts and whose text
    /// says `says`.
    fn assert_refused(options: &StoreOptions, is: fn(&OptionsError) -> bool, says: &str) {
        match options.sizing() {
            Err(error) => {
                assert!(is(&error), "{options:?}: {error:?}");
                assert!(error.to_string().contains(says), "{error}");
            }
            Ok(sizing) => panic!("{options:?} accepted as {sizing:?}"),
        }
    }

    #[test]
    fn defaults_are_a_bounded_enabled_store() {
        let options = StoreOptions::default();
        assert!(options.enabled && options.cache_none);
        assert_eq!(
            options.sizing().ok(),
            Some(Sizing {
                weight_capacity: 10_000,
                estimated_entries: 10_000,
                weighted: false
            })
        );
    }

    #[test]
    fn zero_values_are_refused_with_the_fix_in_the_message() {
        let zero_capacity = defaults_but(|o| o.max_capacity = 0);
        let error = zero_capacity.sizing().err();
        assert!(matches!(error, Some(OptionsError::ZeroCapacity)));
        assert!(error.is_some_and(|e| e.to_string().contains("enabled = false")));

        type Spoil = fn(&mut StoreOptions);
        type Expected = fn(&OptionsError) -> bool;
        let cases: [(Spoil, Expected); 4] = [
            (
                |o| o.max_weight = Some(0),
                |e| matches!(e, OptionsError::ZeroWeight),
            ),
            (
                |o| o.purge_interval = Duration::ZERO,
                |e| matches!(e, OptionsError::ZeroPurgeInterval),
            ),
            (
                |o| o.shards = Some(0),
                |e| matches!(e, OptionsError::ZeroShards),
            ),
            (
                |o| o.hard_timeout = Some(Duration::ZERO),
                |e| matches!(e, OptionsError::ZeroHardTimeout),
            ),
        ];
        for (spoil, expected) in cases {
            let options = defaults_but(spoil);
            let error = options.sizing().err();
            assert!(
                error.as_ref().is_some_and(expected),
                "{options:?}: {error:?}"
            );
        }
    }

    #[test]
    fn an_eager_refresh_threshold_must_be_a_fraction_strictly_between_0_and_1() {
        for bad in [0.0, 1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert_refused(
                &defaults_but(|o| o.eager_refresh_threshold = Some(bad)),
                |e| matches!(e, OptionsError::EagerRefreshThreshold { .. }),
                "between 0 and 1",
            );
        }
        let fine = defaults_but(|o| o.eager_refresh_threshold = Some(0.8));
        assert!(fine.sizing().is_ok());
    }

    #[test]
    fn a_soft_timeout_must_be_nonzero_and_shorter_than_the_hard_timeout() {
        let timeouts = |soft, hard| {
            defaults_but(|o| {
                o.soft_timeout = Some(soft);
                o.hard_timeout = hard;
            })
        };
        let zero = timeouts(Duration::ZERO, None);
        assert!(matches!(zero.sizing(), Err(OptionsError::ZeroSoftTimeout)));
        let two_seconds = Duration::from_secs(2);
        assert_refused(
            &timeouts(two_seconds, Some(two_seconds)),
            |e| matches!(e, OptionsError::SoftTimeoutNotShorter { .. }),
            "shorter",
        );
        let fine = timeouts(Duration::from_millis(100), Some(two_seconds));
        assert_eq!(fine.sizing().is_ok(), cfg!(feature = "tokio"));
    }

    #[test]
    fn a_hard_timeout_needs_the_tokio_feature() {
        let options = defaults_but(|o| o.hard_timeout = Some(Duration::from_secs(1)));
        if cfg!(feature = "tokio") {
            assert!(options.sizing().is_ok());
        } else {
            assert!(matches!(
                options.sizing(),
                Err(OptionsError::TimeoutsNeedTokio)
            ));
        }
    }

    #[test]
    fn a_weight_budget_replaces_the_entry_count() {
        let options = defaults_but(|o| {
            o.max_weight = Some(1 << 20);
            o.max_capacity = 0;
        });
        let sizing = options.sizing().ok();
        assert_eq!(
            sizing,
            Some(Sizing {
                weight_capacity: 1 << 20,
                estimated_entries: 1,
                weighted: true
            }),
            "with a budget, max_capacity is only a sizing hint (zero is allowed)"
        );
    }

    #[test]
    fn config_files_read_human_durations_and_the_former_expiry_names() {
        let options: StoreOptions = toml::from_str(
            "absolute_expiration = \"1h 30m\"\nsliding_expiration = \"15m\"\nshards = 8\n\
             purge_interval = \"250ms\"\nfail_safe_max_duration = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(
            options,
            StoreOptions {
                time_to_live: Some(Duration::from_secs(5400)),
                time_to_idle: Some(Duration::from_secs(900)),
                shards: Some(8),
                purge_interval: Duration::from_millis(250),
                fail_safe_max_duration: Some(Duration::from_secs(7200)),
                ..StoreOptions::default()
            }
        );
        // One option under both names is refused, not silently resolved.
        let both =
            toml::from_str::<StoreOptions>("time_to_idle = \"1m\"\nsliding_expiration = \"2m\"\n");
        assert!(both.is_err_and(|e| e.to_string().contains("duplicate field")));
        // A misspelt option fails loudly.
        let misspelt = toml::from_str::<StoreOptions>("max_capacty = 5").unwrap_err();
        assert!(misspelt.to_string().contains("max_capacty"), "{misspelt}");
        // Written out, only the current names appear, and they read back the same.
        let text = toml::to_string(&options).unwrap();
        assert!(
            text.contains("time_to_idle") && !text.contains("sliding"),
            "{text}"
        );
        assert_eq!(toml::from_str::<StoreOptions>(&text).unwrap(), options);
        let json: StoreOptions =
            serde_json::from_str(&serde_json::to_string(&options).unwrap()).unwrap();
        assert_eq!(json, options);
    }

    #[test]
    fn a_disabled_store_needs_no_capacity() {
        let options = defaults_but(|o| {
            o.enabled = false;
            o.max_capacity = 0;
        });
        assert!(options.sizing().is_ok());
    }
}
