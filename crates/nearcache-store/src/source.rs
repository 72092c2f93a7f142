//! Where a get-or-create's value came from: [`Source`], returned with the value in
//! [`Loaded`] by the `_with_source` loaders, so a caller can tell an expired value (fail-safe,
//! soft timeout) from a fresh one.
//!
//! The loaders are generic over the shape of what they return; `Loaded<S>` is one more shape,
//! which records a [`Source`] beside the value: hits read as [`Source::Cached`], loaded
//! values as [`Source::Loaded`], and the few places that hand out an expired value mark it
//! (`Shape::served_as`). The other shapes ignore the mark, so the plain loaders pay nothing.

use nearcache_keys::Key;

use crate::error::TypeMismatch;
use crate::value::{Payload, Shape, Typed};

/// Where a value returned by a get-or-create came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A live entry of the store (a hit).
    Cached,
    /// A load that finished: this call's own, or one it joined.
    Loaded,
    /// The key's expired value, kept for fail-safe, standing in for a load that failed (an
    /// error, a panic) or ran past the hard timeout.
    FailSafe,
    /// The key's expired value, kept for fail-safe, served at the soft timeout while the
    /// load goes on.
    SoftTimeout,
}

impl Source {
    /// Whether the value is one whose time had run out (fail-safe or a soft timeout): never
    /// one that was invalidated, but possibly older than the source's current state.
    pub fn is_expired(self) -> bool {
        matches!(self, Source::FailSafe | Source::SoftTimeout)
    }
}

/// A get-or-create's value and where it came from (see [`Source`]).
///
/// ```
/// use std::sync::Arc;
/// use nearcache_keys::Key;
/// use nearcache_store::{Source, Store, StoreOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Store::new(StoreOptions::default())?;
/// let key = Key::from_text("k");
/// let first = store
///     .get_or_create_with_source(&key, async |_| Ok::<_, std::io::Error>(1_u8))
///     .await?;
/// assert_eq!((*first.value, first.source), (1, Source::Loaded));
/// let again = store
///     .get_or_create_with_source(&key, async |_| Ok::<_, std::io::Error>(2_u8))
///     .await?;
/// assert_eq!(again.source, Source::Cached);
/// assert!(Arc::ptr_eq(&first.value, &again.value) && !again.source.is_expired());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded<V> {
    /// The value, as the plain loader returns it.
    pub value: V,
    /// Where it came from.
    pub source: Source,
}

impl<S: Shape> Shape for Loaded<S> {
    type Loaded = S::Loaded;
    type Value = S::Value;

    #[inline]
    fn from_typed(typed: Typed<Self::Value>) -> Option<Result<Self, ()>> {
        Some(S::from_typed(typed)?.map(|value| Loaded {
            value,
            source: Source::Cached,
        }))
    }

    #[inline]
    fn hit(payload: &Payload) -> Option<Self> {
        S::hit(payload).map(|value| Loaded {
            value,
            source: Source::Cached,
        })
    }

    fn from_loaded(loaded: Self::Loaded) -> (Self, Payload) {
        let (value, payload) = S::from_loaded(loaded);
        let loaded = Loaded {
            value,
            source: Source::Loaded,
        };
        (loaded, payload)
    }

    #[inline]
    fn from_stored(payload: &Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Some(S::from_stored(payload, key)?.map(|value| Loaded {
            value,
            source: Source::Cached,
        }))
    }

    /// A flight's shared value: loaded (a waiter's; the fail-safe mark comes after).
    fn from_payload(payload: Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Some(S::from_payload(payload, key)?.map(|value| Loaded {
            value,
            source: Source::Loaded,
        }))
    }

    fn served_as(self, source: Source) -> Self {
        Loaded { source, ..self }
    }
}
