//! The store's errors: each says what happened and what to do about it.

use std::any::type_name;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use nearcache_keys::Key;
use thiserror::Error;

/// The impls every boxed error shares: it derefs to its details; `Debug` shows each of their
/// fields (all of them: a field added to the details and not listed here fails to compile)
/// under the error's own name; and it is an error with no source.
macro_rules! boxed_error_impls {
    ($error:ident($details:ident): $($field:ident),+) => {
        impl Deref for $error {
            type Target = $details;

            fn deref(&self) -> &$details {
                &self.0
            }
        }

        impl fmt::Debug for $error {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $details { $($field),+ } = &*self.0;
                f.debug_struct(stringify!($error))
                    $(.field(stringify!($field), $field))+
                    .finish()
            }
        }

        impl std::error::Error for $error {}
    };
}

/// A key was read as one type but holds a value of another.
///
/// Each key should hold one type; this usually means two call sites build the same key for
/// different data. Fix the keys (add the type or the method to them).
///
/// One pointer wide: what it says ([`TypeMismatchDetails`]: the key and both types, read
/// as `mismatch.key`, `mismatch.expected`, `mismatch.found`) is boxed, built only when a
/// mismatch happens. That keeps the `Result` of a hit (`Result<Option<Arc<T>>,
/// TypeMismatch>`) at two words, returned in registers instead of through memory.
#[derive(Clone, PartialEq, Eq)]
pub struct TypeMismatch(Box<TypeMismatchDetails>);

/// What a [`TypeMismatch`] says; its fields are read through the error (it derefs to this).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeMismatchDetails {
    /// The key that was read.
    pub key: Key,
    /// The type the caller asked for.
    pub expected: &'static str,
    /// The type the key holds (for a flight's error: the error type its factory returned).
    pub found: &'static str,
}

impl TypeMismatch {
    pub(crate) fn new<T: ?Sized>(key: &Key, found: &'static str) -> Self {
        TypeMismatch(Box::new(TypeMismatchDetails {
            key: key.clone(),
            expected: type_name::<T>(),
            found,
        }))
    }

    /// What it says, owned (the key and both types).
    pub fn into_details(self) -> TypeMismatchDetails {
        *self.0
    }
}

boxed_error_impls!(TypeMismatch(TypeMismatchDetails): key, expected, found);

/// How many bytes of a key an error message shows.
const SHOWN_KEY_BYTES: usize = 200;

/// `key`'s text, cut to at most [`SHOWN_KEY_BYTES`] on a character boundary, with an
/// ellipsis when cut.
struct Shown<'a>(&'a Key);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.as_str();
        let mut end = text.len().min(SHOWN_KEY_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let ellipsis = if end < text.len() { "…" } else { "" };
        write!(f, "{}{ellipsis}", &text[..end])
    }
}

impl fmt::Display for TypeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache key `{}` holds a `{}`, but a `{}` was requested; \
             give each type its own keys",
            Shown(&self.key),
            self.found,
            self.expected
        )
    }
}

/// A blocking get-or-create would have waited for a load that only this same thread can
/// drive — one an async caller leads on this thread, or an eager refresh with an async
/// factory started from it, when the thread runs a current-thread async runtime whose one
/// thread the blocking call holds — so the load could never finish. Nothing was loaded or
/// cached.
///
/// Call the async `get_or_create` from async code, or make the blocking call from a thread
/// outside the runtime (for tokio: `spawn_blocking`). On a multi-thread tokio runtime, with
/// this crate's `tokio` feature (on in the `nearcache` facade), a blocking wait first hands
/// the worker's other tasks off with `block_in_place`, so this does not happen there.
///
/// One pointer wide, like [`TypeMismatch`] (so that [`LoadError`] is two words): the key
/// is boxed and read through the error (`error.key`).
#[derive(Clone, PartialEq, Eq)]
pub struct WouldDeadlock(Box<WouldDeadlockDetails>);

/// What a [`WouldDeadlock`] says; read through the error (it derefs to this).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WouldDeadlockDetails {
    /// The key whose load was in progress.
    pub key: Key,
}

impl WouldDeadlock {
    pub(crate) fn new(key: &Key) -> Self {
        WouldDeadlock(Box::new(WouldDeadlockDetails { key: key.clone() }))
    }

    /// What it says, owned.
    pub fn into_details(self) -> WouldDeadlockDetails {
        *self.0
    }
}

boxed_error_impls!(WouldDeadlock(WouldDeadlockDetails): key);

impl fmt::Display for WouldDeadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a blocking get-or-create of `{}` would wait for a load led by an async task on \
             this same thread, which could then never run; use the async get_or_create, or \
             call the blocking one outside the async runtime (e.g. in spawn_blocking)",
            Shown(&self.key)
        )
    }
}

/// A caller waited `hard_timeout` for its load and stopped, with no expired value to serve
/// instead. The factory was cancelled (its future dropped; nothing cached) or, with
/// `OnHardTimeout::Background` for a detached load or a blocking factory, goes on and stores
/// its value when it comes.
///
/// Raise `hard_timeout` if the source is merely slow, or turn on fail-safe
/// (`fail_safe_max_duration`) so callers get the last value while the source struggles.
///
/// One pointer wide, like [`TypeMismatch`] (so that [`LoadError`] is two words): its
/// fields are boxed and read through the error (`error.key`, `error.after`).
#[derive(Clone, PartialEq, Eq)]
pub struct FactoryTimeout(Box<FactoryTimeoutDetails>);

/// What a [`FactoryTimeout`] says; read through the error (it derefs to this).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FactoryTimeoutDetails {
    /// The key being loaded.
    pub key: Key,
    /// The limit it ran past.
    pub after: std::time::Duration,
}

impl FactoryTimeout {
    pub(crate) fn new(key: &Key, after: std::time::Duration) -> Self {
        FactoryTimeout(Box::new(FactoryTimeoutDetails {
            key: key.clone(),
            after,
        }))
    }

    /// What it says, owned.
    pub fn into_details(self) -> FactoryTimeoutDetails {
        *self.0
    }
}

boxed_error_impls!(FactoryTimeout(FactoryTimeoutDetails): key, after);

impl fmt::Display for FactoryTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the factory of `{}` did not finish within hard_timeout ({:?}); \
             raise hard_timeout, or set fail_safe_max_duration to serve the expired value meanwhile",
            Shown(&self.key),
            self.after
        )
    }
}

/// Why a get-or-create call returned no value.
///
/// Displays as, and has the source of, the factory's error for [`LoadError::Factory`].
#[non_exhaustive]
pub enum LoadError<E> {
    /// The factory failed. Every caller that joined this flight gets this same `Arc`
    /// (`Arc::ptr_eq`); nothing was cached, so the next call runs the factory again.
    Factory(Arc<E>),
    /// The key holds (or the flight produced) a value of another type.
    TypeMismatch(TypeMismatch),
    /// A blocking call on an async runtime's thread would have waited for a load only that
    /// thread could run; see [`WouldDeadlock`].
    WouldDeadlock(WouldDeadlock),
    /// The load ran past `hard_timeout` and no fail-safe value could stand in: the callers
    /// waiting for it stop with this. See [`FactoryTimeout`].
    Timeout(FactoryTimeout),
}

impl<E> LoadError<E> {
    /// The factory's error, if that is what this is.
    pub fn factory_error(&self) -> Option<&Arc<E>> {
        match self {
            LoadError::Factory(error) => Some(error),
            LoadError::TypeMismatch(_) | LoadError::WouldDeadlock(_) | LoadError::Timeout(_) => {
                None
            }
        }
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Factory(error) => LoadError::Factory(Arc::clone(error)),
            LoadError::TypeMismatch(mismatch) => LoadError::TypeMismatch(mismatch.clone()),
            LoadError::WouldDeadlock(error) => LoadError::WouldDeadlock(error.clone()),
            LoadError::Timeout(error) => LoadError::Timeout(error.clone()),
        }
    }
}

impl<E> From<TypeMismatch> for LoadError<E> {
    fn from(mismatch: TypeMismatch) -> Self {
        LoadError::TypeMismatch(mismatch)
    }
}

impl<E: fmt::Debug> fmt::Debug for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Factory(error) => f.debug_tuple("Factory").field(error).finish(),
            LoadError::TypeMismatch(mismatch) => {
                f.debug_tuple("TypeMismatch").field(mismatch).finish()
            }
            LoadError::WouldDeadlock(error) => f.debug_tuple("WouldDeadlock").field(error).finish(),
            LoadError::Timeout(error) => f.debug_tuple("Timeout").field(error).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Factory(error) => fmt::Display::fmt(error, f),
            LoadError::TypeMismatch(mismatch) => fmt::Display::fmt(mismatch, f),
            LoadError::WouldDeadlock(error) => fmt::Display::fmt(error, f),
            LoadError::Timeout(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the factory's error is displayed, so point past it.
            LoadError::Factory(error) => error.source(),
            LoadError::TypeMismatch(_) | LoadError::WouldDeadlock(_) | LoadError::Timeout(_) => {
                None
            }
        }
    }
}

/// [`StoreOptions`](crate::StoreOptions) that cannot make a working store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// `max_capacity` is 0 (and no `max_weight` is set): such a store could hold nothing.
    #[error(
        "max_capacity is 0, so nothing could be cached; set a capacity of at least 1, \
         or enabled = false for a pass-through"
    )]
    ZeroCapacity,
    /// `max_weight` is `Some(0)`.
    #[error(
        "max_weight is 0, so nothing could be cached; set a budget of at least 1, \
         or leave it unset to bound by max_capacity"
    )]
    ZeroWeight,
    /// `purge_interval` is zero: the purger would never rest.
    #[error("purge_interval is 0; use at least a millisecond (the default is 60 s)")]
    ZeroPurgeInterval,
    /// `shards` is `Some(0)`.
    #[error("shards is 0; leave it unset for the default or use at least 1")]
    ZeroShards,
    /// `hard_timeout` is zero: every load would time out.
    #[error("hard_timeout is 0, so every load would time out; leave it unset or use at least 1 ms")]
    ZeroHardTimeout,
    /// `hard_timeout` or `soft_timeout` is set but the store was built without its `tokio`
    /// feature (timeouts run on tokio's timers).
    #[error(
        "hard_timeout and soft_timeout need nearcache-store's `tokio` feature (on in the \
         nearcache facade); turn the feature on or leave them unset"
    )]
    TimeoutsNeedTokio,
    /// `soft_timeout` is zero: every load with an expired value would be answered with it
    /// at once.
    #[error(
        "soft_timeout is 0, so callers would never wait for a load while an expired value is \
         kept; leave it unset or use at least 1 ms"
    )]
    ZeroSoftTimeout,
    /// `soft_timeout` is not shorter than `hard_timeout`, so it could never fire.
    #[error(
        "soft_timeout ({soft:?}) is not shorter than hard_timeout ({hard:?}), so it would \
         never fire; make it shorter or leave it unset"
    )]
    SoftTimeoutNotShorter {
        /// The soft timeout given.
        soft: std::time::Duration,
        /// The hard timeout given.
        hard: std::time::Duration,
    },
    /// `eager_refresh_threshold` is not a fraction strictly between 0 and 1.
    #[error(
        "eager_refresh_threshold is {threshold}; use a fraction of the time to live strictly \
         between 0 and 1 (e.g. 0.8: refresh after 80 % of it), or leave it unset"
    )]
    EagerRefreshThreshold {
        /// The value given.
        threshold: f64,
    },
    /// The underlying cache refused the options.
    #[error("the underlying cache refused the options: {0}")]
    Cache(String),
    /// The background purger thread could not be started (the process is out of threads
    /// or memory).
    #[error("could not start the purger thread; the process may be out of threads or memory")]
    PurgerThread(#[source] std::io::Error),
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("backend down")]
    struct Backend(#[source] std::io::Error);

    #[test]
    fn factory_errors_display_transparently() {
        let error: LoadError<Backend> =
            LoadError::Factory(Arc::new(Backend(std::io::Error::other("socket"))));
        assert_eq!(error.to_string(), "backend down");
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("socket"));
        assert!(error.clone().factory_error().is_some());
    }

    #[test]
    fn errors_and_the_results_of_hits_are_two_words_at_most() {
        // Returned in registers, not through memory, on every hit.
        let word = std::mem::size_of::<usize>();
        assert_eq!(std::mem::size_of::<TypeMismatch>(), word);
        assert_eq!(std::mem::size_of::<LoadError<Backend>>(), 2 * word);
        assert_eq!(
            std::mem::size_of::<Result<Option<Arc<u8>>, TypeMismatch>>(),
            2 * word
        );
        assert_eq!(
            std::mem::size_of::<Result<Arc<u8>, LoadError<Backend>>>(),
            2 * word
        );
    }

    #[test]
    fn debug_shows_every_detail_under_the_errors_name() {
        let key = Key::from_text("k");
        assert_eq!(
            format!("{:?}", TypeMismatch::new::<u32>(&key, "String")),
            r#"TypeMismatch { key: "k", expected: "u32", found: "String" }"#
        );
        assert_eq!(
            format!("{:?}", WouldDeadlock::new(&key)),
            r#"WouldDeadlock { key: "k" }"#
        );
        let timeout = FactoryTimeout::new(&key, std::time::Duration::from_millis(5));
        assert_eq!(
            format!("{timeout:?}"),
            r#"FactoryTimeout { key: "k", after: 5ms }"#
        );
    }

    #[test]
    fn details_read_through_the_error_and_come_out_owned() {
        let key = Key::from_text("k");
        let mismatch = TypeMismatch::new::<u32>(&key, "alloc::string::String");
        assert_eq!(
            (mismatch.expected, mismatch.found),
            ("u32", "alloc::string::String")
        );
        assert_eq!(mismatch.clone().into_details().key, key);
        assert!(format!("{mismatch:?}").starts_with("TypeMismatch { key: "));
        let timeout = FactoryTimeout::new(&key, std::time::Duration::from_millis(5));
        assert_eq!(timeout.after, std::time::Duration::from_millis(5));
        assert_eq!(timeout.into_details().key, key);
        assert_eq!(WouldDeadlock::new(&key).into_details().key, key);
    }

    #[test]
    fn mismatch_names_both_types_and_shortens_huge_keys() {
        let key = Key::from_text("é".repeat(1000));
        let mismatch = TypeMismatch::new::<u32>(&key, "alloc::string::String");
        let text = mismatch.to_string();
        assert!(text.contains("u32") && text.contains("String"), "{text}");
        assert!(
            text.len() < 400,
            "the key is shortened: {} bytes",
            text.len()
        );
        assert!(text.contains('…'));
        let error: LoadError<Backend> = mismatch.into();
        assert!(error.factory_error().is_none());
        assert!(std::error::Error::source(&error).is_none());
    }
}
