//! Project automation, run as `cargo xtask <task>` (see `.cargo/config.toml`).
//!
//! One module per task, plain `std::process::Command`, no dependencies: this crate is built
//! before everything else and must stay quick to compile.
#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line tool talks on its terminal

use std::process::ExitCode;

mod apt;
mod bench;
mod cmd;
mod demo;
mod fuzz;
mod redis;
mod soak;
mod test;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test     fmt check, clippy -D warnings, every test, deeper shuttle run, docs, benches
           compiled, demo smoke, 30 s fuzz smoke per target, 1-minute soak with Redis faults
           (what CI runs; installs redis-server first if it can)
  bench    every benchmark (Redis ones on their own redis-server), then one table of
           ratios against quick_cache, moka and raw redis-rs; --quick: the same table in
           under two minutes (short measurements); --instructions: row 1 counted in
           instructions under callgrind (installs valgrind first if it can)
  demo     the scale-out demo (same as cargo run --release --example scale_out); extra
           arguments are passed on
  shuttle  model checking of the store's single flight (the step of `test`): its shuttle
           tests built with --cfg shuttle in target/shuttle, 3000 schedules each
  redis    make sure redis-server is installed (installs it with apt-get when possible)
  soak     [--minutes N] [--release] [--bound 5s] [--strict-rss]: three instances through a
           real redis-server under load while it is killed/restarted and its subscribers
           CLIENT KILLed (default 1 minute; fails on a stale read past the bound or a panic)
  fuzz     [--seconds N] [wire_decode|apply_message]: run the cargo-fuzz targets, N s each
           (default 60; installs a nightly toolchain and cargo-fuzz when missing)
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("test") => test::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("demo") => demo::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
        Some("soak") => soak::run(&rest),
        Some("shuttle") => match rest.first() {
            Some(arg) => Err(format!(
                "`cargo xtask shuttle` takes no arguments (got `{arg}`)"
            )),
            None => test::shuttle(),
        },
        Some("redis") => redis::ensure_installed().map(|path| {
            eprintln!("xtask: redis-server is {}", path.display());
        }),
        Some("-h" | "--help" | "help") | None => {
            eprint!("{USAGE}");
            return if task.is_none() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
