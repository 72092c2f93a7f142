//! Type-erased values: how a store holds values of any type, and how a caller gets its own
//! type back (or a [`TypeMismatch`], never a panic or a silent miss).

use std::any::{Any, TypeId, type_name};
use std::sync::Arc;

use nearcache_keys::Key;

use crate::error::TypeMismatch;

/// What an entry or a flight holds: a value, or a cached "nothing" (negative entry).
#[derive(Clone)]
pub(crate) enum Payload {
    /// An `Arc<T>`, erased; `type_name` is `T`'s, for error messages.
    Value {
        value: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
    /// A factory's `Ok(None)` for a `T`.
    Nothing {
        type_id: TypeId,
        type_name: &'static str,
    },
}

impl Payload {
    pub(crate) fn value<T: Send + Sync + 'static>(value: Arc<T>) -> Self {
        Payload::Value {
            value,
            type_name: type_name::<T>(),
        }
    }

    pub(crate) fn nothing<T: 'static>() -> Self {
        Payload::Nothing {
            type_id: TypeId::of::<T>(),
            type_name: type_name::<T>(),
        }
    }

    pub(crate) fn is_nothing(&self) -> bool {
        matches!(self, Payload::Nothing { .. })
    }

    /// Whether both hold the same value `Arc` (or are negative entries of one type).
    pub(crate) fn same_as(&self, other: &Payload) -> bool {
        match (self, other) {
            (Payload::Value { value: a, .. }, Payload::Value { value: b, .. }) => Arc::ptr_eq(a, b),
            (Payload::Nothing { type_id: a, .. }, Payload::Nothing { type_id: b, .. }) => a == b,
            _ => false,
        }
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
        match self {
            Payload::Value { value, type_name } => value
                .downcast::<T>()
                .map(Some)
                .map_err(|_| TypeMismatch::new::<T>(key, type_name)),
            Payload::Nothing { type_id, type_name } => {
                if type_id == TypeId::of::<T>() {
                    Ok(None)
                } else {
                    Err(TypeMismatch::new::<T>(key, type_name))
                }
            }
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
        match payload {
            Payload::Nothing { .. } => None,
            Payload::Value { .. } => Some(
                payload
                    .downcast::<T>(key)
                    .and_then(|value| value.ok_or_else(|| TypeMismatch::new::<T>(key, "nothing"))),
            ),
        }
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
