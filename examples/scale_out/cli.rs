//! The demo's command line (clap): flags with sane defaults, checked before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

/// What `--help` says before the flags.
const ABOUT: &str = "\
nearcache scale-out demo: N instances of a service, each with its own nearcache, reading
products from a slow SQLite database while a writer updates them. Shows how many database
queries the caches save, how fast invalidations reach the other instances, and checks that
no instance ever serves a stale product. Exits 1 if it saw a stale read, 2 if it could not
run.";

/// What `--help` says after the flags.
const AFTER_HELP: &str = "\
Durations: 250us, 2ms, 1s, 1s 500ms, 1m, or a number of seconds (20, 1.5). RUST_LOG=warn (or debug) shows the library's log.

Examples:
  cargo run --release --example scale_out                                  # in-process backplane
  cargo run --release --example scale_out -- --redis auto --processes      # one process each
  cargo run --release --example scale_out -- --redis auto --processes --faults --duration 20s
  cargo run --release --example scale_out -- --redis auto-cluster --processes --faults --duration 20s";

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// A server the user runs.
    Url(String),
    /// A private `redis-server` the demo starts (and stops) itself.
    Auto,
    /// A private Redis Cluster (3 primaries, 3 replicas) the demo starts (and stops) itself.
    AutoCluster,
}

impl RedisTarget {
    /// Whether the demo starts this Redis itself (and may therefore break it).
    pub(crate) fn is_own(&self) -> bool {
        matches!(self, RedisTarget::Auto | RedisTarget::AutoCluster)
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        match self {
            RedisTarget::AutoCluster => true,
            RedisTarget::Auto => false,
            RedisTarget::Url(url) => scheme_of(url).ends_with("+cluster"),
        }
    }

    /// Whether this is a primary behind Sentinels.
    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self, RedisTarget::Url(url) if scheme_of(url).ends_with("+sentinel"))
    }
}

/// The hidden arguments of an instance process in a `--processes` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildArgs {
    /// The instance's number.
    pub(crate) index: usize,
    /// The run's id (names its Redis channel).
    pub(crate) run_id: String,
    /// The run's database file.
    pub(crate) db: PathBuf,
}

/// A demo run's settings.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "scale_out",
    about = ABOUT,
    after_help = AFTER_HELP,
    override_usage = "cargo run --release --example scale_out -- [FLAGS]"
)]
pub(crate) struct Config {
    /// Instances of the service; instance 0 also runs the writer.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) instances: usize,
    /// How long the readers run.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Latency added to every database query, as a remote database's round trip.
    #[arg(long, value_name = "D", default_value = "2ms", value_parser = duration)]
    pub(crate) db_latency: Duration,
    /// Product updates per second (by instance 0).
    #[arg(long, value_name = "R", default_value_t = 50.0)]
    pub(crate) write_rate: f64,
    /// Concurrent readers per instance.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) readers: usize,
    /// Products in the database, read with a Zipf distribution.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub(crate) products: u32,
    /// Catalogs; one read in --page-every is a whole catalog page.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub(crate) catalogs: u32,
    /// One read in N is a catalog page (0: only product reads).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) page_every: u32,
    /// Zipf exponent of product popularity (0 is uniform).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub(crate) zipf: f64,
    /// Stale-read bound: a read is stale if it returned a version older than one written more
    /// than this before the read started.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = duration)]
    pub(crate) bound: Duration,
    /// Use Redis as the backplane: a redis://, rediss://, redis+cluster:// or
    /// redis+sentinel:// URL; auto: start a private redis-server from PATH; auto-cluster:
    /// start a private Redis Cluster (3 primaries, 3 replicas; needs redis-cli).
    #[arg(long, value_name = "URL|auto|auto-cluster", value_parser = redis_target)]
    pub(crate) redis: Option<RedisTarget>,
    /// Run each instance as its own OS process (needs --redis); each opens the run's SQLite
    /// file.
    #[arg(long)]
    pub(crate) processes: bool,
    /// Caches that do not tell each other: shows the stale reads nearcache prevents (exits 1
    /// when the run is longer than the bound).
    #[arg(long)]
    pub(crate) no_backplane: bool,
    /// With --redis auto: kill the subscribers' connections and restart Redis during the run;
    /// with --redis auto-cluster: fail the channel's primary over to its replica, and kill the
    /// new primary in a run of 10 s or more. Shows what each fault cost.
    #[arg(long)]
    pub(crate) faults: bool,
    /// Serve the caches' metrics as Prometheus text on http://ADDR/metrics (port 0: any
    /// free port; printed at start). With --processes each instance process serves its own:
    /// port P + i for instance i, or its own free port when P is 0.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Answer every loss with a clear, ignoring the replay log (the comparison for what
    /// repairing from the log saves).
    #[arg(long)]
    pub(crate) no_replay: bool,
    /// Each database call fails with this probability (0 to 1): a struggling database.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub(crate) db_fail_rate: f64,
    /// The database is down for this long, from a third of the way into the run.
    #[arg(long, value_name = "D", value_parser = duration)]
    pub(crate) db_outage: Option<Duration>,
    /// Turn fail-safe on: entries are kept this long past their expiry, and a failed load
    /// gets the expired value instead of the error (see --ttl).
    #[arg(long, value_name = "D", value_parser = duration)]
    pub(crate) fail_safe: Option<Duration>,
    /// How long a cached entry lives (absolute expiration). The default outlives any run;
    /// shorten it (e.g. 1s) to see expiries, and fail-safe, at work.
    #[arg(long, value_name = "D", default_value = "300s", value_parser = duration)]
    pub(crate) ttl: Duration,
    /// Where to write the run's plot (SVG); by default under the target directory.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// Set by the demo for its instance processes.
    #[arg(long, hide = true, requires_all = ["run_id", "db"])]
    pub(crate) instance: Option<usize>,
    /// Set by the demo for its instance processes.
    #[arg(long, hide = true)]
    pub(crate) run_id: Option<String>,
    /// Set by the demo for its instance processes.
    #[arg(long, hide = true)]
    pub(crate) db: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instances: 3,
            duration: Duration::from_secs(10),
            db_latency: Duration::from_millis(2),
            write_rate: 50.0,
            readers: 4,
            products: 1_000,
            catalogs: 50,
            page_every: 10,
            zipf: 1.0,
            bound: Duration::from_secs(1),
            redis: None,
            processes: false,
            no_backplane: false,
            faults: false,
            metrics: None,
            no_replay: false,
            db_fail_rate: 0.0,
            db_outage: None,
            fail_safe: None,
            ttl: crate::workload::ENTRY_TTL,
            plot: None,
            instance: None,
            run_id: None,
            db: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run the demo.
    Run(Box<Config>),
    /// Print this text to stdout and exit 0 (`--help`).
    Help(String),
}

impl Config {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    ///
    /// A message naming the bad flag or value.
    pub(crate) fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
        let args = std::iter::once("scale_out".to_owned()).chain(args);
        let config = match Config::try_parse_from(args) {
            Ok(config) => config,
            Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelp => {
                return Ok(Command::Help(error.render().to_string()));
            }
            Err(error) => return Err(error.render().to_string()),
        };
        config.validate().map_err(|message| {
            format!("error: {message}\n\nFor more information, try '--help'.\n")
        })?;
        Ok(Command::Run(Box::new(config)))
    }

    /// Set when this process is one instance of a `--processes` run.
    pub(crate) fn child(&self) -> Option<ChildArgs> {
        Some(ChildArgs {
            index: self.instance?,
            run_id: self.run_id.clone()?,
            db: self.db.clone()?,
        })
    }

    /// How the run's products are spread over catalogs.
    pub(crate) fn layout(&self) -> crate::db::Layout {
        crate::db::Layout {
            products: self.products,
            catalogs: self.catalogs,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.instances == 0 {
            return Err("--instances must be at least 1".into());
        }
        if self.readers == 0 {
            return Err("--readers must be at least 1".into());
        }
        if self.products == 0 {
            return Err("--products must be at least 1".into());
        }
        if self.catalogs == 0 || self.catalogs > self.products {
            return Err("--catalogs must be between 1 and --products".into());
        }
        if !self.write_rate.is_finite() || self.write_rate < 0.0 {
            return Err("--write-rate must be a number of writes per second, 0 or more".into());
        }
        if !self.zipf.is_finite() || self.zipf < 0.0 {
            return Err("--zipf must be 0 or more".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if !(0.0..=1.0).contains(&self.db_fail_rate) {
            return Err("--db-fail-rate must be a probability, between 0 and 1".into());
        }
        if self.ttl.is_zero() {
            return Err("--ttl must be more than 0".into());
        }
        if self.processes && self.redis.is_none() {
            return Err(
                "--processes needs --redis URL (or --redis auto): processes share their \
                 invalidations through Redis"
                    .into(),
            );
        }
        if self.no_backplane && (self.redis.is_some() || self.processes) {
            return Err("--no-backplane cannot be combined with --redis or --processes".into());
        }
        if self.faults && !self.redis.as_ref().is_some_and(RedisTarget::is_own) {
            return Err(
                "--faults needs --redis auto or --redis auto-cluster: the demo breaks only a \
                 Redis it started itself"
                    .into(),
            );
        }
        if let Some(index) = self.instance
            && (index >= self.instances || !matches!(self.redis, Some(RedisTarget::Url(_))))
        {
            return Err("--instance is set by the demo itself for its instance processes".into());
        }
        Ok(())
    }

    /// The database faults this run injects, timed from now (the start of the readers).
    pub(crate) fn db_faults(&self) -> crate::db::Faults {
        let start = std::time::Instant::now() + self.duration / 3;
        crate::db::Faults {
            fail_rate: self.db_fail_rate,
            outage: self.db_outage.map(|outage| (start, start + outage)),
        }
    }

    /// The arguments that make an instance process of this run.
    pub(crate) fn child_args(
        &self,
        index: usize,
        run_id: &str,
        redis_url: &str,
        db: &Path,
    ) -> Vec<String> {
        let mut args = vec![
            format!("--instances={}", self.instances),
            format!("--duration={}us", self.duration.as_micros()),
            format!("--db-latency={}us", self.db_latency.as_micros()),
            format!("--write-rate={}", self.write_rate),
            format!("--readers={}", self.readers),
            format!("--products={}", self.products),
            format!("--catalogs={}", self.catalogs),
            format!("--page-every={}", self.page_every),
            format!("--zipf={}", self.zipf),
            format!("--bound={}us", self.bound.as_micros()),
            format!("--redis={redis_url}"),
            "--processes".to_owned(),
            format!("--instance={index}"),
            format!("--run-id={run_id}"),
            format!("--db={}", db.display()),
        ];
        if self.no_replay {
            args.push("--no-replay".to_owned());
        }
        args.push(format!("--db-fail-rate={}", self.db_fail_rate));
        args.push(format!("--ttl={}us", self.ttl.as_micros()));
        if let Some(outage) = self.db_outage {
            args.push(format!("--db-outage={}us", outage.as_micros()));
        }
        if let Some(fail_safe) = self.fail_safe {
            args.push(format!("--fail-safe={}us", fail_safe.as_micros()));
        }
        if let Some(mut addr) = self.metrics {
            if addr.port() != 0 {
                let port = u16::try_from(usize::from(addr.port()) + index).unwrap_or(u16::MAX);
                addr.set_port(port);
            }
            args.push(format!("--metrics={addr}"));
        }
        args
    }
}

/// A humantime duration (`250us`, `2ms`, `1s 500ms`, `1m`), or a bare number of seconds
/// (`20`, `1.5`).
fn duration(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string()),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

/// The URL schemes the Redis backplane reads (one node, a cluster, Sentinels; with TLS).
const SCHEMES: [&str; 6] = [
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
];

/// The scheme of `url`, lower case (empty without `://`).
fn scheme_of(url: &str) -> String {
    url.split_once("://")
        .map_or_else(String::new, |(scheme, _)| scheme.to_ascii_lowercase())
}

/// `auto`, `auto-cluster`, or a Redis URL.
fn redis_target(text: &str) -> Result<RedisTarget, String> {
    match text {
        "auto" => Ok(RedisTarget::Auto),
        "auto-cluster" => Ok(RedisTarget::AutoCluster),
        url if SCHEMES.contains(&scheme_of(url).as_str()) => Ok(RedisTarget::Url(url.to_owned())),
        other => Err(format!(
            "`{other}` is neither `auto`, `auto-cluster` nor a redis://, rediss://, \
             redis+cluster:// or redis+sentinel:// URL"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Config::parse_args(args.iter().map(|a| (*a).to_owned()))
    }

    fn config(args: &[&str]) -> Config {
        match parse(args).unwrap() {
            Command::Run(config) => *config,
            Command::Help(_) => panic!("not a run"),
        }
    }

    #[test]
    fn no_flags_is_the_default_run() {
        let c = config(&[]);
        assert_eq!(c, Config::default());
        assert_eq!(c.instances, 3);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.db_latency, Duration::from_millis(2));
        assert_eq!(c.bound, Duration::from_secs(1));
        assert_eq!(c.child(), None);
    }

    #[test]
    fn help_describes_the_demo_and_every_flag_but_the_hidden_ones() {
        let Command::Help(text) = parse(&["--help"]).unwrap() else {
            panic!("--help is not help");
        };
        for expected in [
            "scale-out demo",
            "Exits 1 if it saw a stale read",
            "--instances <N>",
            "[default: 3]",
            "--duration <D>",
            "[default: 10s]",
            "--db-latency <D>",
            "--bound <D>",
            "--redis <URL|auto|auto-cluster>",
            "redis+cluster://",
            "--processes",
            "--no-backplane",
            "--faults",
            "--no-replay",
            "--plot <FILE.svg>",
            "Durations: 250us",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        for hidden in ["--instance ", "--run-id", "--db "] {
            assert!(!text.contains(hidden), "{hidden:?} shown in\n{text}");
        }
    }

    #[test]
    fn flags_take_values_both_ways() {
        let c = config(&[
            "--instances",
            "5",
            "--duration=2s",
            "--db-latency",
            "500us",
            "--write-rate",
            "12.5",
            "--bound=250ms",
            "--redis",
            "redis://127.0.0.1:6379",
            "--processes",
            "--zipf=0.8",
            "--plot",
            "run.svg",
        ]);
        assert_eq!(c.instances, 5);
        assert_eq!(c.duration, Duration::from_secs(2));
        assert_eq!(c.db_latency, Duration::from_micros(500));
        assert!((c.write_rate - 12.5).abs() < f64::EPSILON);
        assert_eq!(c.bound, Duration::from_millis(250));
        assert_eq!(
            c.redis,
            Some(RedisTarget::Url("redis://127.0.0.1:6379".into()))
        );
        assert!(c.processes);
        assert_eq!(c.plot, Some(PathBuf::from("run.svg")));
        let faults = config(&["--redis", "auto", "--faults"]);
        assert_eq!(faults.redis, Some(RedisTarget::Auto));
        assert!(faults.faults);
        let cluster = config(&["--redis", "auto-cluster", "--processes", "--faults"]);
        assert_eq!(cluster.redis, Some(RedisTarget::AutoCluster));
        assert!(cluster.faults && cluster.processes);
        assert_eq!(
            config(&["--duration", "1m"]).duration,
            Duration::from_secs(60)
        );
        assert_eq!(
            config(&["--duration", "1s 500ms"]).duration,
            Duration::from_millis(1_500)
        );
        assert_eq!(
            config(&["--duration", "20"]).duration,
            Duration::from_secs(20)
        );
        assert_eq!(
            config(&["--bound", "1.5"]).bound,
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        for (args, says) in [
            (&["--instances", "0"][..], "--instances"),
            (&["--instances", "-1"], "-1"),
            (&["--duration", "soon"], "--duration"),
            (&["--duration=-3"], "--duration"),
            (&["--duration", "0s"], "--duration"),
            (&["--write-rate"], "--write-rate"),
            (&["--redis", "localhost"], "neither `auto`"),
            (&["--processes"], "needs --redis"),
            (&["--no-backplane", "--redis", "auto"], "cannot be combined"),
            (&["--redis", "cluster://127.0.0.1:1"], "neither `auto`"),
            (&["--faults"], "needs --redis auto"),
            (
                &["--faults", "--redis", "redis://127.0.0.1:1"],
                "needs --redis auto",
            ),
            (
                &["--faults", "--redis", "redis+cluster://127.0.0.1:1"],
                "needs --redis auto or --redis auto-cluster",
            ),
            (&["--catalogs", "2000"], "--catalogs"),
            (&["--frobnicate"], "--frobnicate"),
            (&["--instance", "1"], "--run-id"),
            (
                &["--instance", "1", "--run-id", "x", "--db", "f"],
                "set by the demo",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn an_instance_process_gets_the_parents_settings() {
        let parent = config(&[
            "--instances=4",
            "--duration=1s 500ms",
            "--redis=auto",
            "--processes",
            "--no-replay",
        ]);
        let db = Path::new("/tmp/x/products.sqlite3");
        let args = parent.child_args(2, "run-1", "redis://127.0.0.1:7000", db);
        let child = config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            child.child(),
            Some(ChildArgs {
                index: 2,
                run_id: "run-1".into(),
                db: db.to_owned(),
            })
        );
        assert_eq!(
            child.redis,
            Some(RedisTarget::Url("redis://127.0.0.1:7000".into()))
        );
        assert_eq!(
            Config {
                instance: None,
                run_id: None,
                db: None,
                redis: parent.redis.clone(),
                ..child
            },
            parent
        );
    }

    #[test]
    fn the_redis_flag_names_the_topology() {
        for (arg, cluster, sentinel, own) in [
            ("auto", false, false, true),
            ("auto-cluster", true, false, true),
            ("redis://127.0.0.1:6379", false, false, false),
            ("rediss://127.0.0.1:6379", false, false, false),
            (
                "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
                true,
                false,
                false,
            ),
            ("REDISS+CLUSTER://127.0.0.1:7000", true, false, false),
            (
                "redis+sentinel://127.0.0.1:26379/mymaster",
                false,
                true,
                false,
            ),
        ] {
            let target = config(&["--redis", arg]).redis.unwrap();
            assert_eq!(target.is_cluster(), cluster, "{arg}");
            assert_eq!(target.is_sentinel(), sentinel, "{arg}");
            assert_eq!(target.is_own(), own, "{arg}");
        }
        // An instance process of an auto-cluster run gets the cluster's URL.
        let parent = config(&["--redis=auto-cluster", "--processes"]);
        let url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
        let args = parent.child_args(1, "run-1", url, Path::new("/tmp/p.sqlite3"));
        let child = config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(child.redis, Some(RedisTarget::Url(url.into())));
        assert_eq!(child.child().map(|c| c.index), Some(1));
    }
}
