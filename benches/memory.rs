//! Row 8 of the benchmark table: bytes per entry, counted by the global allocator.
//!
//! The binary runs on `cap::Cap<System>`, a counting wrapper of the system allocator (a
//! `GlobalAlloc` impl needs `unsafe`, which the workspace forbids, so the counting lives in
//! that crate). Each measure builds a cache, inserts `n` entries whose keys are made inside
//! the measure (so their text counts), and divides the bytes still allocated by the entries
//! held. nearcache (a `Cache` without backplane) and raw `quick_cache` store the same keys
//! (`Key`) and the same values (`Arc<[u64; 4]>`: 32 bytes plus the `Arc`'s 16).

mod common;

use std::alloc::System;
use std::sync::Arc;

use cap::Cap;
use common::{Goal, Payload, Product, Report, Row, Unit, VALUE};
use nearcache::{Cache, CacheOptions, Key, StoreOptions, cache_key};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Bytes allocated while `build` runs and still held by what it returns, per entry it
/// reports holding. The returned value is dropped after the count.
fn bytes_per_entry<T>(build: impl FnOnce() -> (T, usize)) -> f64 {
    let before = ALLOCATOR.allocated();
    let (held, entries) = build();
    let after = ALLOCATOR.allocated();
    drop(held);
    after.saturating_sub(before) as f64 / entries.max(1) as f64
}

fn key(i: usize) -> Key {
    cache_key!(Product, "get", &i)
}

fn nearcache(n: usize) -> f64 {
    bytes_per_entry(|| {
        let cache = Cache::new(CacheOptions {
            store: StoreOptions {
                max_capacity: n as u64,
                ..StoreOptions::default()
            },
            ..CacheOptions::default()
        })
        .expect("valid options");
        for i in 0..n {
            cache.set(key(i), VALUE);
        }
        let len = cache.len();
        (cache, len)
    })
}

fn quick_cache(n: usize) -> f64 {
    bytes_per_entry(|| {
        let cache: quick_cache::sync::Cache<Key, Arc<Payload>> = quick_cache::sync::Cache::new(n);
        for i in 0..n {
            cache.insert(key(i), Arc::new(VALUE));
        }
        let len = cache.len();
        (cache, len)
    })
}

fn main() {
    // Per-thread key buffers and other lazies are made once, outside every measure.
    drop(key(0));
    drop(Cache::new(CacheOptions::default()).expect("valid options"));

    let mut report = Report::new("memory");
    for (n, label) in [(100_000, "100k"), (1_000_000, "1M")] {
        let ours = nearcache(n);
        let theirs = quick_cache(n);
        report.push(Row::vs(
            "8",
            format!("bytes per entry, {label} entries (Key → Arc<[u64; 4]>)"),
            Unit::Bytes,
            ours,
            "quick_cache (Key)",
            theirs,
            Goal::RatioAtMost(1.25),
        ));
    }
}
