//! Compile errors of `cache_key!`: each `ui/*.rs` must fail with the message in its
//! `.stderr` (regenerate with `TRYBUILD=overwrite cargo test -p nearcache-keys --test ui`,
//! then read the result).

#[test]
fn compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
