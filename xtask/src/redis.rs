//! Making sure `redis-server` and `redis-cli` exist, because tests that need Redis start their
//! own (a single node, a Redis Cluster joined with `redis-cli --cluster create`, Sentinels run
//! as `redis-server --sentinel`) and never skip silently.

use std::path::{Path, PathBuf};

const INSTALL_HINT: &str = "install it with: sudo apt-get update && sudo apt-get install -y redis-server \
redis-tools (or put redis-server and redis-cli binaries on PATH)";

/// The programs the Redis tests run.
const PROGRAMS: [&str; 2] = ["redis-server", "redis-cli"];

/// The path of `redis-server`, installing it (and `redis-cli`, which Debian packages in
/// `redis-tools`) with apt-get first when one is missing and this process may (root, or
/// password-less sudo). Sentinel needs no package of its own: it is `redis-server --sentinel`.
pub(crate) fn ensure_installed() -> Result<PathBuf, String> {
    let missing: Vec<&str> = PROGRAMS
        .into_iter()
        .filter(|program| find_on_path(program).is_none())
        .collect();
    if let (true, Some(path)) = (missing.is_empty(), find_on_path("redis-server")) {
        return Ok(path);
    }
    eprintln!(
        "xtask: {} not on PATH; the Redis tests need it",
        missing.join(" and ")
    );
    crate::apt::install(
        "redis-server",
        &["redis-server", "redis-tools"],
        INSTALL_HINT,
    )?;
    // The Debian package starts a system server on 6379; tests never use it (each starts
    // its own on a free port), so leave it be rather than guess at the init system.
    if let Some(program) = PROGRAMS.into_iter().find(|p| find_on_path(p).is_none()) {
        return Err(format!(
            "{program} still not on PATH after installing; {INSTALL_HINT}"
        ));
    }
    find_on_path("redis-server")
        .ok_or_else(|| format!("redis-server still not on PATH after installing; {INSTALL_HINT}"))
}

pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
