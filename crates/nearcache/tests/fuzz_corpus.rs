//! The fuzz targets' checks on stable, in `cargo test`: every committed corpus input and every
//! crash ever found (`fuzz/regressions/<target>/`) goes through the same checks as under
//! libFuzzer (`fuzz/src/lib.rs`, included here), so a fixed crash stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code)]
#[path = "../../../fuzz/src/lib.rs"]
mod fuzz_checks;

use fuzz_checks::{ApplyHarness, check_wire_decode, seed_messages};

const TARGETS: [&str; 2] = ["wire_decode", "apply_message"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The committed corpus and regressions of `target`, sorted by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                inputs.push((path, bytes));
            }
        }
    }
    inputs.sort();
    inputs
}

/// Runs `check`; if it panics, says which input did before passing the panic on.
fn named(path: &Path, check: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(check)) {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        if what.is_empty() {
            resume_unwind(panic);
        }
        panic!("{}: {what}", path.display());
    }
}

#[test]
fn the_decoder_survives_its_corpus_and_past_crashes() {
    let inputs = inputs("wire_decode");
    assert!(inputs.len() >= 6, "the seed corpus is committed");
    for (path, bytes) in inputs {
        named(&path, || check_wire_decode(&bytes));
    }
}

#[test]
fn a_cache_survives_its_corpus_and_past_crashes_as_messages() {
    let inputs = inputs("apply_message");
    assert!(inputs.len() >= 6, "the seed corpus is committed");
    let mut harness = ApplyHarness::new();
    for (path, bytes) in inputs {
        named(&path, || harness.apply(&bytes));
    }
}

#[test]
fn the_harness_counts_garbage_as_rejected() {
    let mut harness = ApplyHarness::new();
    for garbage in [
        &b""[..],
        b"N",
        b"NCB",
        b"NCB\x02rest",
        b"GET / HTTP/1.1",
        &[0xff; 300],
    ] {
        harness.apply(garbage);
        check_wire_decode(garbage);
    }
}

/// The seed files are the encodings of `seed_messages()`: a change of the wire format shows
/// here. `NEARCACHE_WRITE_SEEDS=1 cargo test --test fuzz_corpus` rewrites them.
#[test]
fn the_seed_files_are_current_encodings() {
    let write = std::env::var_os("NEARCACHE_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        for (name, bytes) in seed_messages() {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (NEARCACHE_WRITE_SEEDS=1 writes it)",
                    path.display()
                )
            });
            assert_eq!(committed, bytes.as_ref(), "{} is stale", path.display());
        }
    }
}
