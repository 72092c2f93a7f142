//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::{cmd, demo, fuzz, redis, soak};

/// Seconds each fuzz target runs in CI.
const FUZZ_SMOKE_SECONDS: u64 = 30;

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if let Some(arg) = args.first() {
        return Err(format!(
            "`cargo xtask test` takes no arguments (got `{arg}`)"
        ));
    }
    let redis_server = redis::ensure_installed()?;
    eprintln!("xtask: using {}", redis_server.display());

    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--check"]);
    cmd::run(fmt)?;

    let mut clippy = cmd::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    cmd::run(clippy)?;

    // The facade without its default features must build too (features are additive).
    let mut minimal = cmd::cargo();
    minimal.args(["check", "--package", "nearcache", "--no-default-features"]);
    cmd::run(minimal)?;

    let mut test = cmd::cargo();
    test.args(["test", "--workspace", "--all-features", "--no-fail-fast"]);
    cmd::run(test)?;

    // Deeper model checking of single flight: the same build as the step above (the store's
    // `shuttle` feature is on under --all-features), more schedules, only the shuttle tests.
    let mut shuttle = cmd::cargo();
    shuttle
        .args(["test", "--workspace", "--all-features", "--lib", "shuttle_"])
        .env("NEARCACHE_SHUTTLE_ITERATIONS", "3000");
    cmd::run(shuttle)?;

    let mut doc = cmd::cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(doc)?;

    // Benchmarks are never run in CI, only compiled so they cannot rot.
    let mut bench = cmd::cargo();
    bench.args(["bench", "--workspace", "--no-run"]);
    cmd::run(bench)?;

    demo::smoke()?;

    // Hardening: a fuzz smoke on nightly from the committed corpus, and one minute
    // of the soak with Redis faults.
    fuzz::fuzz(&fuzz::TARGETS, FUZZ_SMOKE_SECONDS)?;
    soak::soak("1", false, &[])?;
    eprintln!("xtask: all checks passed");
    Ok(())
}
