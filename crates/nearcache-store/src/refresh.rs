//! Eager refresh: the detached loaders, whose factories may outlive their caller.
//!
//! A hit on an entry past its `eager_refresh_threshold` claims the entry's refresh (one
//! compare-and-swap: only the first such read wins) and starts one reload on the tokio
//! blocking pool of the runtime the store was built in, through the key's flight table: a
//! load of the key already in progress is left alone, and foreground callers that miss
//! meanwhile join the refresh's flight. Callers keep getting the current value. The
//! refresh's value is stored under the no-stale-insert rule of every load, so an
//! invalidation that overlaps it keeps it out.
//!
//! Async factories run there under `Handle::block_on`, so their futures need not be `Send`
//! (only the factory itself, which moves to that thread). Without the `tokio` feature or a
//! runtime, nothing is refreshed early; the first skipped refresh is logged.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use nearcache_keys::Key;

use crate::entry::EntryOptions;
use crate::error::LoadError;
use crate::source::Loaded;
use crate::store::{Store, StoreInner};
use crate::value::Shape;

impl Store {
    /// Like [`get_or_create`](Self::get_or_create), for a factory that may run detached
    /// from its caller (`Send + 'static`): with an eager refresh threshold (the store's
    /// `eager_refresh_threshold`, or the entry's), the first hit past it starts one
    /// background reload through the key's single flight while every caller keeps getting
    /// the current value. A miss loads in the foreground, as `get_or_create` does.
    ///
    /// The reload runs on the blocking pool of the tokio runtime the store was built in;
    /// without one (or without the `tokio` feature) nothing is refreshed early, and the
    /// first such hit is logged.
    ///
    /// **Timeouts.** With a hard timeout set, or the key's expired value kept with a soft
    /// timeout, a load this call leads runs its factory on that runtime too, and this call
    /// waits for it as any other caller does: it gets the kept value at the soft timeout,
    /// and the kept value or [`LoadError::Timeout`] at the hard timeout, while the load goes
    /// on (or is cancelled, per [`OnHardTimeout`](crate::OnHardTimeout)) and stores its value
    /// unless an invalidation overlapped it.
    ///
    /// # Errors
    ///
    /// As [`get_or_create`](Self::get_or_create), and [`LoadError::Timeout`] at the hard
    /// timeout with nothing kept. A background reload's failure reaches no caller: the
    /// current value stays until it expires.
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create`](Self::get_or_create); a started refresh goes on regardless.
    pub async fn get_or_create_detached<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        self.detached_async::<Arc<T>, E, F>(key, factory).await
    }

    /// [`get_or_create_detached`](Self::get_or_create_detached), returning with the value
    /// where it came from: a hit, a load, or the key's expired value (fail-safe, or a soft
    /// timeout); see [`Source`](crate::Source).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_detached`](Self::get_or_create_detached).
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_create_detached`](Self::get_or_create_detached).
    pub async fn get_or_create_detached_with_source<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        self.detached_async::<Loaded<Arc<T>>, E, F>(key, factory)
            .await
    }

    async fn detached_async<S, E, F>(&self, key: &Key, factory: F) -> Result<S, LoadError<E>>
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        if let Some((hit, due)) = self.inner.try_hit_refreshing::<S>(key) {
            if due {
                self.spawn_refresh_async::<S, E, F>(key, factory);
            }
            return hit.map_err(LoadError::TypeMismatch);
        }
        #[cfg(feature = "tokio")]
        let loaded = Box::pin(self.load_detached_async::<S, E, F>(key, factory)).await;
        #[cfg(not(feature = "tokio"))]
        let loaded = Box::pin(self.inner.load_async::<S, E, F>(key, factory)).await;
        loaded
    }

    /// The blocking twin of [`get_or_create_detached`](Self::get_or_create_detached); the
    /// refresh, and a load under a timeout, run on the runtime the store was built in, even
    /// for callers outside it, so this call stops waiting at the soft or hard timeout too.
    ///
    /// # Errors
    ///
    /// As [`get_or_create_sync`](Self::get_or_create_sync).
    pub fn get_or_create_detached_sync<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Arc<T>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        self.detached_sync::<Arc<T>, E, F>(key, factory)
    }

    /// [`get_or_create_detached_sync`](Self::get_or_create_detached_sync), returning with
    /// the value where it came from (see [`Source`](crate::Source)).
    ///
    /// # Errors
    ///
    /// As [`get_or_create_detached_sync`](Self::get_or_create_detached_sync).
    pub fn get_or_create_detached_sync_with_source<T, E, F>(
        &self,
        key: &Key,
        factory: F,
    ) -> Result<Loaded<Arc<T>>, LoadError<E>>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<T, E> + Send + 'static,
    {
        self.detached_sync::<Loaded<Arc<T>>, E, F>(key, factory)
    }

    fn detached_sync<S, E, F>(&self, key: &Key, factory: F) -> Result<S, LoadError<E>>
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        if let Some((hit, due)) = self.inner.try_hit_refreshing::<S>(key) {
            if due {
                self.spawn_refresh_sync::<S, E, F>(key, factory);
            }
            return hit.map_err(LoadError::TypeMismatch);
        }
        #[cfg(feature = "tokio")]
        let loaded = self.load_detached_sync::<S, E, F>(key, factory);
        #[cfg(not(feature = "tokio"))]
        let loaded = self.inner.load_sync::<S, E, F>(key, factory);
        loaded
    }

    #[cfg(feature = "tokio")]
    fn spawn_refresh_async<S, E, F>(&self, key: &Key, factory: F)
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: AsyncFnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        let Some(runtime) = self.inner.runtime.clone() else {
            self.inner.refresh_skipped(key);
            return;
        };
        let (store, key, from) = (self.clone(), key.clone(), on_current_thread_runtime());
        drop(runtime.clone().spawn_blocking(move || {
            store
                .inner
                .refresh_async::<S, E, F>(&runtime, from, &key, factory);
        }));
    }

    // The signature of the `tokio` twin, whose callers name `S` and `E`.
    #[cfg(not(feature = "tokio"))]
    #[allow(clippy::extra_unused_type_parameters)]
    fn spawn_refresh_async<S, E, F>(&self, key: &Key, _factory: F) {
        self.inner.refresh_skipped(key);
    }

    #[cfg(feature = "tokio")]
    fn spawn_refresh_sync<S, E, F>(&self, key: &Key, factory: F)
    where
        S: Shape + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(&mut EntryOptions) -> Result<S::Loaded, E> + Send + 'static,
    {
        let Some(runtime) = &self.inner.runtime else {
            self.inner.refresh_skipped(key);
            return;
        };
        let (store, key) = (self.clone(), key.clone());
        drop(runtime.spawn_blocking(move || {
            store.inner.refresh_sync::<S, E, F>(&key, factory);
        }));
    }

    // The signature of the `tokio` twin, whose callers name `S` and `E`.
    #[cfg(not(feature = "tokio"))]
    #[allow(clippy::extra_unused_type_parameters)]
    fn spawn_refresh_sync<S, E, F>(&self, key: &Key, _factory: F) {
        self.inner.refresh_skipped(key);
    }
}

/// This thread, if it runs a current-thread tokio runtime: the one thread that drives that
/// runtime's timers and I/O, which an async refresh started here may need (a blocking
/// caller on it must not wait for that refresh). `None` elsewhere: on a multi-thread
/// runtime a blocking wait hands the worker's tasks off first, and outside a runtime the
/// refresh does not need this thread.
#[cfg(feature = "tokio")]
fn on_current_thread_runtime() -> Option<crate::shim::ThreadToken> {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
        })
        .then(crate::shim::current_thread)
}

impl StoreInner {
    /// Logs, once per store, that a load went through a loader that never refreshes early
    /// (its factory is not `'static`, so nothing can run it after its caller returned)
    /// although the store has an eager refresh threshold. Called on the load path only: a
    /// flag check, nothing on hits.
    #[inline]
    pub(crate) fn note_no_eager_refresh(&self) {
        if self.defaults.eager_refresh.is_some()
            && !self.no_eager_loader_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "eager_refresh_threshold is set, but get_or_create and get_or_create_sync (and \
                 their _optional twins) never refresh early: their factories may borrow from \
                 the caller; use get_or_create_detached(_sync) for keys to refresh early"
            );
        }
    }

    /// Logs, once per store, that an eager refresh was due but nothing could run it.
    #[cold]
    fn refresh_skipped(&self, key: &Key) {
        if !self.no_runtime_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key = %self.shown(key),
                "an eager refresh is due but the store was built outside a tokio runtime (or \
                 without the tokio feature): entries are reloaded only when they expire"
            );
        }
    }
}

#[cfg(all(test, not(shuttle), feature = "tokio"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use nearcache_keys::Key;

    use crate::{LoadError, Store, StoreOptions};

    const SECOND: Duration = Duration::from_secs(1);

    /// A `set` while a background load is held (an eager refresh, and a detached load its
    /// caller left at the hard timeout with `Background`): the user's newer value stays,
    /// the background result is not stored over it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_during_a_background_load_is_not_overwritten_by_it() {
        for refresh in [true, false] {
            let (clock, mock) = quanta::Clock::mock();
            let store = Store::with_clock(
                StoreOptions {
                    eager_refresh_threshold: Some(0.5),
                    hard_timeout: Some(Duration::from_millis(1)),
                    hard_timeout_action: crate::OnHardTimeout::Background,
                    ..StoreOptions::default()
                },
                clock,
            )
            .unwrap();
            let k = Key::from_text("k");
            if refresh {
                store.set_with(k.clone(), 1_u64, |entry| {
                    entry.time_to_live(10 * SECOND);
                });
                mock.increment(6 * SECOND);
            }
            let (started, load_started) = std::sync::mpsc::channel();
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let answer = store
                .get_or_create_detached(&k, async move |entry: &mut crate::EntryOptions| {
                    started.send(()).unwrap();
                    let _ = released.await;
                    entry.time_to_live(10 * SECOND);
                    Ok::<_, Infallible>(2_u64)
                })
                .await;
            if refresh {
                assert_eq!(*answer.unwrap(), 1, "the refreshing hit");
            } else {
                assert!(matches!(answer, Err(LoadError::Timeout(_))), "{answer:?}");
            }
            tokio::task::spawn_blocking(move || load_started.recv_timeout(10 * SECOND))
                .await
                .unwrap()
                .expect("the background load started");
            store.set(k.clone(), 7_u64);
            release.send(()).unwrap();
            let deadline = std::time::Instant::now() + 10 * SECOND;
            while store.flight_waiters(&k).is_some() {
                assert!(std::time::Instant::now() < deadline, "the load finished");
                tokio::task::yield_now().await;
            }
            assert_eq!(
                *store.get::<u64>(&k).unwrap().unwrap(),
                7,
                "refresh {refresh}: the user's value stays"
            );
            assert_eq!(store.stats().inserts_rejected_stale, 1, "refresh {refresh}");
        }
    }

    /// On a current-thread runtime, an async eager refresh runs on the blocking pool under
    /// `Handle::block_on`, which cannot drive the runtime's timers or I/O: only the
    /// runtime's own thread does, when it is free. A blocking caller on that thread that
    /// joined the refresh would keep it from ever finishing, so it is refused
    /// (`WouldDeadlock`), as for an async leader on that thread; once the thread is free
    /// again the refresh finishes and lands.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_caller_on_a_current_thread_runtime_does_not_wait_for_an_async_refresh() {
        let (clock, mock) = quanta::Clock::mock();
        let store = Store::with_clock(
            StoreOptions {
                eager_refresh_threshold: Some(0.5),
                // Bounds the old behaviour (a wait the refresh cannot end) in this test.
                hard_timeout: Some(5 * SECOND),
                ..StoreOptions::default()
            },
            clock,
        )
        .unwrap();
        let k = Key::from_text("k");
        let load = |value: u64| {
            async move |entry: &mut crate::EntryOptions| {
                entry.time_to_live(10 * SECOND);
                Ok::<_, Infallible>(value)
            }
        };
        assert_eq!(*store.get_or_create_detached(&k, load(1)).await.unwrap(), 1);
        mock.increment(6 * SECOND);

        let (started, refresh_started) = std::sync::mpsc::channel();
        let hit = store
            .get_or_create_detached(&k, async move |entry: &mut crate::EntryOptions| {
                started.send(()).unwrap();
                // Needs the runtime's timer driver, which only this test's thread runs.
                tokio::time::sleep(Duration::from_millis(1)).await;
                entry.time_to_live(10 * SECOND);
                Ok::<_, Infallible>(2_u64)
            })
            .await
            .unwrap();
        assert_eq!(*hit, 1, "the refreshing hit gets the current value");
        refresh_started
            .recv_timeout(10 * SECOND)
            .expect("the refresh started");
        mock.increment(5 * SECOND); // the current value expires: the next caller misses

        let blocked = store.get_or_create_sync(&k, |_| Ok::<_, Infallible>(3_u64));
        assert!(
            matches!(blocked, Err(LoadError::WouldDeadlock(_))),
            "got {blocked:?}"
        );

        // This thread is free again: the refresh finishes and its value lands.
        let deadline = std::time::Instant::now() + 10 * SECOND;
        while store.flight_waiters(&k).is_some() {
            assert!(std::time::Instant::now() < deadline, "the refresh finished");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*store.get::<u64>(&k).unwrap().unwrap(), 2);
    }
}
