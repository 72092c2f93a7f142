//! Loaders for a factory that cannot fail: [`Cache::get_or_create_with`] and
//! [`Cache::get_or_create_with_sync`].
//!
//! A factory that computes its value (or reads it from something that does not fail) should
//! not have to wrap it in `Ok::<_, SomeError>(value)` to satisfy
//! [`get_or_create`](Cache::get_or_create). These take a factory that returns the value
//! itself — `_with`, as `Option::get_or_insert_with` in std — and share their flights with
//! every other loader of the key. What can still go wrong is not the factory's doing, so the
//! error is [`LoadError<Infallible>`], which never holds [`LoadError::Factory`].

use std::borrow::Borrow;
use std::convert::Infallible;
use std::sync::Arc;

use nearcache_keys::Key;
use nearcache_store::EntryOptions;

use crate::{Cache, LoadError};

impl Cache {
    /// The value under `key`, computing it with `factory` on a miss: the loader for a
    /// factory that cannot fail.
    ///
    /// It is [`get_or_create`](Self::get_or_create) (one flight per key, shared with every
    /// other loader of the key; the factory sets its entry's expiry and regions) with a
    /// factory that returns `T` instead of `Result<T, E>`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use nearcache::{Cache, cache_key};
    ///
    /// struct Primes;
    /// let cache = Cache::builder().build()?;
    /// let key = cache_key!(Primes, "below", &100);
    /// let count = cache
    ///     .get_or_create_with(&key, async |entry| {
    ///         entry.time_to_live(Duration::from_secs(60));
    ///         (2..100u32).filter(|n| (2..*n).all(|d| n % d != 0)).count()
    ///     })
    ///     .await?;
    /// assert_eq!(*count, 25);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LoadError::TypeMismatch`] when `key` holds a value of another type;
    /// [`LoadError::Timeout`] when the factory ran past `hard_timeout`.
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create).
    pub async fn get_or_create_with<T, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<Infallible>>
    where
        T: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> T,
    {
        self.get_or_create(key, async move |entry: &mut EntryOptions| {
            Ok(factory(entry).await)
        })
        .await
    }

    /// The blocking twin of [`get_or_create_with`](Self::get_or_create_with); it shares
    /// flights with async callers of the same key, and behaves on async runtimes as
    /// [`get_or_create_sync`](Self::get_or_create_sync).
    ///
    /// ```
    /// use nearcache::{Cache, cache_key};
    ///
    /// struct Greetings;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = Cache::builder().build()?;
    /// let name = "ada";
    /// let greeting = cache
    ///     .get_or_create_with_sync(cache_key!(Greetings, "for", &name), |_| format!("hello, {name}"))?;
    /// assert_eq!(*greeting, "hello, ada");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get_or_create_with`](Self::get_or_create_with), and [`LoadError::WouldDeadlock`]
    /// as for [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_with_sync<T, F>(
        &self,
        key: impl Borrow<Key>,
        factory: F,
    ) -> Result<Arc<T>, LoadError<Infallible>>
    where
        T: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> T,
    {
        self.get_or_create_sync(key, |entry: &mut EntryOptions| Ok(factory(entry)))
    }
}
