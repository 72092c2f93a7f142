//! The live progress line: an indicatif bar on a terminal, a plain line a second otherwise
//! (CI logs get no escape codes). Both go to stderr; the summary goes to stdout.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::count;
use crate::timeline::Tally;

/// How often [`Progress::update`] should be called on a terminal.
pub(crate) const TERMINAL_REFRESH: Duration = Duration::from_millis(100);
/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// The progress display of one run.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    duration: Duration,
    last_plain: Instant,
}

impl Progress {
    /// Starts showing progress of a run of `duration`.
    pub(crate) fn start(duration: Duration) -> Progress {
        let now = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{bar:20}] {elapsed:>3} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            start: now,
            duration,
            last_plain: now,
        }
    }

    /// Shows `tally`, the run's totals so far.
    pub(crate) fn update(&mut self, tally: Tally) {
        let elapsed = self.start.elapsed();
        let line = line(tally, elapsed.min(self.duration));
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                bar.set_message(line);
            }
            None => {
                if self.last_plain.elapsed() >= PLAIN_EVERY {
                    self.last_plain = Instant::now();
                    let _ = writeln!(
                        std::io::stderr(),
                        "[{:>4.1}s/{:.0}s] {line}",
                        elapsed.as_secs_f64(),
                        self.duration.as_secs_f64()
                    );
                }
            }
        }
    }

    /// Removes the bar (the summary follows).
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `requests 1,234 (617/s)  db queries 12  writes 3  stale 0`.
fn line(tally: Tally, elapsed: Duration) -> String {
    let rate = if elapsed.is_zero() {
        0
    } else {
        (tally.requests as f64 / elapsed.as_secs_f64()) as u64
    };
    format!(
        "requests {} ({}/s)  db queries {}  writes {}  stale reads {}",
        count(tally.requests),
        count(rate),
        count(tally.db_queries),
        count(tally.writes),
        count(tally.stale_reads),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_running_totals() {
        let tally = Tally {
            requests: 20_000,
            db_queries: 30,
            writes: 4,
            stale_reads: 0,
            ..Tally::default()
        };
        assert_eq!(
            line(tally, Duration::from_secs(2)),
            "requests 20,000 (10,000/s)  db queries 30  writes 4  stale reads 0"
        );
        assert!(line(tally, Duration::ZERO).contains("(0/s)"));
    }
}
