//! Waiting for a Redis deployment to agree on something (a cluster forming, a failover
//! done): poll its own view, with a deadline, and say what did not happen in time.

use std::io;
use std::time::{Duration, Instant};

/// Polls `done` every `pause` until it holds; a `TimedOut` error naming `what` after
/// `timeout`.
pub(crate) fn poll_until(
    what: &str,
    timeout: Duration,
    pause: Duration,
    mut done: impl FnMut() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?} waiting until {what}"),
            ));
        }
        std::thread::sleep(pause);
    }
    Ok(())
}
