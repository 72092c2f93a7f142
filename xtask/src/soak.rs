//! `cargo xtask soak --minutes N [--release] [ARGS...]`: the soak with Redis faults
//! (`examples/soak/`), three instances through a private redis-server that is killed,
//! restarted and has its subscribers `CLIENT KILL`ed at random. Other arguments (`--bound
//! 5s`, `--strict-rss`, `--topology cluster|sentinel` for a Redis Cluster or Sentinel set-up
//! that fails over) go to the soak.

use crate::{cmd, redis};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut release = false;
    let mut minutes = None;
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--release" => release = true,
            "--minutes" => {
                minutes = Some(
                    args.next()
                        .filter(|m| m.parse::<f64>().is_ok_and(|m| m > 0.0))
                        .ok_or("`--minutes` takes a positive number")?
                        .clone(),
                );
            }
            other => rest.push(other.to_owned()),
        }
    }
    soak(minutes.as_deref().unwrap_or("1"), release, &rest)
}

/// Runs the soak for `minutes` (a debug build unless `release`).
pub(crate) fn soak(minutes: &str, release: bool, extra: &[String]) -> Result<(), String> {
    redis::ensure_installed()?;
    let mut soak = cmd::cargo();
    soak.args(["run", "--example", "soak"]);
    if release {
        soak.arg("--release");
    }
    soak.args(["--", "--minutes", minutes]).args(extra);
    cmd::run(soak)
}
