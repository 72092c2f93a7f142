//! The local store of nearcache: an in-process cache on `quick_cache` with expiry, regions
//! and single-flight get-or-create shared by async and blocking callers.
//!
//! It knows nothing of other instances; the `nearcache` facade wires it to a backplane.
//! Applications use the facade; this crate is for building on the store directly.
//!
//! # What it guarantees
//!
//! - **Single flight.** Concurrent callers of one key, async and blocking mixed, share one
//!   load through one flight table: the factory runs once and all get the same `Arc`.
//! - **Failure isolation.** A factory's `Err` is never cached and goes to every caller of
//!   that flight as the same `Arc<E>`. A factory that panics, or an async caller dropped
//!   mid-load, abandons the flight and one waiter takes it over.
//! - **No stale insert, and no read goes back.** A `remove`, `set`, `clear` or region expiry
//!   that happens while a value loads keeps that value out of the store; the callers that
//!   overlapped it still get it, but a caller that starts after the invalidation returned
//!   never does (see the `flight` module's docs for how finely that is decided).
//! - **Expiry.** Absolute, sliding or both, per entry or by default; a dead entry is never
//!   returned. Region expiry is O(1); dead entries are purged in the background.
//! - **Fail-safe never serves what is known stale.** With `fail_safe_max_duration`, an entry
//!   whose time ran out is kept (never returned by reads) and stands in for a failed load of
//!   its key (an error, a panic, a hard timeout); an invalidated entry is never kept.
//!
//! # Costs
//!
//! - A hit: one shard read lock, under which the entry is checked in place and only its
//!   value's `Arc` is cloned (the one the caller gets), one atomic load of the clear count,
//!   one add (no `lock` prefix) to the calling thread's own counter stripe. No allocation. Entries tied to regions
//!   or tokens load one atomic per token; entries that expire by time also read the clock
//!   (`quanta`, the CPU counter where available: no system call; deadlines are kept in the
//!   counter's own ticks, so the reading is compared as it is, never scaled); sliding entries
//!   write their last access at most once per millisecond.
//! - An entry: 40 bytes inline in quick_cache's slot (the value's `Arc` with its vtable,
//!   deadline, the low 32 bits of the clear count it was loaded under, weight), plus the key
//!   text. 32 bits are enough because one `clear` in every 2^31 sweeps out every entry from
//!   before it (see `clears`). Entries with tokens, a sliding window, a
//!   fail-safe window or an eager refresh (and values re-armed by fail-safe) add one boxed record of 72 bytes (two inline tokens,
//!   the sliding state, the fail-safe window and soft timeout, the refresh time); more than two tokens spill
//!   the rest to one more allocation. The shards are quick_cache's single-threaded caches
//!   behind read-write locks (see `backend`), so a hit never clones the entry.
//! - A miss: one lock of the key's flight-table shard (never held across the factory).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use nearcache_keys::Key;
//! use nearcache_regions::region;
//! use nearcache_store::{Store, StoreOptions};
//!
//! region!(Catalog = "catalog");
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::new(StoreOptions {
//!     time_to_idle: Some(Duration::from_secs(15 * 60)),
//!     ..StoreOptions::default()
//! })?;
//! let key = Key::from_text("ProductService:search-shoes");
//! let hits: Arc<Vec<String>> = store
//!     .get_or_create(&key, async |entry| {
//!         entry.region_key::<Catalog>("c1");
//!         Ok::<_, std::io::Error>(vec![String::from("boot")])
//!     })
//!     .await?;
//! assert_eq!(hits.len(), 1);
//!
//! store.expire_region_key::<Catalog>("c1"); // O(1), however many entries
//! assert!(store.get::<Vec<String>>(&key)?.is_none());
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
#[cfg(feature = "tokio")]
mod background;
mod batch;
mod blocking;
mod clears;
mod clock;
mod entry;
mod error;
mod flight;
mod hash;
mod load;
mod options;
mod purge;
mod refresh;
mod removal;
mod shim;
mod shown;
#[cfg(all(test, shuttle))]
mod shuttle_tests;
mod source;
mod stats;
mod store;
mod timeout;
mod value;

pub use batch::BatchEntries;
pub use entry::EntryOptions;

/// The old name of [`EntryOptions`]: what a factory sets for the entry it loads.
#[deprecated(note = "renamed to `EntryOptions` (the options of the entry a factory loads)")]
pub type Entry = EntryOptions;
pub use error::{
    FactoryTimeout, FactoryTimeoutDetails, LoadError, OptionsError, TypeMismatch,
    TypeMismatchDetails, WouldDeadlock, WouldDeadlockDetails,
};
pub use options::{OnHardTimeout, StoreOptions};
pub use purge::PurgeProgress;
pub use removal::RemovalCause;
pub use shown::stable_key_hash;
pub use source::{Loaded, Source};
pub use stats::StoreStats;
pub use store::Store;

/// The clock type [`Store::with_clock`] takes (`Clock::mock()` in tests). A test hook (feature
/// `test-util`), not part of the semver-stable API.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use quanta::{Clock, Mock};
