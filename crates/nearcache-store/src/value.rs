//! Type-erased values: how a store holds values of any type, and how a caller gets its own
//! type back (or a [`TypeMismatch`], never a panic or a silent miss).

use std::any::{Any, type_name};
use std::marker::PhantomData;
use std::sync::Arc;

use nearcache_keys::Key;

use crate::error::TypeMismatch;

/// What an entry or a flight holds: a value, or a cached "nothing" (negative entry).
///
/// 32 bytes, cloned with one reference count and no branch: it is part of every stored
/// entry, which quick_cache clones on each read. A negative entry of `T` holds a
/// [`Nothing<T>`] marker, so both kinds are checked by the same `TypeId` comparison.
#[derive(Clone)]
pub(crate) struct Payload {
    /// An `Arc<T>` (or `Arc<Nothing<T>>`), erased.
    value: Arc<dyn Any + Send + Sync>,
    /// `T`'s name, for error messages only (a function pointer: 8 bytes, not 16).
    type_name: fn() -> &'static str,
    /// A factory's `Ok(None)`.
    nothing: bool,
}

/// The marker a negative entry of `T` holds.
struct Nothing<T>(PhantomData<fn() -> T>);

impl Payload {
    pub(crate) fn value<T: Send + Sync + 'static>(value: Arc<T>) -> Self {
        Payload {
            value,
            type_name: type_name::<T>,
            nothing: false,
        }
    }

    pub(crate) fn nothing<T: 'static>() -> Self {
        Payload {
            value: Arc::new(Nothing::<T>(PhantomData)),
            type_name: type_name::<T>,
            nothing: true,
        }
    }

    pub(crate) fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// The payload as a `T`: `Ok(Some)` for a value, `Ok(None)` for a negative entry of `T`.
    /// Takes the payload by value, so a value is moved out, not reference-counted again.
    ///
    /// # Errors
    ///
    /// [`TypeMismatch`] when it holds another type.
    #[inline]
    pub(crate) fn downcast<T: Send + Sync + 'static>(
        self,
        key: &Key,
    ) -> Result<Option<Arc<T>>, TypeMismatch> {
        let found = self.type_name;
        if self.nothing {
            return if self.value.is::<Nothing<T>>() {
                Ok(None)
            } else {
                Err(TypeMismatch::new::<T>(key, found()))
            };
        }
        match self.value.downcast::<T>() {
            Ok(value) => Ok(Some(value)),
            Err(_) => Err(TypeMismatch::new::<T>(key, found())),
        }
    }
}

/// The two shapes a get-or-create caller asks for: `Arc<T>` (plain loaders) and
/// `Option<Arc<T>>` (`_optional` loaders).
pub(crate) trait Shape: Sized {
    /// What the factory returns on success.
    type Loaded;

    /// Wraps a factory's value: what the leader returns, and what the flight shares.
    fn from_loaded(loaded: Self::Loaded) -> (Self, Payload);

    /// Reads a stored or shared payload (moved in: a hit's clone, or a flight's shared
    /// payload cloned for this caller). `None`: this shape cannot use it (a plain caller
    /// meeting a negative entry), so the caller loads as on a miss.
    fn from_payload(payload: Payload, key: &Key) -> Option<Result<Self, TypeMismatch>>;
}

impl<T: Send + Sync + 'static> Shape for Arc<T> {
    type Loaded = T;

    fn from_loaded(loaded: T) -> (Self, Payload) {
        let value = Arc::new(loaded);
        let payload = Payload::value(Arc::clone(&value));
        (value, payload)
    }

    #[inline]
    fn from_payload(payload: Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        if payload.is_nothing() {
            return None;
        }
        Some(
            payload
                .downcast::<T>(key)
                .and_then(|value| value.ok_or_else(|| TypeMismatch::new::<T>(key, "nothing"))),
        )
    }
}

impl<T: Send + Sync + 'static> Shape for Option<Arc<T>> {
    type Loaded = Option<T>;

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
    fn from_payload(payload: Payload, key: &Key) -> Option<Result<Self, TypeMismatch>> {
        Some(payload.downcast::<T>(key))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_as_the_same_arc() {
        let key = Key::from_text("k");
        let (value, payload) = <Arc<String> as Shape>::from_loaded(String::from("v"));
        let read = <Arc<String> as Shape>::from_payload(payload.clone(), &key)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&value, &read));
    }

    #[test]
    fn another_type_is_a_mismatch_naming_both() {
        let key = Key::from_text("k");
        let payload = Payload::value(Arc::new(5_u32));
        let mismatch = payload.clone().downcast::<String>(&key).unwrap_err();
        assert_eq!(mismatch.found, "u32");
        assert_eq!(mismatch.expected, "alloc::string::String");
        let nothing = Payload::nothing::<u32>();
        assert!(nothing.clone().downcast::<String>(&key).is_err());
        assert!(nothing.clone().downcast::<u32>(&key).unwrap().is_none());
        let mismatch = nothing.downcast::<String>(&key).unwrap_err();
        assert_eq!(mismatch.found, "u32", "a negative entry names its type too");
    }

    #[test]
    fn a_payload_is_small() {
        assert!(std::mem::size_of::<Payload>() <= 32);
    }

    #[test]
    fn plain_callers_cannot_use_negative_entries_but_optional_ones_can() {
        let key = Key::from_text("k");
        let (value, nothing) = <Option<Arc<u8>> as Shape>::from_loaded(None);
        assert!(value.is_none() && nothing.is_nothing());
        assert!(<Arc<u8> as Shape>::from_payload(nothing.clone(), &key).is_none());
        let read = <Option<Arc<u8>> as Shape>::from_payload(nothing.clone(), &key);
        assert!(matches!(read, Some(Ok(None))));
    }
}
