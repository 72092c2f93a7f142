//! Installing a missing program with apt-get, when this process may: as root, or through
//! password-less sudo. The Redis tests and the instruction-count bench use it, so a fresh
//! machine runs them instead of skipping.

use std::process::Command;

use crate::cmd;
use crate::redis::find_on_path;

/// Installs `packages` (`apt-get update`, then `apt-get install`) because `program` is
/// missing; errors name `program` and end with `hint` (how to install it by hand).
pub(crate) fn install(program: &str, packages: &[&str], hint: &str) -> Result<(), String> {
    if find_on_path("apt-get").is_none() {
        return Err(format!(
            "{program} not found and apt-get is unavailable; {hint}"
        ));
    }
    let sudo: &[&str] = if is_root() {
        &[]
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "{program} not found and no rights to install it; {hint}"
        ));
    };
    let install = [&["apt-get", "install", "-y", "-qq"][..], packages].concat();
    for args in [&["apt-get", "update", "-qq"][..], &install] {
        let mut full: Vec<&str> = sudo.to_vec();
        full.extend_from_slice(args);
        let mut command = Command::new(full[0]);
        command
            .args(&full[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(command).map_err(|e| format!("{e}; {hint}"))?;
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}
