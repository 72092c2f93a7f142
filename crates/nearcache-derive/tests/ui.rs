//! Compile errors of `#[derive(CacheKey)]`: each `ui/*.rs` must fail with the message in its
//! `.stderr` (regenerate with `TRYBUILD=overwrite cargo test -p nearcache-derive --test ui`,
//! then read the result: it is the user's view of the error).

#[test]
fn compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
