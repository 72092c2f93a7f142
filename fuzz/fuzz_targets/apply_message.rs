//! Arbitrary bytes delivered to a running cache as a peer's message: never a panic or a
//! hang, rejects counted, nothing re-published, no entry planted (see
//! `nearcache_fuzz::ApplyHarness`).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use nearcache_fuzz::ApplyHarness;

thread_local! {
    // One cache for the whole run: building one per input would measure the builder.
    static HARNESS: RefCell<Option<ApplyHarness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|harness| {
        harness
            .borrow_mut()
            .get_or_insert_with(ApplyHarness::new)
            .apply(data);
    });
});
