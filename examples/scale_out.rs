//! The scale-out demo: N instances of a service, each with its own nearcache, in front of a
//! slow product database that a writer keeps updating. It shows the database queries the
//! caches save and how fast invalidations travel, and checks that no instance serves a
//! stale product (exit code 1 if one did).
//!
//! ```sh
//! cargo run --release --example scale_out                          # in-process backplane
//! cargo run --release --example scale_out -- --redis auto --processes  # real processes, Redis
//! cargo run --release --example scale_out -- --help
//! ```
//!
//! The parts live in `nearcache_suite::demo` (src/demo/), with their tests.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Errors and warnings of the library (and stale reads) go to stderr; RUST_LOG to see more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    nearcache_suite::demo::main(std::env::args().skip(1))
}
