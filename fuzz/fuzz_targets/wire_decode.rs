//! The wire decoder on arbitrary bytes: never a panic, and what it accepts is within the
//! limits and round-trips (see `nearcache_fuzz::check_wire_decode`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nearcache_fuzz::check_wire_decode(data);
});
