//! Soft and hard timeouts: callers stop waiting for a slow load (with the expired value kept
//! for fail-safe, or a timeout error) while the detached loaders' factories go on and store
//! their result — unless an invalidation (local, a region's, or a peer's) overlapped the
//! load, which keeps that result out and the expired value from being served again.
//!
//! Expiry runs on a mock clock. The async tests run on tokio's paused clock (a
//! current-thread runtime): the timeouts fire only when the test advances it, and the slow
//! factories wait at gates the test opens. (A detached factory runs on the blocking pool,
//! which stops the paused clock from advancing on its own while it runs.) The blocking test
//! runs on real threads: a waiter stops at a 50 ms hard timeout while the leader is held at
//! a gate until that waiter has answered, so no outcome depends on how fast anything runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use loader_support::{
    Catalog, DatabaseDown, SECOND, load_v1_detached, pair_on_a_mock_clock, refused,
    with_hard_timeout,
};
use nearcache::{
    Cache, CacheEvent, CacheOptions, Key, LoadError, OnHardTimeout, OptionsError, Propagated,
    RemovalCause, Source, StoreOptions,
};
use tokio::sync::{mpsc, oneshot};

mod loader_support;

const WAIT: Duration = Duration::from_secs(10);
const SOFT: Duration = Duration::from_millis(20);
const HARD: Duration = Duration::from_millis(200);

/// `future`, or a panic once `WAIT` has passed in real time. A watchdog thread keeps the
/// time: tokio's paused clock does not advance on its own while a detached factory runs, so
/// a tokio timeout would never fire where a broken timeout leaves a caller waiting.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    let (expired, watchdog) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(WAIT);
        let _ = expired.send(());
    });
    tokio::select! {
        output = future => output,
        _ = watchdog => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

fn options() -> CacheOptions {
    let mut options = CacheOptions {
        store: StoreOptions {
            fail_safe_max_duration: Some(600 * SECOND),
            soft_timeout: Some(SOFT),
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    };
    options.backplane.heartbeat_interval = Duration::from_secs(3600);
    options
}

/// A cache with `options` on a mock clock, reporting the entries that leave on the returned
/// channel (a kept value replaced by a load's insert is reported once that is done).
fn cache_with(
    options: CacheOptions,
) -> (
    Cache,
    Arc<quanta::Mock>,
    mpsc::UnboundedReceiver<RemovalCause>,
) {
    let (clock, mock) = quanta::Clock::mock();
    let (tx, rx) = mpsc::unbounded_channel();
    let cache = Cache::builder()
        .options(options)
        .clock(clock)
        .removal_listener(move |_key, cause| {
            let _ = tx.send(cause);
        })
        .build()
        .unwrap();
    (cache, mock, rx)
}

/// A slow load's controls: it signals `started`, then waits for `release`.
struct Gate {
    started: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

/// A caller on its own task.
type Caller = tokio::task::JoinHandle<Result<Arc<u64>, LoadError<DatabaseDown>>>;

/// A detached get-or-create of `k` on its own task whose factory (tied to `Catalog`) is held
/// at a [`Gate`] and then loads `value`.
fn slow_load(cache: &Cache, k: &Key, value: u64) -> (Caller, Gate) {
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<()>();
    let (cache, k) = (cache.clone(), k.clone());
    let task = tokio::spawn(async move {
        cache
            .get_or_create_detached(&k, async move |entry| {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                entry.time_to_live(10 * SECOND).region::<Catalog>();
                Ok::<_, DatabaseDown>(value)
            })
            .await
    });
    (task, Gate { started, release })
}

/// Advances tokio's paused clock past the soft timeout, letting woken tasks run.
async fn past_the_soft_timeout() {
    tokio::time::advance(SOFT + Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
}

/// Yields until `n` callers have joined `k`'s load in progress.
async fn joined(cache: &Cache, k: &Key, n: usize) {
    within("callers to join the load", async {
        while cache.flight_waiters(k) != Some(n) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_soft_timeout_serves_the_expired_value_while_the_load_goes_on_and_its_result_lands() {
    let (cache, mock, mut replaced) = cache_with(options());
    let k = Key::from_text("product:1");
    let v1 = load_v1_detached(&cache, &k).await;
    mock.increment(11 * SECOND);
    assert!(
        cache.get::<u64>(&k).unwrap().is_none(),
        "expired, only kept"
    );

    let (caller, gate) = slow_load(&cache, &k, 2);
    within("the load to start", gate.started).await.unwrap();
    past_the_soft_timeout().await;
    let served = within("the soft timeout", caller).await.unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&served, &v1),
        "the expired value, at the soft timeout"
    );
    assert_eq!(cache.stats().store.soft_timeouts, 1);
    assert!(
        cache.get::<u64>(&k).unwrap().is_none(),
        "served to that caller only: not live again while the load runs"
    );

    // The load goes on without its caller, and its value replaces the kept one.
    gate.release.send(()).unwrap();
    // The kept entry leaves (reported as expired) when the new value replaces it.
    let cause = within("the load's insert", replaced.recv()).await.unwrap();
    assert_eq!(cause, RemovalCause::Expired);
    assert_eq!(*cache.get::<u64>(&k).unwrap().unwrap(), 2);
    let stats = cache.stats().store;
    assert_eq!(
        (stats.loads, stats.soft_timeouts, stats.hard_timeouts),
        (2, 1, 0)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_a_kept_value_the_soft_timeout_does_nothing() {
    let (cache, _mock, _replaced) = cache_with(options());
    let k = Key::from_text("product:1");
    let (caller, gate) = slow_load(&cache, &k, 2);
    within("the load to start", gate.started).await.unwrap();
    past_the_soft_timeout().await;
    past_the_soft_timeout().await;
    assert!(!caller.is_finished(), "nothing to serve: the caller waits");
    gate.release.send(()).unwrap();
    assert_eq!(*within("the load", caller).await.unwrap().unwrap(), 2);
    assert_eq!(cache.stats().store.soft_timeouts, 0);
}

#[derive(Debug, Clone, Copy)]
enum How {
    Remove,
    Region,
    Peer,
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_invalidation_during_the_background_load_keeps_its_value_out_and_the_expired_one_unserved()
 {
    for how in [How::Remove, How::Region, How::Peer] {
        // Loads run on `b`; `a` is the peer that invalidates for `How::Peer`.
        let (a, b, mock) = pair_on_a_mock_clock(options);
        within("a", a.ready()).await;
        within("b", b.ready()).await;
        let k = Key::from_text("product:1");
        let v1 = load_v1_detached(&b, &k).await;
        mock.increment(11 * SECOND);

        // The first caller gets the expired value at the soft timeout; its load goes on.
        let (first, gate) = slow_load(&b, &k, 2);
        within("the load to start", gate.started).await.unwrap();
        past_the_soft_timeout().await;
        let served = within("the soft timeout", first).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&served, &v1), "{how:?}");

        // A caller that joins the load before the invalidation (it overlaps it).
        let (overlapping, _unused) = slow_load(&b, &k, 99);
        joined(&b, &k, 1).await;

        let mut events = b.events();
        match how {
            How::Remove => drop(b.remove(&k)),
            How::Region => drop(b.expire_region::<Catalog>()),
            How::Peer => {
                assert_eq!(a.remove(&k).await, Propagated::Published);
                within("the peer's message", async {
                    while !matches!(events.recv().await.unwrap(), CacheEvent::Applied { .. }) {}
                })
                .await;
            }
        }

        // The overlapping caller's soft timeout passes after the invalidation: the expired
        // value is not served to it (it gets the load's value below).
        past_the_soft_timeout().await;

        // A caller after the invalidation waits past its soft timeout without being served
        // the expired value: after a remove it leads a load of its own, after a region
        // expiry it joins the running one (and loads again once it is found stale).
        let (late, late_gate) = slow_load(&b, &k, 3);
        match how {
            How::Region => joined(&b, &k, 2).await,
            How::Remove | How::Peer => within("the late load", late_gate.started).await.unwrap(),
        }
        past_the_soft_timeout().await;

        // The background load ends: its value reaches the caller that overlapped the
        // invalidation, and is not stored.
        gate.release.send(()).unwrap();
        let overlapped = within("the overlapping caller", overlapping).await.unwrap();
        assert_eq!(*overlapped.unwrap(), 2, "{how:?}");
        assert!(b.get::<u64>(&k).unwrap().is_none(), "{how:?}: not stored");
        assert_eq!(b.stats().store.inserts_rejected_stale, 1, "{how:?}");

        let _ = late_gate.release.send(());
        let late = within("the late caller", late).await.unwrap().unwrap();
        assert_eq!(
            *late, 3,
            "{how:?}: never the expired value after the invalidation"
        );
        assert_eq!(*b.get::<u64>(&k).unwrap().unwrap(), 3, "{how:?}");
        assert_eq!(b.stats().store.soft_timeouts, 1, "{how:?}");
    }
}

/// Signals when the factory's future is dropped.
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn at_a_background_hard_timeout_callers_stop_waiting_and_the_load_still_lands() {
    // Without a kept value: the caller gets the timeout error.
    let (cache, mock, mut replaced) = cache_with(CacheOptions {
        store: StoreOptions {
            soft_timeout: None,
            hard_timeout: Some(HARD),
            hard_timeout_action: OnHardTimeout::Background,
            ..options().store
        },
        ..options()
    });
    let k = Key::from_text("product:1");
    let (caller, gate) = slow_load(&cache, &k, 1);
    within("the load to start", gate.started).await.unwrap();
    tokio::time::advance(HARD).await;
    let result = within("the hard timeout", caller).await.unwrap();
    match result {
        Err(LoadError::Timeout(timeout)) => assert_eq!(timeout.after, HARD),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(cache.stats().store.hard_timeouts, 1);
    // The load goes on: a caller that joins it now gets its value.
    let (joiner, _unused) = slow_load(&cache, &k, 99);
    joined(&cache, &k, 1).await;
    gate.release.send(()).unwrap();
    let v1 = within("the joiner", joiner).await.unwrap().unwrap();
    assert_eq!(*v1, 1);
    assert!(
        Arc::ptr_eq(&cache.get::<u64>(&k).unwrap().unwrap(), &v1),
        "stored"
    );

    // With a kept value: the caller gets it at the hard timeout, and the load's value
    // replaces it when it comes.
    mock.increment(11 * SECOND);
    let (caller, gate) = slow_load(&cache, &k, 2);
    within("the load to start", gate.started).await.unwrap();
    tokio::time::advance(HARD).await;
    let served = within("the hard timeout", caller).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    let stats = cache.stats().store;
    assert_eq!((stats.hard_timeouts, stats.fail_safe_activations), (2, 1));
    gate.release.send(()).unwrap();
    // The kept entry leaves (reported as expired) when the new value replaces it.
    let cause = within("the load's insert", replaced.recv()).await.unwrap();
    assert_eq!(cause, RemovalCause::Expired);
    assert_eq!(*cache.get::<u64>(&k).unwrap().unwrap(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn at_a_cancelling_hard_timeout_the_detached_factory_is_dropped() {
    let (cache, _mock, _replaced) = cache_with(CacheOptions {
        store: StoreOptions {
            soft_timeout: None,
            hard_timeout: Some(HARD),
            ..options().store
        },
        ..options()
    });
    let k = Key::from_text("product:1");
    let (started_tx, started) = oneshot::channel();
    let (dropped_tx, dropped) = oneshot::channel();
    let caller = tokio::spawn({
        let (cache, k) = (cache.clone(), k.clone());
        async move {
            cache
                .get_or_create_detached(&k, async move |_| {
                    let _signal = Dropped(Some(dropped_tx));
                    let _ = started_tx.send(());
                    std::future::pending::<Result<u64, DatabaseDown>>().await
                })
                .await
        }
    });
    within("the load to start", started).await.unwrap();
    tokio::time::advance(HARD).await;
    let result = within("the hard timeout", caller).await.unwrap();
    assert!(matches!(result, Err(LoadError::Timeout(_))), "{result:?}");
    within("the factory's future to be dropped", dropped)
        .await
        .unwrap();
    assert_eq!(cache.stats().store.hard_timeouts, 1);
    assert!(cache.get::<u64>(&k).unwrap().is_none(), "nothing stored");
}

#[test]
fn a_blocking_waiter_stops_at_the_hard_timeout_while_the_leader_still_runs() {
    let cache = with_hard_timeout(Duration::from_millis(50));
    let k = Key::from_text("product:1");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (cache, k) = (&cache, &k);
    std::thread::scope(|s| {
        let leader = s.spawn(move || {
            cache.get_or_create_sync(k, |_| {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, DatabaseDown>(1_u64)
            })
        });
        started_rx.recv_timeout(WAIT).unwrap();
        let (answer_tx, answer_rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let result = cache.get_or_create_sync(k, |_| Ok::<_, DatabaseDown>(99_u64));
            answer_tx.send(result).unwrap();
        });
        let answer = answer_rx.recv_timeout(WAIT);
        if answer.is_err() {
            release_tx.send(()).unwrap(); // so the scope can end
            panic!("the waiter did not stop at the hard timeout");
        }
        match answer.unwrap() {
            Err(LoadError::Timeout(timeout)) => {
                assert_eq!(timeout.after, Duration::from_millis(50))
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The blocking leader is not timed: it gets its own value when its factory returns.
        release_tx.send(()).unwrap();
        assert_eq!(*leader.join().unwrap().unwrap(), 1);
    });
    let stats = cache.stats().store;
    assert_eq!((stats.hard_timeouts, stats.loads), (1, 1));
    assert_eq!(
        *cache.get::<u64>(k).unwrap().unwrap(),
        1,
        "the leader's value is stored"
    );
}

/// The blocking detached loader runs its factory on the cache's runtime, so a caller on a
/// thread of its own stops at the soft timeout (real time here: the factory is held at a
/// gate until the caller has answered) and the load still lands.
#[test]
fn the_blocking_detached_loader_answers_at_the_soft_timeout_and_its_load_lands() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (cache, mock, mut removed) = runtime.block_on(async { cache_with(options()) });
    let k = Key::from_text("product:1");
    let v1 = cache
        .get_or_create_detached_sync(&k, |entry| {
            entry.time_to_live(10 * SECOND);
            Ok::<_, DatabaseDown>(1_u64)
        })
        .unwrap();
    mock.increment(11 * SECOND);

    let (started_tx, started) = std::sync::mpsc::channel();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    let (answer_tx, answer) = std::sync::mpsc::channel();
    let caller = {
        let (cache, k) = (cache.clone(), k.clone());
        std::thread::spawn(move || {
            let result = cache.get_or_create_detached_sync_with_source(&k, move |entry| {
                started_tx.send(()).unwrap();
                let _ = release.recv();
                entry.time_to_live(10 * SECOND);
                Ok::<_, DatabaseDown>(2_u64)
            });
            answer_tx.send(result).unwrap();
        })
    };
    let answered = answer.recv_timeout(WAIT);
    if answered.is_err() {
        release_tx.send(()).unwrap(); // so the caller can end
        panic!("the caller did not stop at the soft timeout");
    }
    let served = answered.unwrap().unwrap();
    assert!(Arc::ptr_eq(&served.value, &v1), "the expired value");
    assert_eq!(served.source, Source::SoftTimeout);
    assert_eq!(cache.stats().store.soft_timeouts, 1);
    caller.join().unwrap();

    started
        .recv_timeout(WAIT)
        .expect("the load runs on the runtime");
    release_tx.send(()).unwrap();
    let cause = runtime
        .block_on(within("the load's insert", removed.recv()))
        .expect("the load's insert");
    assert_eq!(cause, RemovalCause::Expired, "the kept value, replaced");
    assert_eq!(*cache.get::<u64>(&k).unwrap().unwrap(), 2);
}

#[test]
fn a_soft_timeout_is_refused_when_zero_or_not_shorter_than_the_hard_timeout() {
    let zero = refused("soft_timeout", |store| {
        store.soft_timeout = Some(Duration::ZERO)
    });
    assert!(matches!(zero, OptionsError::ZeroSoftTimeout), "{zero:?}");
    // Refused as invalid options (checked by `refused`), whichever variant says so.
    refused("soft_timeout", |store| {
        store.soft_timeout = Some(SECOND);
        store.hard_timeout = Some(SECOND);
    });
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_source_says_expired_exactly_when_the_value_was() {
    let (cache, mock, _removed) = cache_with(options());
    let mut events = cache.events();
    let k = Key::from_text("product:1");
    let load = |cache: &Cache, value: u64| {
        let (cache, k) = (cache.clone(), k.clone());
        async move {
            cache
                .get_or_create_with_source(&k, async |entry| {
                    entry.time_to_live(10 * SECOND);
                    Ok::<_, DatabaseDown>(value)
                })
                .await
                .unwrap()
        }
    };

    let first = load(&cache, 1).await;
    assert_eq!(first.source, Source::Loaded);
    let hit = load(&cache, 9).await;
    assert_eq!(hit.source, Source::Cached);
    assert!(Arc::ptr_eq(&hit.value, &first.value) && !hit.source.is_expired());

    // The load fails: its caller and the one that joined it get the expired value, marked.
    mock.increment(11 * SECOND);
    let (release, release_rx) = oneshot::channel::<()>();
    let leader = tokio::spawn({
        let (cache, k) = (cache.clone(), k.clone());
        async move {
            cache
                .get_or_create_with_source(&k, async move |_| {
                    let _ = release_rx.await;
                    Err::<u64, _>(DatabaseDown)
                })
                .await
        }
    });
    let joiner = tokio::spawn(load(&cache, 9));
    joined(&cache, &k, 1).await;
    release.send(()).unwrap();
    let led = within("the failing load", leader).await.unwrap().unwrap();
    let joined_value = within("its joiner", joiner).await.unwrap();
    for served in [&led, &joined_value] {
        assert_eq!(served.source, Source::FailSafe);
        assert!(Arc::ptr_eq(&served.value, &first.value) && served.source.is_expired());
    }
    for _ in 0..2 {
        let event = events.try_recv().unwrap();
        assert_eq!(
            event,
            CacheEvent::ExpiredServed {
                source: Source::FailSafe
            }
        );
    }
    // Re-armed for the throttle, it is a hit, and still the expired value (no new event:
    // nothing failed on that call).
    let re_armed = load(&cache, 9).await;
    assert_eq!(re_armed.source, Source::FailSafe);
    assert!(Arc::ptr_eq(&re_armed.value, &first.value));
    let blocking = cache
        .get_or_create_sync_with_source(&k, |_| Ok::<_, DatabaseDown>(9_u64))
        .unwrap();
    assert_eq!(
        blocking.source,
        Source::FailSafe,
        "the blocking twin says so too"
    );
    assert!(events.try_recv().is_err());

    // Past the throttle the database answers again: fresh values, unmarked.
    mock.increment(31 * SECOND);
    let second = load(&cache, 2).await;
    assert_eq!((*second.value, second.source), (2, Source::Loaded));
    assert_eq!(load(&cache, 9).await.source, Source::Cached);

    // A soft timeout marks its value too.
    mock.increment(11 * SECOND);
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<()>();
    let caller = tokio::spawn({
        let (cache, k) = (cache.clone(), k.clone());
        async move {
            cache
                .get_or_create_detached_with_source(&k, async move |_| {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, DatabaseDown>(3_u64)
                })
                .await
        }
    });
    within("the load to start", started).await.unwrap();
    past_the_soft_timeout().await;
    let soft = within("the soft timeout", caller).await.unwrap().unwrap();
    assert_eq!(soft.source, Source::SoftTimeout);
    assert!(Arc::ptr_eq(&soft.value, &second.value) && soft.source.is_expired());
    let event = events.try_recv().unwrap();
    assert_eq!(
        event,
        CacheEvent::ExpiredServed {
            source: Source::SoftTimeout
        }
    );
    release.send(()).unwrap();
}
