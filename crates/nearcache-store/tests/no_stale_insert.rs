//! Guarantee 3: an invalidation that arrives while a value loads stops that value from being
//! stored; its caller still gets it. Each test holds the factory at a gate, invalidates, then
//! lets it finish — a deterministic interleaving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::held_load::{Ties, hold_load};
use common::{Catalog, Gate, Pricing, key, runtime, store};
use nearcache_keys::Key;
use nearcache_store::Store;

/// Starts a blocking load of `key` whose factory pauses at a gate; runs `invalidate` while
/// it is paused; lets it finish. Returns what the caller got.
fn load_across(
    store: &Store,
    key: &Key,
    ties: Ties,
    invalidate: impl FnOnce(&Store),
) -> Arc<String> {
    let held = hold_load(store, key, ties, String::from("loaded"));
    invalidate(store);
    held.release.open();
    held.caller.join().unwrap().unwrap()
}

/// An invalidation that can overlap a load: its name, how the factory ties its entry to
/// regions, and the invalidation the test runs while the factory is paused.
type During = (&'static str, Ties, fn(&Store));

/// Each invalidation that can overlap a load.
const DURING_A_LOAD: [During; 9] = [
    ("remove during a load", Ties::Nothing, |store| {
        assert!(!store.remove(&key("k")), "nothing live to remove yet");
    }),
    // Also "a factory returning after the cache was cleared".
    ("clear during a load", Ties::Nothing, Store::clear),
    (
        "region expiry during a load",
        Ties::Catalog,
        Store::expire_region::<Catalog>,
    ),
    (
        "region expiry by name during a load",
        Ties::Catalog,
        |store| {
            store.expire_region_by_name("catalog").unwrap();
        },
    ),
    (
        "sub-key expiry during a load",
        Ties::SubKey("c1"),
        |store| {
            store.expire_region_key::<Catalog>("c1");
        },
    ),
    (
        "sub-key expiry by name during a load",
        Ties::SubKey("c1"),
        |store| {
            store.expire_region_key_by_name("catalog", "c1").unwrap();
        },
    ),
    // The flight started, then the region was expired, then the factory tied the entry to
    // it: the token it gets is newer than the load, so the value is not stored.
    (
        "region expiry before the factory asks for the region",
        Ties::CatalogLater,
        Store::expire_region::<Catalog>,
    ),
    // "c1" had no token at all when it was expired; one is installed at the expiry's epoch.
    (
        "sub-key expiry before the factory asks for the sub-key",
        Ties::SubKeyLater("c1"),
        |store| {
            store.expire_region_key_by_name("catalog", "c1").unwrap();
        },
    ),
    // The expiry's token is collected (nobody holds it) before the factory asks for the
    // sub-key: the watermark still makes the new token newer than the load.
    (
        "region expiry then garbage collection before the factory asks",
        Ties::SubKeyLater("c1"),
        |store| {
            store.expire_region_key::<Catalog>("c1");
            store.purge_now();
            assert_eq!(store.regions().sub_key_count(), 0);
        },
    ),
];

#[test]
fn every_invalidation_during_a_load_lets_the_caller_have_the_value_but_not_the_store() {
    for (case, ties, invalidate) in DURING_A_LOAD {
        let store = store();
        let key = key("k");
        let value = load_across(&store, &key, ties, invalidate);
        assert_eq!(*value, "loaded", "{case}: the caller still gets the value");
        assert!(
            store.get::<String>(&key).unwrap().is_none(),
            "{case}: but it was not stored"
        );
        assert_eq!(store.stats().inserts_rejected_stale, 1, "{case}");
        assert_eq!(store.len(), 0, "{case}");
    }
}

#[test]
fn set_during_a_load_keeps_the_set_value() {
    let store = store();
    let key = key("k");
    let value = load_across(&store, &key, Ties::Nothing, |store| {
        assert!(store.set(key.clone(), String::from("set")));
    });
    assert_eq!(*value, "loaded");
    assert_eq!(*store.get::<String>(&key).unwrap().unwrap(), "set");
    assert_eq!(store.stats().inserts_rejected_stale, 1);
}

#[test]
fn unrelated_expiries_during_a_load_do_not_block_the_insert() {
    let store = store();
    let key = key("k");
    let value = load_across(&store, &key, Ties::SubKey("c1"), |store| {
        store.expire_region::<Pricing>();
        store.expire_region_key::<Catalog>("c2");
        store.remove(&common::key("other"));
    });
    assert_eq!(*value, "loaded");
    let stored = store.get::<String>(&key).unwrap().expect("stored");
    assert!(Arc::ptr_eq(&stored, &value));
    assert_eq!(store.stats().inserts_rejected_stale, 0);
}

#[test]
fn invalidation_during_an_async_load_with_waiters() {
    let rt = runtime();
    let store = store();
    let key = key("k");
    let (release, opener) = Gate::closed();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let spawn = |release: Gate, started_tx: tokio::sync::mpsc::UnboundedSender<()>| {
        let (store, key) = (store.clone(), key.clone());
        rt.spawn(async move {
            store
                .get_or_create(&key, async |entry| {
                    entry.region::<Catalog>();
                    started_tx.send(()).unwrap();
                    release.pass().await;
                    Ok::<_, std::io::Error>(String::from("loaded"))
                })
                .await
        })
    };
    let leader = spawn(release.clone(), started_tx.clone());
    rt.block_on(started.recv()).unwrap();
    let waiter = spawn(release.clone(), started_tx);
    common::wait_for_waiters(&store, &key, 1);
    store.expire_region::<Catalog>();
    opener.open();
    let a = rt.block_on(leader).unwrap().unwrap();
    let b = rt.block_on(waiter).unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the waiter gets the flight's value too"
    );
    assert!(store.get::<String>(&key).unwrap().is_none());
    assert_eq!(store.stats().loads, 1);
}

#[test]
fn an_entry_stored_just_before_its_region_expires_is_never_returned() {
    // Region expiry takes no lock: an entry that slipped in is dead on arrival.
    let store = store();
    let key = key("k");
    store
        .get_or_create_sync(&key, |entry| {
            entry.region::<Catalog>();
            Ok::<_, std::io::Error>(1_u8)
        })
        .unwrap();
    store.expire_region::<Catalog>();
    assert!(store.get::<u8>(&key).unwrap().is_none());
}
