//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs each cargo-fuzz target of `fuzz/` for
//! N seconds, from the committed corpus, and fails on the first crash.
//!
//! cargo-fuzz needs a nightly toolchain (sanitizers, libFuzzer's coverage flags); the
//! project's own toolchain stays pinned. This task makes sure both exist, installing what is
//! missing (`rustup toolchain install nightly --profile minimal`, `cargo install cargo-fuzz`),
//! and stops with the command to run when it cannot. New inputs libFuzzer finds go to a
//! scratch corpus under `fuzz/target/`, so the committed one stays a handful of seeds.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cmd;

/// The targets in `fuzz/fuzz_targets/`.
pub(crate) const TARGETS: [&str; 2] = ["wire_decode", "apply_message"];

/// The cargo-fuzz release this task installs when none is present.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

const NIGHTLY_HINT: &str = "rustup toolchain install nightly --profile minimal";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("`--seconds` takes a positive number of seconds")?;
            }
            target if TARGETS.contains(&target) => targets.push(target),
            other => {
                return Err(format!(
                    "unknown argument `{other}`: cargo xtask fuzz [--seconds N] [{}]",
                    TARGETS.join("|")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    fuzz(&targets, seconds)
}

/// Runs each of `targets` for `seconds`.
pub(crate) fn fuzz(targets: &[&str], seconds: u64) -> Result<(), String> {
    ensure_tools()?;
    let root = cmd::project_root();
    // Build every target first, so the time limit is spent fuzzing.
    let started = Instant::now();
    let mut build = nightly_cargo();
    build.args(["fuzz", "build"]);
    cmd::run(build)?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for target in targets {
        let scratch = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("could not create {}: {e}", scratch.display()))?;
        let log_path = root.join("fuzz/target").join(format!("{target}.log"));
        let log = File::create(&log_path)
            .map_err(|e| format!("could not create {}: {e}", log_path.display()))?;
        let mut run = nightly_cargo();
        run.args(["fuzz", "run", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // A single input taking this long is a hang, reported as a crash.
                "-timeout=30",
                "-rss_limit_mb=2048",
                "-print_funcs=0",
                "-print_final_stats=1",
            ])
            .stdout(Stdio::null())
            .stderr(log);
        eprintln!(
            "xtask: fuzzing {target} for {seconds} s (libFuzzer's log: {})",
            log_path.display()
        );
        let started = Instant::now();
        let status = run
            .status()
            .map_err(|e| format!("could not start cargo fuzz: {e}"))?;
        if !status.success() {
            let tail = tail(&log_path, 40);
            return Err(format!(
                "fuzz target {target} failed ({status}) after {:.0} s:\n{tail}\n\
                 The crashing input is in fuzz/artifacts/{target}/. Reproduce it with \
                 `cargo +nightly fuzz run {target} <file>`, then keep it as a regression: copy \
                 it to fuzz/regressions/{target}/ (crates/nearcache/tests/fuzz_corpus.rs replays that folder) \
                 and fix the bug.",
                started.elapsed().as_secs_f64()
            ));
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines() {
            if line.starts_with("Done ") || line.starts_with("stat::") {
                eprintln!("  {line}");
            }
        }
    }
    Ok(())
}

/// `cargo` of the nightly toolchain, in the project root.
fn nightly_cargo() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .current_dir(cmd::project_root())
        // Set by the pinned toolchain's cargo for its children; nightly brings its own.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}

fn succeeds(mut command: Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure a nightly toolchain and cargo-fuzz exist, installing them if needed.
fn ensure_tools() -> Result<(), String> {
    let mut nightly = Command::new("rustup");
    nightly.args(["run", "nightly", "rustc", "--version"]);
    if !succeeds(nightly) {
        eprintln!("xtask: no nightly toolchain; cargo-fuzz needs one");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        cmd::run(install).map_err(|e| {
            format!("{e}; fuzzing needs a nightly toolchain: install it with `{NIGHTLY_HINT}`")
        })?;
    }
    let mut fuzz = nightly_cargo();
    fuzz.args(["fuzz", "--version"]);
    if !succeeds(fuzz) {
        eprintln!("xtask: cargo-fuzz is not installed; installing it (about a minute)");
        let mut install = cmd::cargo();
        install.args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]);
        cmd::run(install).map_err(|e| {
            format!(
                "{e}; install it with `cargo install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION}`"
            )
        })?;
    }
    Ok(())
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
