//! `cargo xtask demo`: the scale-out demo, and its short CI run.

use std::path::PathBuf;
use std::process::Command;

use crate::cmd;

/// Runs the demo with the user's arguments (a release build: the numbers are the point).
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    // `cargo xtask demo -- --help` works like `cargo xtask demo --help`.
    let args = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => args,
    };
    let mut demo = cmd::cargo();
    demo.args(["run", "--release", "--example", "scale_out", "--"])
        .args(args);
    cmd::run(demo).map_err(explain)
}

/// The demo as CI runs it: 2 s with every instance in one process on the in-process bus,
/// then 4 s with one OS process per instance through a private redis-server (`--redis
/// auto`, started from PATH, which `cargo xtask test` made sure of) that the demo breaks on
/// its schedule (`--faults`: subscribers killed twice, Redis restarted once), then 6 s the
/// same way through a private Redis Cluster (`--redis auto-cluster`, joined with
/// `redis-cli`) whose channel's primary fails over to its replica (about 8 s in all, the
/// cluster's start included). Any non-zero exit fails CI: 1 for a stale read, 2 for a run
/// that could not complete.
///
/// The example is a debug build with the features of `cargo test --workspace
/// --all-features`, which CI ran just before: it is already built, where a release build
/// would compile the whole dependency tree again. The stale-read check holds in either.
pub(crate) fn smoke() -> Result<(), String> {
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--workspace",
        "--all-features",
        "--example",
        "scale_out",
    ]);
    cmd::run(build)?;
    let exe = target_dir()
        .join("debug")
        .join("examples")
        .join("scale_out");
    let runs: [&[&str]; 3] = [
        &["--duration", "2s"],
        &[
            "--duration",
            "4s",
            "--redis",
            "auto",
            "--processes",
            "--faults",
        ],
        &[
            "--duration",
            "6s",
            "--redis",
            "auto-cluster",
            "--processes",
            "--faults",
        ],
    ];
    for args in runs {
        let mut demo = Command::new(&exe);
        demo.current_dir(cmd::project_root()).args(args);
        cmd::run(demo).map_err(explain)?;
    }
    Ok(())
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR`, or `target/` in the project root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => cmd::project_root().join(dir),
        None => cmd::project_root().join("target"),
    }
}

fn explain(error: String) -> String {
    format!(
        "{error}\n  (the demo exits 1 when it saw a stale read, 2 when it could not run; \
         its summary or error is above)"
    )
}
