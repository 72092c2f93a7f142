//! The loaders for factories that cannot fail (`get_or_create_with`, `_with_sync`): they
//! share flights with the fallible loaders, their factory's `EntryOptions` apply, and the
//! errors that remain are not the factory's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nearcache::{Cache, Key, LoadError, region};
use propagation_support::poll_until;
use tokio::sync::oneshot;

mod propagation_support;

region!(Catalog = "catalog");

/// An infallible caller that arrives while a fallible load of the key runs joins it: its
/// own factory never runs and both get the same `Arc`; later callers of either kind hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infallible_loader_joins_a_running_load_and_hits_afterwards() {
    let cache = Cache::builder().build().unwrap();
    let key = Key::from_text("Product:get-1");
    let (release, released) = oneshot::channel::<()>();
    let leader = tokio::spawn({
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            cache
                .get_or_create(&key, async |_| {
                    released.await.unwrap();
                    Ok::<_, std::io::Error>(String::from("from the database"))
                })
                .await
                .unwrap()
        }
    });
    let ran = Arc::new(AtomicUsize::new(0));
    let joiner = tokio::spawn({
        let (cache, key, ran) = (cache.clone(), key.clone(), ran.clone());
        async move {
            // Wait until the leader's flight exists, so this call must join it.
            poll_until("the leader's load to start", || {
                cache.flight_waiters(&key).is_some()
            })
            .await;
            cache
                .get_or_create_with(&key, async |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    String::from("computed")
                })
                .await
                .unwrap()
        }
    });
    // The joiner is counted as a waiter of the flight before the load is let go.
    poll_until("the infallible caller to join the flight", || {
        cache.flight_waiters(&key) == Some(1)
    })
    .await;
    release.send(()).unwrap();
    let (led, joined) = (leader.await.unwrap(), joiner.await.unwrap());
    assert!(Arc::ptr_eq(&led, &joined));
    assert_eq!(*joined, "from the database");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the joiner's factory ran");

    let hit = cache
        .get_or_create_with(&key, async |_| String::from("not called"))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&hit, &led));
    let hit = cache
        .get_or_create_with_sync(&key, |_| String::from("not called"))
        .unwrap();
    assert!(Arc::ptr_eq(&hit, &led));
    assert_eq!(cache.stats().store.loads, 1);
}

/// The factory's `EntryOptions` apply: a value tied to a region goes with it.
#[tokio::test]
async fn the_factorys_entry_options_apply() {
    let cache = Cache::builder().build().unwrap();
    let key = Key::from_text("Product:get-2");
    let value = cache
        .get_or_create_with(&key, async |entry| {
            entry.region::<Catalog>();
            7_u64
        })
        .await
        .unwrap();
    assert_eq!(*value, 7);
    assert_eq!(cache.get::<u64>(&key).unwrap().as_deref(), Some(&7));
    cache.expire_region::<Catalog>().await;
    assert_eq!(cache.get::<u64>(&key).unwrap(), None);

    let blocking = cache
        .get_or_create_with_sync(&key, |entry| {
            entry.region::<Catalog>();
            8_u64
        })
        .unwrap();
    assert_eq!(*blocking, 8);
    cache.expire_region::<Catalog>().await;
    assert_eq!(cache.get::<u64>(&key).unwrap(), None);
}

/// A key that holds another type is a `TypeMismatch`, for either loader; the factory never
/// runs.
#[test]
fn a_key_of_another_type_is_a_type_mismatch() {
    let cache = Cache::builder().build().unwrap();
    let key = Key::from_text("Product:count");
    cache.get_or_create_with_sync(&key, |_| 3_u32).unwrap();
    let err = cache
        .get_or_create_with_sync(&key, |_| -> String { panic!("the factory ran") })
        .unwrap_err();
    assert!(matches!(err, LoadError::TypeMismatch(_)), "{err:?}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime
        .block_on(cache.get_or_create_with(&key, async |_| -> String { panic!("the factory ran") }))
        .unwrap_err();
    assert!(matches!(err, LoadError::TypeMismatch(_)), "{err:?}");
    assert!(
        err.to_string().contains("give each type its own keys"),
        "{err}"
    );
}
