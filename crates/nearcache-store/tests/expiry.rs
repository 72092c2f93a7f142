//! Guarantee 4 (time): absolute, sliding or both; per entry or by default; an expired entry
//! is never returned. Every test runs on a mock clock — no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{key, mock_store};
use nearcache_keys::Key;
use nearcache_store::{EntryOptions, Mock, Store, StoreOptions};

const SECOND: Duration = Duration::from_secs(1);

fn load(store: &Store, key: &Key, configure: impl FnOnce(&mut EntryOptions)) {
    store
        .get_or_create_sync(key, |entry| {
            configure(entry);
            Ok::<_, Infallible>(String::from("v"))
        })
        .unwrap();
}

/// A store on a mock clock whose entries live `time_to_live` unless they say otherwise, and
/// idle out after `time_to_idle` if given.
fn with_defaults(time_to_live: Duration, time_to_idle: Option<Duration>) -> (Store, Arc<Mock>) {
    mock_store(StoreOptions {
        time_to_live: Some(time_to_live),
        time_to_idle,
        ..StoreOptions::default()
    })
}

/// A store on a mock clock (no default expiry) holding `name`, loaded with the entry
/// options `configure` sets.
fn loaded(name: &str, configure: impl FnOnce(&mut EntryOptions)) -> (Store, Arc<Mock>, Key) {
    let (store, clock) = mock_store(StoreOptions::default());
    let k = key(name);
    load(&store, &k, configure);
    (store, clock, k)
}

fn alive(store: &Store, key: &Key) -> bool {
    store.get::<String>(key).unwrap().is_some()
}

#[test]
fn absolute_expiration_ends_the_entry_at_its_deadline() {
    let (store, clock, k) = loaded("absolute", |e| {
        e.time_to_live(10 * SECOND);
    });
    clock.increment(10 * SECOND - Duration::from_nanos(1));
    assert!(alive(&store, &k));
    clock.increment(Duration::from_nanos(1));
    assert!(!alive(&store, &k), "dead exactly at the deadline");
    assert_eq!(
        store.stats().expirations,
        1,
        "the dead entry found by the read is removed"
    );
    assert_eq!(store.len(), 0);
}

#[test]
fn reads_do_not_extend_an_absolute_expiration() {
    let (store, clock, k) = loaded("absolute", |e| {
        e.time_to_live(10 * SECOND);
    });
    for _ in 0..9 {
        clock.increment(SECOND);
        assert!(alive(&store, &k));
    }
    clock.increment(SECOND);
    assert!(!alive(&store, &k));
}

#[test]
fn sliding_expiration_is_extended_by_each_read() {
    let (store, clock, k) = loaded("sliding", |e| {
        e.time_to_idle(10 * SECOND);
    });
    for _ in 0..5 {
        clock.increment(6 * SECOND);
        assert!(alive(&store, &k), "read within the window: extended");
    }
    clock.increment(10 * SECOND);
    assert!(!alive(&store, &k), "idle for the whole window");
}

#[test]
fn sliding_and_absolute_together_end_at_whichever_comes_first() {
    let (store, clock, k) = loaded("both", |e| {
        e.time_to_idle(10 * SECOND).time_to_live(15 * SECOND);
    });
    clock.increment(8 * SECOND);
    assert!(alive(&store, &k));
    clock.increment(6 * SECOND);
    assert!(
        alive(&store, &k),
        "14 s: read 6 s ago, before the absolute deadline"
    );
    clock.increment(SECOND);
    assert!(
        !alive(&store, &k),
        "15 s: the absolute deadline wins over recent reads"
    );

    let idle = key("both-idle");
    load(&store, &idle, |e| {
        e.time_to_idle(10 * SECOND).time_to_live(60 * SECOND);
    });
    clock.increment(10 * SECOND);
    assert!(!alive(&store, &idle), "the sliding window wins when idle");
}

#[test]
fn defaults_apply_to_entries_that_set_nothing() {
    let (store, clock) = with_defaults(5 * SECOND, None);
    let k = key("default");
    load(&store, &k, |_| {});
    store.set(key("set-default"), String::from("v"));
    clock.increment(5 * SECOND);
    assert!(!alive(&store, &k));
    assert!(
        !alive(&store, &key("set-default")),
        "set uses the defaults too"
    );
}

#[test]
fn entry_options_override_defaults_field_by_field() {
    let (store, clock) = with_defaults(5 * SECOND, Some(3 * SECOND));
    // Overrides the absolute expiration only: the default sliding window still applies.
    let absolute = key("absolute-override");
    load(&store, &absolute, |e| {
        e.time_to_live(20 * SECOND);
    });
    // Overrides the sliding window only: the default absolute deadline still applies.
    let sliding = key("sliding-override");
    load(&store, &sliding, |e| {
        e.time_to_idle(60 * SECOND);
    });
    for _ in 0..4 {
        clock.increment(2 * SECOND);
        assert!(
            alive(&store, &absolute),
            "kept alive by reads, past the default 5 s"
        );
    }
    assert!(
        !alive(&store, &sliding),
        "8 s: past the default absolute 5 s"
    );
    clock.increment(3 * SECOND);
    assert!(
        !alive(&store, &absolute),
        "idle for the default sliding 3 s"
    );
}

#[test]
fn absolute_expiration_at_an_instant() {
    let (store, clock, k) = loaded("at", |e| {
        e.expires_at(Instant::now() + 10 * SECOND);
    });
    clock.increment(9 * SECOND);
    assert!(alive(&store, &k));
    clock.increment(SECOND);
    assert!(!alive(&store, &k));

    let past = key("at-past");
    load(&store, &past, |e| {
        e.expires_at(Instant::now() - SECOND);
    });
    assert!(!alive(&store, &past), "a deadline already past: not stored");
}

#[test]
fn zero_durations_mean_returned_but_not_stored() {
    let (store, _clock) = mock_store(StoreOptions::default());
    let value = store
        .get_or_create_sync(&key("zero"), |e| {
            e.time_to_live(Duration::ZERO);
            Ok::<_, Infallible>(1_u8)
        })
        .unwrap();
    assert_eq!(*value, 1, "the caller gets the value");
    assert!(store.get::<u8>(&key("zero")).unwrap().is_none());
    load(&store, &key("zero-sliding"), |e| {
        e.time_to_idle(Duration::ZERO);
    });
    assert!(!alive(&store, &key("zero-sliding")));
    assert!(!store.set_with(key("zero-set"), 1_u8, |e| {
        e.time_to_live(Duration::ZERO);
    }));
    assert_eq!(store.len(), 0);
    assert_eq!(store.stats().inserts, 0);
    assert_eq!(
        store.stats().expirations,
        3,
        "each refused as dead on arrival"
    );

    let (by_default, _clock) = with_defaults(Duration::ZERO, None);
    load(&by_default, &key("k"), |_| {});
    assert!(
        !alive(&by_default, &key("k")),
        "a zero default stores nothing"
    );
}

#[test]
fn overflowing_durations_mean_never_and_do_not_panic() {
    let (store, clock) = with_defaults(Duration::MAX, Some(Duration::MAX));
    let k = key("forever");
    load(&store, &k, |e| {
        e.time_to_live(Duration::MAX).time_to_idle(Duration::MAX);
    });
    load(&store, &key("defaults"), |_| {});
    clock.increment(Duration::from_secs(100 * 365 * 24 * 3600));
    assert!(alive(&store, &k));
    assert!(alive(&store, &key("defaults")));
    assert_eq!(store.purge_now(), 0);
}

#[test]
fn purge_removes_time_expired_entries_without_reading_them() {
    let (store, clock) = mock_store(StoreOptions::default());
    for i in 0..100 {
        load(&store, &key(&format!("k{i}")), |e| {
            e.time_to_live(if i % 2 == 0 { SECOND } else { 60 * SECOND });
        });
    }
    clock.increment(2 * SECOND);
    assert_eq!(store.len(), 100, "nothing removed until something looks");
    assert_eq!(store.purge_now(), 50);
    assert_eq!(store.len(), 50);
    assert_eq!(store.stats().expirations, 50);
}

#[test]
fn the_background_purger_sweeps_time_expired_entries_on_its_interval() {
    let (store, clock) = mock_store(StoreOptions {
        purge_interval: Duration::from_millis(5),
        ..StoreOptions::default()
    });
    for i in 0..100 {
        load(&store, &key(&format!("k{i}")), |e| {
            e.time_to_idle(SECOND);
        });
    }
    clock.increment(2 * SECOND);
    // A pass that started after the clock moved must finish: wait for two more passes.
    let passes = store.purge_progress().passes;
    assert!(store.wait_for_purge(|p| p.passes >= passes + 2, Duration::from_secs(30)));
    assert_eq!(store.len(), 0);
}
