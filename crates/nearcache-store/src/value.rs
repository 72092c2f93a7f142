//! Type-erased values: how a store holds values of any type, and how a caller gets its own
//! type back (or a [`TypeMismatch`], never a panic or a silent miss).

use std::any::{TypeId, type_name};
use std::sync::Arc;

use nearcache_keys::Key;

use crate::error::TypeMismatch;

// The store's only `unsafe` code: the erased `Arc` whose type check on a hit is a comparison
// in place, not a virtual call.
#[allow(unsafe_code)]
mod erased;

use erased::ErasedArc;

/// What an entry or a flight holds: a value, or a cached "nothing" (negative entry).
///
/// 16 bytes (an erased `Arc`: its data pointer and its type's descriptor, nothing else): it
/// is inline in every stored entry, so its size is paid per entry. A negative entry holds a
/// [`Nothing`] marker, a type no caller can name, so a read of `T` tells a value from a
/// negative entry with the `TypeId` comparison its read makes anyway. The type's name, for
/// error messages only, comes from the descriptor (or the marker), not from a field.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    /// An `Arc<T>` (or an `Arc<Nothing>`: a factory's `Ok(None)`), erased.
    value: ErasedArc,
}

/// The marker a negative entry holds: which `T` it is a `None` of (negative entries are rare,
/// so their type lives in their own allocation, not in every entry).
struct Nothing {
    of: TypeId,
    name: &'static str,
}

/// What a stored payload is to a reader of `T`. Two words at most (returned in registers
/// on the hit path): the names of other types, for errors, are read again on the cold path.
pub(crate) enum Typed<T> {
    /// A `T`: the caller's own `Arc` (one reference count).
    Value(Arc<T>),
    /// A cached `None` of `T`.
    Nothing,
    /// A cached `None` of another type.
    NothingElse,
    /// A value of another type.
    Other,
}

impl Payload {
    pub(crate) fn value<T: Send + Sync + 'static>(value: Arc<T>) -> Self {
        Payload {
            value: ErasedArc::new(value),
        }
    }

    pub(crate) fn nothing<T: 'static>() -> Self {
        Payload {
            value: ErasedArc::new(Arc::new(Nothing {
                of: TypeId::of::<T>(),
                name: type_name::<T>(),
            })),
        }
    }

    /// Whether this is a negative entry.
    pub(crate) fn is_nothing(&self) -> bool {
        self.marker().is_some()
    }

    fn marker(&self) -> Option<&Nothing> {
        self.value.downcast_ref::<Nothing>()
    }

    /// The payload as a `T`, read in place: the hit path. A value costs one `TypeId`
    /// comparison (in place, no call) and one reference count; anything else is sorted out
    /// on a cold path.
    #[inline(always)]
    pub(crate) fn read<T: Send + Sync + 'static>(&self) -> Typed<T> {
        match self.value.get::<T>() {
            Some(value) => Typed::Value(value),
            None => self.read_other::<T>(),
        }
    }

    /// The payload's value if it is a `T`, read in place: the hit path of `get` and of the
    /// loaders. Anything else (a cached `None`, another type) is `None`, for the caller to
    /// sort out on its cold path; the common case costs one `TypeId` comparison (in place,
    /// no call) and one reference count, with no enum of the other cases to carry.
    #[inline(always)]
    pub(crate) fn value_of<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.value.get::<T>()
    }

    #[cold]
    #[inline(never)]
    fn read_other<T: 'static>(&self) -> Typed<T> {
        match self.marker() {
            Some(nothing) if nothing.of == TypeId::of::<T>() => Typed::Nothing,
            Some(_) => Typed::NothingElse,
            None => Typed::Other,
        }
    }

    /// The name of the type this holds (of a negative entry: the type it is a `None` of).
    pub(crate) fn type_name(&self) -> &'static str {
        match self.marker() {
            Some(nothing) => nothing.name,
            None => self.value.type_name(),
        }
    }

    /// The payload as a `T`: `Ok(Some)` for a value, `Ok(None)` for a negative entry of `T`.
    ///
    /// # Errors
    ///
    /// [`TypeMismatch`] when it holds another type.
    #[inline]
    pub(crate) fn downcast<T: Send + Sync + 'static>(
        &self,
        key: &Key,
    ) -> Result<Option<Arc<T>>, TypeMismatch> {
        match self.read::<T>() {
            Typed::Value(value) => Ok(Some(value)),
            Typed::Nothing => Ok(None),
            Typed::NothingElse | Typed::Other => Err(mismatch::<T>(key, self.type_name())),
        }
    }
}

/// The error of a read of `T` that found `found`: out of line, so that the hit path that
/// returns it stays small.
#[cold]
#[inline(never)]
pub(crate) fn mismatch<T: ?Sized>(key: &Key, found: &'static str) -> TypeMismatch {
    TypeMismatch::new::<T>(key, found)
}

/// The two shapes a get-or-create caller asks for: `Arc<T>` (plain loaders) and
/// `Option<Arc<T>>` (`_optional` loaders).
pub(crate) trait Shape: Sized {
    /// What the factory returns on success.
    type Loaded;

    /// The type of the values stored (`T` for both shapes).
    type Value: Send + Sync + 'static;

    /// What a hit's [`Typed`] read means to this shape: `None` when this shape cannot use it
    /// (the caller loads as on a miss), `Some(Err(()))` for a type mismatch.
    fn from_typed(typed: Typed<Self::Value>) -> Option<Result<Self, ()>>;

    /// The stored payload as this shape when it is one this shape returns as is (a value; for
    /// `Option<Arc<T>>` also a cached `None` of `T`), read in place: the loaders' hit path.
    /// `None` for everything else (a cached `None` a plain caller cannot use, another type),
    /// which the caller's load path sorts out.
    fn hit(payload: &Payload) -> Option<Self>;

    /// Wraps a factory's value: what the leader returns, and what the flight shares.
    fn from_loaded(loaded: Self::Loaded) -> (Self, Payload);

    /// Reads a stored or shared payload in place (cloning only the value's `Arc`). `None`:
    /// this shape cannot use it (a plain caller meeting a negative entry), so the caller
    /// loads as on a miss.
    fn from_stored(payload: &Payload, key: &Key) -> Option<Result<Self, TypeMismatch>>;

    /// [`from_stored`](Self::from_stored) of a payload the caller owns (a flight's shared
    /// payload cloned for this caller).
    #[inline]
    fn from_payload(payload: Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Self::from_stored(&payload, key)
    }

    /// This value, marked as served from `source` (an expired value): only
    /// [`Loaded`](crate::Loaded) records it.
    #[inline]
    fn served_as(self, _source: crate::Source) -> Self {
        self
    }
}

impl<T: Send + Sync + 'static> Shape for Arc<T> {
    type Loaded = T;
    type Value = T;

    #[inline(always)]
    fn from_typed(typed: Typed<T>) -> Option<Result<Self, ()>> {
        match typed {
            Typed::Value(value) => Some(Ok(value)),
            // A plain caller cannot use a cached `None`, whatever its type: it loads.
            Typed::Nothing | Typed::NothingElse => None,
            Typed::Other => Some(Err(())),
        }
    }

    #[inline(always)]
    fn hit(payload: &Payload) -> Option<Self> {
        payload.value_of::<T>()
    }

    fn from_loaded(loaded: T) -> (Self, Payload) {
        let value = Arc::new(loaded);
        let payload = Payload::value(Arc::clone(&value));
        (value, payload)
    }

    #[inline]
    fn from_stored(payload: &Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Some(
            Self::from_typed(payload.read::<T>())?
                .map_err(|()| mismatch::<T>(key, payload.type_name())),
        )
    }
}

impl<T: Send + Sync + 'static> Shape for Option<Arc<T>> {
    type Loaded = Option<T>;
    type Value = T;

    #[inline(always)]
    fn from_typed(typed: Typed<T>) -> Option<Result<Self, ()>> {
        match typed {
            Typed::Value(value) => Some(Ok(Some(value))),
            Typed::Nothing => Some(Ok(None)),
            Typed::NothingElse | Typed::Other => Some(Err(())),
        }
    }

    #[inline(always)]
    fn hit(payload: &Payload) -> Option<Self> {
        match payload.read::<T>() {
            Typed::Value(value) => Some(Some(value)),
            Typed::Nothing => Some(None),
            Typed::NothingElse | Typed::Other => None,
        }
    }

    fn from_loaded(loaded: Option<T>) -> (Self, Payload) {
        match loaded {
            Some(value) => {
                let (value, payload) = <Arc<T> as Shape>::from_loaded(value);
                (Some(value), payload)
            }
            None => (None, Payload::nothing::<T>()),
        }
    }

    #[inline]
    fn from_stored(payload: &Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Some(payload.downcast::<T>(key))
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_as_the_same_arc() {
        let key = Key::from_text("k");
        let (value, payload) = <Arc<String> as Shape>::from_loaded(String::from("v"));
        let read = <Arc<String> as Shape>::from_stored(&payload, &key)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&value, &read));
    }

    #[test]
    fn another_type_is_a_mismatch_naming_both() {
        let key = Key::from_text("k");
        let payload = Payload::value(Arc::new(5_u32));
        let mismatch = payload.downcast::<String>(&key).unwrap_err();
        assert_eq!(mismatch.found, "u32");
        assert_eq!(mismatch.expected, "alloc::string::String");
        let nothing = Payload::nothing::<u32>();
        assert!(nothing.downcast::<String>(&key).is_err());
        assert!(nothing.downcast::<u32>(&key).unwrap().is_none());
        let mismatch = nothing.downcast::<String>(&key).unwrap_err();
        assert_eq!(mismatch.found, "u32", "a negative entry names its type too");
    }

    #[test]
    fn the_hit_path_takes_values_and_leaves_the_rest_to_the_load_path() {
        let (value, payload) = <Arc<u8> as Shape>::from_loaded(7);
        assert!(Arc::ptr_eq(&payload.value_of::<u8>().unwrap(), &value));
        assert!(payload.value_of::<u16>().is_none());
        assert!(<Arc<u16> as Shape>::hit(&payload).is_none(), "a mismatch");
        let nothing = Payload::nothing::<u8>();
        assert!(nothing.value_of::<u8>().is_none());
        assert!(<Arc<u8> as Shape>::hit(&nothing).is_none());
        assert_eq!(<Option<Arc<u8>> as Shape>::hit(&nothing), Some(None));
        assert!(<Option<Arc<u16>> as Shape>::hit(&nothing).is_none());
        assert_eq!(<Option<Arc<u8>> as Shape>::hit(&payload), Some(Some(value)));
    }

    #[test]
    fn a_payload_is_small() {
        assert_eq!(std::mem::size_of::<Payload>(), 16);
    }

    #[test]
    fn plain_callers_cannot_use_negative_entries_but_optional_ones_can() {
        let key = Key::from_text("k");
        let (value, nothing) = <Option<Arc<u8>> as Shape>::from_loaded(None);
        assert!(value.is_none() && nothing.is_nothing());
        assert!(<Arc<u8> as Shape>::from_stored(&nothing, &key).is_none());
        assert!(
            <Arc<String> as Shape>::from_stored(&nothing, &key).is_none(),
            "whatever type it is a None of"
        );
        let read = <Option<Arc<u8>> as Shape>::from_stored(&nothing, &key);
        assert!(matches!(read, Some(Ok(None))));
    }
}
