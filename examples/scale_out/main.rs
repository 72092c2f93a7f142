//! The scale-out demo (`cargo run --release --example scale_out`): N instances of a service,
//! each with its own nearcache, in front of a slow product database that a writer keeps
//! updating.
//!
//! ```sh
//! cargo run --release --example scale_out                              # in-process backplane
//! cargo run --release --example scale_out -- --redis auto --processes  # real processes, Redis
//! cargo run --release --example scale_out -- --redis auto-cluster --processes --faults
//! cargo run --release --example scale_out -- --help
//! ```
//!
//! N instances of a product service each cache reads from a slow, versioned database in
//! their own nearcache; instance 0 also updates products (database first, then the cache)
//! and its invalidations reach the others through the backplane. Every read is checked:
//! a read is **stale** if it returned a version older than one written more than the
//! propagation bound (`--bound`, default 1 s) before the read started. The demo prints the
//! database queries the caches saved and the measured propagation latency, and exits 1 if
//! it saw a stale read — a correctness check anyone can run.
//!
//! * [`cli`]: flags and defaults.
//! * [`db`]: the product database: a SQLite file every instance opens.
//! * [`write_log`]: write times of every version, and the stale-read check.
//! * [`workload`]: readers (Zipf-distributed products and catalog pages) and the writer.
//! * [`instance`]: one instance: a cache and its workload.
//! * [`local`]: every instance in this process (in-process bus, Redis, or no backplane).
//! * [`processes`]: one OS process per instance, conducted over their standard streams.
//! * [`timeline`]: every instance's running totals over time.
//! * [`own_redis`]: the Redis (one server or a cluster) the demo starts for itself.
//! * [`faults`]: `--faults`: the demo breaks its own Redis on a schedule, and what it cost.
//! * [`report`], [`progress`], [`plot`]: the summary table, the live progress line, and the
//!   SVG plot of the run.

mod cli;
mod clock;
mod db;
mod faults;
mod instance;
mod local;
#[cfg(feature = "metrics")]
mod metrics_endpoint;
mod own_redis;
mod plot;
mod processes;
mod progress;
mod report;
#[path = "../shared/sqlite.rs"]
mod sqlite;
mod timeline;
mod workload;
mod write_log;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Command, Config, RedisTarget};
use crate::report::human_duration;

/// Exit code of a run that saw a stale read (or could not check every read).
pub(crate) const EXIT_STALE: u8 = 1;
/// Exit code of a run that could not run (bad flags, Redis unreachable, …).
pub(crate) const EXIT_ERROR: u8 = 2;

/// Why a demo run could not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// A flag or setting is wrong.
    #[error("{0}")]
    Usage(String),
    /// A cache could not be built or could not connect to Redis.
    #[error("could not build a cache")]
    Build(#[from] nearcache::BuildError),
    /// The demo database could not be created or opened.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The demo database's directory could not be created.
    #[error("could not create a directory for the demo database: {0}")]
    DbDir(std::io::Error),
    /// `--redis auto` or `--redis auto-cluster` could not start a private Redis.
    #[error("could not start a private Redis: {0}")]
    RedisServer(std::io::Error),
    /// An instance process could not be started or waited for.
    #[error("could not run an instance process: {0}")]
    Spawn(std::io::Error),
    /// An instance process misbehaved.
    #[error("instance {0} {1}")]
    Instance(usize, String),
    /// An instance process lost its parent.
    #[error("lost the parent process: {0}")]
    Parent(std::io::Error),
    /// Something took far longer than it should.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A reader or writer task panicked.
    #[error("a demo task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// The whole demo program: parses the command line, runs, prints the summary to stdout
/// (progress and errors go to stderr), and says how it went: 0 when no read was stale,
/// [`EXIT_STALE`] when one was, [`EXIT_ERROR`] when it could not run.
fn main() -> ExitCode {
    let config = match Config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help(text)) => {
            let _ = write!(std::io::stdout(), "{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            let _ = write!(std::io::stderr(), "{message}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    // Errors and warnings of the library (and stale reads) go to stderr; RUST_LOG to see
    // more. With --faults the library's warnings about the faults are expected (the summary
    // counts them), so only errors show.
    let quiet = if config.faults { "error" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&config) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(summary)) => {
            let _ = write!(std::io::stdout(), "\n{}", summary.render());
            let path = config.plot.clone().unwrap_or_else(plot::default_path);
            match plot::write_svg(&path, &summary) {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "Plot: {}", path.display());
                }
                Err(error) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "scale_out: could not write the plot to {}: {error}",
                        path.display()
                    );
                }
            }
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_STALE)
            }
        }
        Err(error) => {
            // What failed, then each cause under it.
            let mut text = format!("scale_out: {error}");
            let mut cause = std::error::Error::source(&error);
            while let Some(error) = cause {
                text.push_str(&format!(": {error}"));
                cause = error.source();
            }
            let _ = writeln!(std::io::stderr(), "{text}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Runs `config`: the summary of a run, or `None` for an instance process (its report went
/// to its parent).
///
/// # Errors
///
/// [`DemoError`] when the run could not complete.
pub(crate) fn run(config: &Config) -> Result<Option<report::Summary>, DemoError> {
    // `--redis auto` or `auto-cluster`: a private Redis for this run, stopped when it ends.
    let server =
        own_redis::OwnRedis::start(config.redis.as_ref()).map_err(DemoError::RedisServer)?;
    let redis_url = match (&config.redis, &server) {
        (_, Some(server)) => Some(server.url()),
        (Some(RedisTarget::Url(url)), None) => Some(url.clone()),
        _ => None,
    };
    let (server, faults) = match server {
        Some(server) if config.faults => {
            (None, Some(faults::Injector::new(server, config.duration)))
        }
        server => (server, None),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Spawn)?;
    let child = config.child();
    let show_progress = child.is_none();
    // The instances serve their metrics: in a `--processes` run, each instance process.
    if let Some(addr) = config.metrics
        && !(config.processes && child.is_none())
    {
        serve_metrics(&runtime, addr, child.as_ref().map(|c| c.index))?;
    }
    if let Some(child) = &child {
        return runtime
            .block_on(processes::run_instance(config, child))
            .map(|()| None);
    }
    // The run's database, in a directory removed when the run ends.
    let dir = tempfile::Builder::new()
        .prefix("nearcache-demo-")
        .tempdir()
        .map_err(DemoError::DbDir)?;
    let db_path = create_database(&dir, config)?;
    let summary = runtime.block_on(async {
        if config.processes {
            let url = redis_url.as_deref().unwrap_or_default();
            processes::run_parent(config, &db_path, url, faults, show_progress).await
        } else {
            local::run(
                config,
                &db_path,
                redis_url.as_deref(),
                faults,
                show_progress,
            )
            .await
        }
    });
    drop(server);
    summary.map(Some)
}

/// Starts the `--metrics` endpoint on `runtime` (before any cache is built).
///
/// # Errors
///
/// [`DemoError::Usage`] when it cannot start, or the demo was built without the `metrics`
/// feature.
fn serve_metrics(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    instance: Option<usize>,
) -> Result<(), DemoError> {
    #[cfg(feature = "metrics")]
    {
        let who = match instance {
            Some(i) => format!("instance {i}"),
            None => "scale_out".to_owned(),
        };
        runtime.block_on(metrics_endpoint::serve(addr, &who))?;
        Ok(())
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (runtime, addr, instance);
        Err(DemoError::Usage(
            "--metrics needs the demo built with `--features metrics`".into(),
        ))
    }
}

/// Creates the run's database in `dir`: every product at its first version.
///
/// # Errors
///
/// [`DemoError::Db`] when SQLite cannot create it.
fn create_database(dir: &tempfile::TempDir, config: &Config) -> Result<PathBuf, DemoError> {
    let path = dir.path().join(db::FILE_NAME);
    db::Database::create(&path, config.layout())?;
    Ok(path)
}

/// The first line of the summary: what ran.
fn title(config: &Config, elapsed: Duration) -> String {
    let redis = match &config.redis {
        Some(target) if target.is_cluster() => "Redis Cluster backplane",
        Some(target) if target.is_sentinel() => "Redis (Sentinel) backplane",
        _ => "Redis backplane",
    };
    let mode = match (&config.redis, config.processes, config.no_backplane) {
        (_, _, true) => "NO backplane (caches that do not tell each other)".to_owned(),
        (None, _, false) => "in-process backplane, one process".to_owned(),
        (Some(_), false, false) => format!("{redis}, one process"),
        (Some(_), true, false) => format!("{redis}, one OS process per instance"),
    };
    let mode = if config.no_replay {
        format!("{mode}, replay off: every loss clears")
    } else {
        mode.to_owned()
    };
    format!(
        "nearcache scale-out demo: {} instances ({mode}), {} readers each, {} run\n\
         {} products (Zipf {}) in {} catalogs in SQLite, query latency {} on top, {} writes/s by instance 0",
        config.instances,
        config.readers,
        human_duration(elapsed),
        config.products,
        config.zipf,
        config.catalogs,
        human_duration(config.db_latency),
        config.write_rate,
    )
}
