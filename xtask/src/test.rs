//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::{cmd, demo, fuzz, redis, soak};

/// Seconds each fuzz target runs in CI.
const FUZZ_SMOKE_SECONDS: u64 = 30;
/// Minutes of the soak on one redis-server in CI.
const SOAK_MINUTES: &str = "1";
/// Minutes of the soak on each other topology in CI: long enough for a few failovers, kills
/// and a slot migration (one every 2–6 s after a short warm-up), short enough to keep the
/// whole run well under 30 minutes.
const TOPOLOGY_SOAK_MINUTES: &str = "0.5";
/// The other topologies the CI soak runs on (`--topology`).
const SOAK_TOPOLOGIES: [&str; 2] = ["cluster", "sentinel"];

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

    shuttle()?;

    let mut doc = cmd::cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(doc)?;

    // Benchmarks are never run in CI, only compiled so they cannot rot.
    let mut bench = cmd::cargo();
    bench.args(["bench", "--workspace", "--no-run"]);
    cmd::run(bench)?;

    demo::smoke()?;

    // Hardening: a fuzz smoke on nightly from the committed corpus, one minute of the soak
    // with Redis faults on one server, and half a minute each on a Redis Cluster and behind
    // Sentinels (failovers, killed primaries, a migrating slot).
    fuzz::fuzz(&fuzz::TARGETS, FUZZ_SMOKE_SECONDS)?;
    soak::soak(SOAK_MINUTES, false, &[])?;
    for topology in SOAK_TOPOLOGIES {
        soak::soak(
            TOPOLOGY_SOAK_MINUTES,
            false,
            &["--topology".to_owned(), topology.to_owned()],
        )?;
    }
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// Model checking of the store's single flight: its unit tests built with `--cfg shuttle` (the
/// flight table on shuttle's primitives), only the shuttle tests, with more schedules than
/// their default. The flag changes every crate's build, so it gets a target directory of its
/// own and leaves the main build cache alone; only nearcache-store and its dependencies are
/// built there.
pub(crate) fn shuttle() -> Result<(), String> {
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg shuttle"),
        _ => "--cfg shuttle".to_owned(),
    };
    let target_dir = cmd::project_root().join("target").join("shuttle");
    let mut shuttle = cmd::cargo();
    shuttle
        .args([
            "test",
            "--package",
            "nearcache-store",
            "--lib",
            "--profile",
            "shuttle",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("shuttle_")
        .env("RUSTFLAGS", rustflags)
        .env("NEARCACHE_SHUTTLE_ITERATIONS", "3000");
    cmd::run(shuttle)
}
