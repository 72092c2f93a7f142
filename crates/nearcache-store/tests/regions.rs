//! Guarantee 4 (regions): region and sub-key expiry, the global region, expiry by name,
//! independent stores, purge of expired entries, bounded token maps, and entries that never
//! inherit each other's tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::{Catalog, Pricing, key, runtime, store, store_with, wait_for_purges};
use nearcache_keys::Key;
use nearcache_store::{EntryOptions, Store, StoreOptions};

fn put(store: &Store, key: &Key, configure: impl FnOnce(&mut EntryOptions)) {
    store
        .get_or_create_sync(key, |entry| {
            configure(entry);
            Ok::<_, Infallible>(key.as_str().to_owned())
        })
        .unwrap();
}

fn alive(store: &Store, key: &Key) -> bool {
    store.get::<String>(key).unwrap().is_some()
}

#[test]
fn expiring_a_sub_key_leaves_the_other_sub_keys() {
    let store = store();
    let (c1, c2) = (key("c1-product"), key("c2-product"));
    put(&store, &c1, |e| {
        e.region_key::<Catalog>("c1");
    });
    put(&store, &c2, |e| {
        e.region_key::<Catalog>("c2");
    });
    store.expire_region_key::<Catalog>("c1");
    assert!(!alive(&store, &c1));
    assert!(alive(&store, &c2), "c2 is untouched");
}

#[test]
fn expiring_a_region_expires_its_entries_and_sub_keys_only() {
    let store = store();
    let (whole, sub, other, none) = (key("whole"), key("sub"), key("other"), key("none"));
    put(&store, &whole, |e| {
        e.region::<Catalog>();
    });
    put(&store, &sub, |e| {
        e.region_key::<Catalog>("c1");
    });
    put(&store, &other, |e| {
        e.region::<Pricing>();
    });
    put(&store, &none, |_| {});
    store.expire_region::<Catalog>();
    assert!(!alive(&store, &whole));
    assert!(
        !alive(&store, &sub),
        "a sub-key's entries belong to the region"
    );
    assert!(alive(&store, &other));
    assert!(alive(&store, &none));
}

#[test]
fn clear_expires_everything_including_entries_of_no_region() {
    let store = store();
    let keys: Vec<Key> = (0..3).map(|i| key(&format!("k{i}"))).collect();
    put(&store, &keys[0], |_| {});
    put(&store, &keys[1], |e| {
        e.region::<Catalog>();
    });
    assert!(store.set(keys[2].clone(), String::from("set")));
    store.clear();
    for k in &keys {
        assert!(!alive(&store, k), "{k} survived clear");
    }
    put(&store, &keys[0], |_| {});
    assert!(
        alive(&store, &keys[0]),
        "entries loaded after the clear live"
    );
}

#[test]
fn expiry_by_name_is_the_same_as_typed_expiry() {
    let store = store();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    put(&store, &a, |e| {
        e.region::<Catalog>();
    });
    put(&store, &b, |e| {
        e.region_key::<Catalog>("c1");
    });
    put(&store, &c, |e| {
        e.region_key_by_name("catalog", "c2").unwrap();
    });
    store.expire_region_key_by_name("catalog", "c1").unwrap();
    assert!(alive(&store, &a) && !alive(&store, &b) && alive(&store, &c));
    store.expire_region_key::<Catalog>("c2");
    assert!(!alive(&store, &c), "a by-name entry dies by typed expiry");
    store.expire_region_by_name("catalog").unwrap();
    assert!(!alive(&store, &a));
}

#[test]
fn bad_region_names_are_refused_and_expire_nothing() {
    let store = store();
    let k = key("k");
    put(&store, &k, |e| {
        e.region::<Catalog>();
    });
    assert!(store.expire_region_by_name("").is_err());
    assert!(
        store
            .expire_region_key_by_name(&"x".repeat(257), "c1")
            .is_err()
    );
    assert!(alive(&store, &k));
    assert_eq!(store.regions().epoch(), 0);
}

#[test]
fn two_stores_in_one_process_are_independent() {
    let (one, two) = (store(), store());
    let k = key("shared-key-text");
    for s in [&one, &two] {
        put(s, &k, |e| {
            e.region_key::<Catalog>("c1");
        });
    }
    one.expire_region::<Catalog>();
    assert!(!alive(&one, &k));
    assert!(alive(&two, &k), "regions are per store");
    one.clear();
    assert!(alive(&two, &k), "clear is per store");
    two.expire_region_key::<Catalog>("c1");
    assert!(!alive(&two, &k));
}

const FILL: usize = 100_000;

fn filled_store() -> Store {
    let store = store_with(StoreOptions {
        max_capacity: 2 * FILL as u64,
        ..StoreOptions::default()
    });
    for i in 0..FILL {
        store.set_with(key(&format!("product-{i}")), i, |e| {
            e.region::<Catalog>();
        });
    }
    store.set(key("outside"), 0_usize);
    assert_eq!(store.len(), FILL + 1);
    assert_eq!(store.weight(), FILL as u64 + 1);
    store
}

/// 100k entries in one region, expired with one call: the background purger (woken by the
/// expiry) brings length and weight down without anyone touching the keys.
#[test]
fn a_region_of_100k_entries_is_purged_in_the_background() {
    let store = filled_store();
    let epoch = store.regions().epoch();
    store.expire_region::<Catalog>();
    assert_eq!(
        store.regions().epoch(),
        epoch + 1,
        "one token flip, whatever the size"
    );
    wait_for_purges(&store);
    assert_eq!(store.len(), 1, "only the entry outside the region is left");
    assert_eq!(store.weight(), 1);
    assert!(store.stats().expirations >= FILL as u64);
}

/// Expiring sub-keys that no entry is tied to wakes the purger but costs no sweep: an entry
/// that died by time stays until a sweep that has a reason to run (the interval's, a held
/// expiry's, or `purge_now`). The old purger swept the whole cache on every expiry.
#[test]
fn expiries_that_kill_nothing_skip_the_sweep_and_held_ones_do_not() {
    let (store, mock) = common::mock_store(StoreOptions {
        purge_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    });
    put(&store, &key("timed"), |e| {
        e.time_to_live(Duration::from_secs(1));
    });
    put(&store, &key("tied"), |e| {
        e.region_key::<Catalog>("used");
    });
    mock.increment(Duration::from_secs(2));
    for i in 0..20 {
        store.expire_region_key::<Catalog>(&format!("unused-{i}"));
    }
    wait_for_purges(&store);
    assert_eq!(
        store.len(),
        2,
        "no sweep ran: the dead timed entry is still held"
    );
    assert_eq!(store.stats().expirations, 0);

    store.expire_region_key::<Catalog>("used");
    wait_for_purges(&store);
    assert_eq!(
        store.len(),
        0,
        "a held expiry sweeps (the timed entry goes with it)"
    );
    assert_eq!(store.stats().expirations, 2);
}

#[test]
fn a_region_of_100k_entries_is_purged_on_demand() {
    let store = filled_store();
    store.expire_region::<Catalog>();
    assert!(store.get::<usize>(&key("product-7")).unwrap().is_none());
    store.purge_now();
    assert_eq!(store.len(), 1);
    assert_eq!(store.weight(), 1);
}

#[test]
fn sub_key_tokens_are_dropped_once_no_entry_holds_them() {
    let store = store();
    for round in 0..5 {
        for i in 0..1_000 {
            put(&store, &key(&format!("r{round}-{i}")), |e| {
                e.region_key::<Catalog>(&format!("sub-{round}-{i}"));
            });
        }
        assert!(store.regions().sub_key_count() >= 1_000);
        store.expire_region::<Catalog>();
        store.purge_now();
        assert_eq!(store.len(), 0);
        assert_eq!(
            store.regions().sub_key_count(),
            0,
            "round {round}: map is bounded"
        );
    }
    // Tokens of live entries stay.
    put(&store, &key("live"), |e| {
        e.region_key::<Catalog>("kept");
    });
    store.purge_now();
    assert_eq!(store.regions().sub_key_count(), 1);
    store.expire_region_key::<Catalog>("kept");
    assert!(!alive(&store, &key("live")));
}

/// `load_both` loads `parent` in `Catalog` with `child`, in `Pricing`, loaded inside its
/// factory. Expiring either region must leave the other entry alive: neither inherited the
/// other's region.
fn assert_neither_inherits<T>(
    store: &Store,
    (parent, child): (&Key, &Key),
    load_both: impl Fn() -> T,
) {
    // The expiry, the entry it ends, the entry it must leave alive, and what that shows.
    type Case<'a> = (fn(&Store), &'a Key, &'a Key, &'a str);
    let cases: [Case<'_>; 2] = [
        (
            Store::expire_region::<Catalog>,
            parent,
            child,
            "the child did not inherit the parent's region",
        ),
        (
            Store::expire_region::<Pricing>,
            child,
            parent,
            "the parent did not inherit the child's region",
        ),
    ];
    for (expire, expired, kept, case) in cases {
        store.clear();
        load_both();
        expire(store);
        assert!(!alive(store, expired), "{case}: its own entry expired");
        assert!(alive(store, kept), "{case}");
    }
}

/// A factory that loads another key inside itself: neither entry inherits the other's
/// regions, in either direction.
#[test]
fn nested_loads_never_inherit_tokens_blocking() {
    let store = store();
    let (parent, child) = (key("parent"), key("child"));
    let load_both = || {
        store
            .get_or_create_sync(&parent, |entry| {
                entry.region::<Catalog>();
                let inner = store
                    .get_or_create_sync(&child, |entry| {
                        entry.region::<Pricing>();
                        Ok::<_, Infallible>(String::from("child"))
                    })
                    .unwrap();
                Ok::<_, Infallible>(format!("parent of {inner}"))
            })
            .unwrap()
    };
    assert_neither_inherits(&store, (&parent, &child), load_both);
}

#[test]
fn nested_loads_never_inherit_tokens_async() {
    let rt = runtime();
    let store = store();
    let (parent, child) = (key("parent"), key("child"));
    let load_both = || {
        rt.block_on(store.get_or_create(&parent, async |entry| {
            entry
                .region::<Catalog>()
                .time_to_live(Duration::from_secs(3600));
            let inner = store
                .get_or_create(&child, async |entry| {
                    entry.region::<Pricing>();
                    Ok::<_, Infallible>(String::from("child"))
                })
                .await
                .unwrap();
            Ok::<_, Infallible>(format!("parent of {inner}"))
        }))
        .unwrap()
    };
    assert_neither_inherits(&store, (&parent, &child), load_both);
}
