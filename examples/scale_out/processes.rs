//! A `--processes` run: each instance is its own OS process (this same program, re-run with
//! the hidden `--instance i` flag), so the scale-out is real: separate address spaces,
//! separate runtimes, and only Redis between them.
//!
//! Redis carries the invalidations (the backplane); the database is the run's SQLite file,
//! which every instance opens (hidden `--db PATH`): every instance reads the same rows, and
//! each one checks its reads against a mirror of the database's write log it refreshes every
//! few milliseconds. A Redis outage therefore costs the instances their invalidations for a
//! while, never their database.
//!
//! The parent starts the instances and plays the conductor over their standard streams, one
//! line per message:
//!
//! | from | line | meaning |
//! |---|---|---|
//! | instance | `nearcache-demo ready` | subscribed to the backplane, database mirrored |
//! | parent | `go` | start reading (instance 0 also starts writing) |
//! | instance | `nearcache-demo progress {µs since go} {json}` | running totals ([`Tally`]), every [`SAMPLE_EVERY`] |
//! | instance | `nearcache-demo done` | the workload is over |
//! | parent | `finish` | every instance is done: report |
//! | instance | `nearcache-demo report {json}` | its [`InstanceReport`], then it exits |
//!
//! Waiting for every instance to be done before any reports lets the last invalidations
//! arrive, so the received counts are complete. Instances log to stderr, which they share
//! with the parent.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nearcache::Cache;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::DemoError;
use crate::cli::{ChildArgs, Config, RedisTarget};
use crate::db::Database;
use crate::faults::Injector;
use crate::instance::{Instance, cache_options, channel, new_run_id};
use crate::progress::{Progress, TERMINAL_REFRESH};
use crate::report::{InstanceReport, Summary};
use crate::timeline::{SAMPLE_EVERY, Tally, Timeline};
use crate::workload::{Counters, Popularity, Workload};

/// What starts every line an instance sends its parent.
const PREFIX: &str = "nearcache-demo ";
/// How long instances may take to connect and say they are ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the run's end the instances may take to report and exit.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A message from an instance to its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// Connected and mirrored; waiting for `go`.
    Ready,
    /// Running totals, and when (µs since `go`).
    Progress {
        /// µs since the instance was told `go`.
        at_us: u64,
        /// The totals.
        tally: Tally,
    },
    /// The workload is over; waiting for `finish`.
    Done,
    /// The instance's numbers.
    Report(Box<InstanceReport>),
}

impl Line {
    /// The line as sent (without the newline).
    pub(crate) fn render(&self) -> String {
        let body = match self {
            Line::Ready => "ready".to_owned(),
            Line::Done => "done".to_owned(),
            Line::Progress { at_us, tally } => format!("progress {at_us} {}", json(tally)),
            Line::Report(report) => format!("report {}", json(report.as_ref())),
        };
        format!("{PREFIX}{body}")
    }

    /// Parses a line sent by [`render`](Self::render); `None` for anything else.
    pub(crate) fn parse(line: &str) -> Option<Line> {
        let body = line.strip_prefix(PREFIX)?;
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        match kind {
            "ready" => Some(Line::Ready),
            "done" => Some(Line::Done),
            "progress" => {
                let (at_us, tally) = rest.split_once(' ')?;
                Some(Line::Progress {
                    at_us: at_us.parse().ok()?,
                    tally: serde_json::from_str(tally).ok()?,
                })
            }
            "report" => serde_json::from_str(rest)
                .ok()
                .map(|r| Line::Report(Box::new(r))),
            _ => None,
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// The parent of a `--processes` run: runs one process per instance on the database at
/// `db_path` with Redis at `redis_url` (and `faults` injected into it), and gathers their
/// reports.
///
/// # Errors
///
/// [`DemoError`] when an instance cannot start, exits early or fails.
pub(crate) async fn run_parent(
    config: &Config,
    db_path: &Path,
    redis_url: &str,
    faults: Option<Injector>,
    show_progress: bool,
) -> Result<Summary, DemoError> {
    let run_id = new_run_id();
    let exe = std::env::current_exe().map_err(DemoError::Spawn)?;
    let n = config.instances;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Option<String>)>();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    let mut stdins: Vec<ChildStdin> = Vec::with_capacity(n);
    for index in 0..n {
        let mut command = Command::new(&exe);
        if config.faults && std::env::var_os("RUST_LOG").is_none() {
            // The instances' warnings about the faults are expected: the summary counts them.
            command.env("RUST_LOG", "error");
        }
        let mut child = command
            .args(config.child_args(index, &run_id, redis_url, db_path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(DemoError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(DemoError::Instance(
                index,
                "its standard streams were not piped".into(),
            ));
        };
        stdins.push(stdin);
        children.push(child);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((index, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((index, None));
        });
    }
    drop(tx);

    let mut ready = 0;
    tokio::time::timeout(START_TIMEOUT, async {
        while ready < n {
            match rx.recv().await {
                Some((_, Some(line))) => {
                    if Line::parse(&line) == Some(Line::Ready) {
                        ready += 1;
                    }
                }
                Some((index, None)) => {
                    return Err(DemoError::Instance(
                        index,
                        "exited before it was ready".into(),
                    ));
                }
                None => return Err(DemoError::Instance(0, "no instance is running".into())),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| DemoError::Timeout("the instances to connect to Redis"))??;

    tell(&mut stdins, "go").await?;
    let started = Instant::now();
    let channel = channel(&run_id);
    let injector = faults.map(|faults| faults.spawn(started.into_std(), channel));
    let mut elapsed = config.duration;
    let mut tallies = vec![Tally::default(); n];
    let mut timeline = Timeline::default();
    let mut reports: Vec<Option<InstanceReport>> = vec![None; n];
    let mut done = 0;
    let mut progress = show_progress.then(|| Progress::start(config.duration));
    let mut ticks = tokio::time::interval(TERMINAL_REFRESH);
    let limit = tokio::time::sleep_until(started + config.duration + FINISH_TIMEOUT);
    tokio::pin!(limit);
    while reports.iter().any(Option::is_none) {
        tokio::select! {
            message = rx.recv() => match message {
                Some((index, Some(line))) => match Line::parse(&line) {
                    Some(Line::Progress { at_us, tally }) => {
                        tallies[index] = tally;
                        timeline.push_one(index, at_us as f64 / 1e6, tally);
                    }
                    Some(Line::Done) => {
                        done += 1;
                        if done == n {
                            elapsed = started.elapsed();
                            tell(&mut stdins, "finish").await?;
                        }
                    }
                    Some(Line::Report(report)) => reports[index] = Some(*report),
                    Some(Line::Ready) | None => {}
                },
                Some((index, None)) => {
                    if reports[index].is_none() {
                        return Err(DemoError::Instance(index, "exited without a report (its errors are above)".into()));
                    }
                }
                None => break,
            },
            _ = ticks.tick() => if let Some(progress) = progress.as_mut() {
                progress.update(Tally::sum(&tallies));
            },
            () = &mut limit => return Err(DemoError::Timeout("the instances to report")),
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    // The server (if the injector had it) stays up until the instances have exited.
    let (_server, faults) = match injector {
        Some(injector) => {
            let (server, records) = injector.await?;
            (Some(server), records)
        }
        None => (None, Vec::new()),
    };
    for (index, mut child) in children.into_iter().enumerate() {
        let status = tokio::time::timeout(FINISH_TIMEOUT, child.wait())
            .await
            .map_err(|_| DemoError::Timeout("the instances to exit"))?
            .map_err(DemoError::Spawn)?;
        if !status.success() {
            return Err(DemoError::Instance(index, format!("exited with {status}")));
        }
    }
    let instances = reports
        .into_iter()
        .enumerate()
        .map(|(index, report)| {
            report.ok_or_else(|| DemoError::Instance(index, "sent no report".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Summary {
        title: crate::title(config, elapsed),
        bound: config.bound,
        elapsed,
        instances,
        timeline,
        faults,
    })
}

async fn tell(stdins: &mut [ChildStdin], word: &str) -> Result<(), DemoError> {
    for (index, stdin) in stdins.iter_mut().enumerate() {
        let sent = async {
            stdin.write_all(format!("{word}\n").as_bytes()).await?;
            stdin.flush().await
        };
        sent.await
            .map_err(|e| DemoError::Instance(index, format!("cannot be told `{word}`: {e}")))?;
    }
    Ok(())
}

/// One instance process of a `--processes` run.
///
/// # Errors
///
/// [`DemoError`] when Redis cannot be reached at the start, the database cannot be opened,
/// or the parent goes away.
pub(crate) async fn run_instance(config: &Config, child: &ChildArgs) -> Result<(), DemoError> {
    let Some(RedisTarget::Url(url)) = &config.redis else {
        return Err(DemoError::Usage(
            "an instance process needs --redis URL".into(),
        ));
    };
    let layout = config.layout();
    let popularity = Popularity::new(config.products, config.zipf).map_err(DemoError::Usage)?;
    let cache = Cache::builder()
        .options(cache_options(config, &child.run_id, Some(url)))
        .connect()
        .await?;
    cache.ready().await;
    let db = Database::open(&child.db, layout, config.db_latency)?.with_faults(config.db_faults());
    let mirror = db.kept_mirror(config.products, config.bound).await?;
    let instance = Instance {
        index: child.index,
        workload: Workload {
            cache: cache.clone(),
            db: db.reopen()?,
            log: Arc::clone(&mirror.log),
            layout,
            popularity,
            bound: u64::try_from(config.bound.as_micros()).unwrap_or(u64::MAX),
            page_every: config.page_every,
            counters: Arc::new(Counters::default()),
            ttl: config.ttl,
        },
        readers: config.readers,
        write_rate: config.write_rate,
    };

    let mut orders = BufReader::new(tokio::io::stdin()).lines();
    say(&Line::Ready)?;
    wait_for(&mut orders, "go").await?;
    let go = Instant::now();
    let deadline = go + config.duration;
    let reporting = instance.clone();
    let reporter = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticks.tick().await;
            if say(&progress(go, reporting.tally())).is_err() {
                return;
            }
        }
    });
    let pending = instance.run(deadline).await;
    reporter.abort();
    let pending = pending?;
    say(&progress(go, instance.tally()))?;
    say(&Line::Done)?;
    wait_for(&mut orders, "finish").await?;

    // Every read started before now: a mirror complete up to now judges them all.
    mirror.complete().await?;
    let still = instance.workload.judge_pending(pending);
    let report = instance.report(still.len() as u64);
    say(&Line::Report(Box::new(report)))?;
    cache.shutdown().await;
    Ok(())
}

fn progress(go: Instant, tally: Tally) -> Line {
    Line::Progress {
        at_us: u64::try_from(go.elapsed().as_micros()).unwrap_or(u64::MAX),
        tally,
    }
}

fn say(line: &Line) -> Result<(), DemoError> {
    use std::io::Write;
    writeln!(std::io::stdout(), "{}", line.render()).map_err(DemoError::Parent)
}

async fn wait_for<R: tokio::io::AsyncBufRead + Unpin>(
    orders: &mut tokio::io::Lines<R>,
    word: &str,
) -> Result<(), DemoError> {
    loop {
        match orders.next_line().await.map_err(DemoError::Parent)? {
            Some(line) if line.trim() == word => return Ok(()),
            Some(_) => {}
            None => {
                return Err(DemoError::Parent(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the parent went away before `{word}`"),
                )));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_noise_is_ignored() {
        let report = InstanceReport {
            index: 2,
            totals: Tally {
                requests: 10,
                ..Tally::default()
            },
            ..InstanceReport::default()
        };
        for line in [
            Line::Ready,
            Line::Done,
            Line::Progress {
                at_us: 1_250_000,
                tally: Tally {
                    requests: 5,
                    ..Tally::default()
                },
            },
            Line::Report(Box::new(report)),
        ] {
            let text = line.render();
            assert!(text.starts_with(PREFIX) && !text.contains('\n'), "{text}");
            assert_eq!(Line::parse(&text), Some(line));
        }
        for noise in [
            "",
            "ready",
            "nearcache-demo",
            "nearcache-demo what",
            "nearcache-demo report {",
        ] {
            assert_eq!(Line::parse(noise), None, "{noise}");
        }
    }
}
