//! A blocking load held inside its factory at a gate, so a test can invalidate (or start
//! other callers) while it is in flight, then let it finish.

use std::convert::Infallible;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use nearcache_keys::Key;
use nearcache_store::{EntryOptions, LoadError, Store};

use super::{Catalog, Gate, Opener};

/// How a held load's factory ties its entry to regions, and when: before it pauses, or only
/// after (after whatever the test did meanwhile).
#[derive(Debug, Clone, Copy)]
pub enum Ties {
    /// No region.
    Nothing,
    /// `region::<Catalog>()` before the pause.
    Catalog,
    /// `region_key::<Catalog>(sub)` before the pause.
    SubKey(&'static str),
    /// `region::<Catalog>()` only after the pause.
    CatalogLater,
    /// `region_key::<Catalog>(sub)` only after the pause.
    SubKeyLater(&'static str),
}

impl Ties {
    /// Ties `entry` if this is the moment for it (`after_pause` or before).
    fn tie(self, entry: &mut EntryOptions, after_pause: bool) {
        match (self, after_pause) {
            (Ties::Catalog, false) | (Ties::CatalogLater, true) => {
                entry.region::<Catalog>();
            }
            (Ties::SubKey(sub), false) | (Ties::SubKeyLater(sub), true) => {
                entry.region_key::<Catalog>(sub);
            }
            _ => {}
        }
    }
}

/// A load started by [`hold_load`] (or [`hold_outcome`]), paused in its factory.
pub struct HeldLoad<T, E = Infallible> {
    /// The loading caller's thread: what its `get_or_create_sync` returned.
    pub caller: JoinHandle<Result<Arc<T>, LoadError<E>>>,
    /// Lets the factory go on.
    pub release: Opener,
}

/// Starts a blocking load of `key` on a thread of its own whose factory ties its entry as
/// `ties` says, pauses at a gate, and then returns `value`; returns once it has paused.
pub fn hold_load<T: Send + Sync + 'static>(
    store: &Store,
    key: &Key,
    ties: Ties,
    value: T,
) -> HeldLoad<T> {
    hold_outcome(store, key, ties, Ok(value))
}

/// [`hold_load`] whose factory returns `outcome` (a value or its error) once it goes on.
pub fn hold_outcome<T, E>(
    store: &Store,
    key: &Key,
    ties: Ties,
    outcome: Result<T, E>,
) -> HeldLoad<T, E>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    let (gate, release) = Gate::closed();
    let (started_tx, started) = mpsc::channel();
    let caller = {
        let (store, key) = (store.clone(), key.clone());
        std::thread::spawn(move || {
            store.get_or_create_sync(&key, |entry| {
                ties.tie(entry, false);
                started_tx.send(()).expect("the test waits for the pause");
                gate.pass_blocking();
                ties.tie(entry, true);
                outcome
            })
        })
    };
    started.recv().expect("the factory runs");
    HeldLoad { caller, release }
}
