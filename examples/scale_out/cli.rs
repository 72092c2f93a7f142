//! The demo's command line: flags with sane defaults, checked before anything starts.

use std::time::Duration;

/// Usage text (`--help`).
pub(crate) const USAGE: &str = "\
nearcache scale-out demo: N instances of a service, each with its own nearcache, reading
products from a slow database while a writer updates them. Shows how many database queries
the caches save, how fast invalidations reach the other instances, and checks that no
instance ever serves a stale product. Exits 1 if it saw a stale read.

usage: cargo run --release --example scale_out -- [flags]

  --instances N       instances of the service (default 3); instance 0 also runs the writer
  --duration D        how long the readers run (default 10s)
  --db-latency D      latency of every database query (default 2ms)
  --write-rate R      product updates per second (default 50)
  --readers N         concurrent readers per instance (default 4)
  --products N        products in the database (default 1000), read with a Zipf distribution
  --catalogs N        catalogs (default 50); one read in --page-every is a catalog page
  --page-every N      (default 10; 0: only product reads)
  --zipf S            Zipf exponent (default 1.0; 0 is uniform)
  --bound D           stale-read bound: a read is stale if it returned a version older than
                      one written more than D before the read started (default 1s)
  --redis URL|auto    use Redis as the backplane (auto: start a private redis-server from PATH)
  --processes         run each instance as its own OS process (needs --redis); each one
                      opens the run's SQLite database file
  --no-backplane      caches that do not tell each other: shows the stale reads nearcache
                      prevents (exits 1 when the run is longer than the bound)
  -h, --help          this text

Durations: 250us, 2ms, 1.5s, 1m (a bare number is seconds).
";

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// A server the user runs.
    Url(String),
    /// A private `redis-server` the demo starts (and stops) itself.
    Auto,
}

/// The hidden arguments of an instance process in a `--processes` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildArgs {
    /// The instance's number.
    pub(crate) index: usize,
    /// The run's id (names its Redis channel).
    pub(crate) run_id: String,
    /// The run's database file.
    pub(crate) db: std::path::PathBuf,
}

/// A demo run's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// Instances of the service.
    pub(crate) instances: usize,
    /// How long the readers run.
    pub(crate) duration: Duration,
    /// Latency of each database query.
    pub(crate) db_latency: Duration,
    /// Writes per second.
    pub(crate) write_rate: f64,
    /// Readers per instance.
    pub(crate) readers: usize,
    /// Products in the database.
    pub(crate) products: u32,
    /// Catalogs.
    pub(crate) catalogs: u32,
    /// One read in this many is a catalog page (0: none).
    pub(crate) page_every: u32,
    /// Zipf exponent.
    pub(crate) zipf: f64,
    /// The stale-read bound.
    pub(crate) bound: Duration,
    /// Redis, if used.
    pub(crate) redis: Option<RedisTarget>,
    /// One process per instance.
    pub(crate) processes: bool,
    /// Caches without a backplane.
    pub(crate) no_backplane: bool,
    /// Set when this process is one instance of a `--processes` run.
    pub(crate) child: Option<ChildArgs>,
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
            child: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Run the demo.
    Run(Config),
    /// Print [`USAGE`].
    Help,
}

impl Config {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    ///
    /// A message naming the bad flag or value.
    pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
        let mut config = Config::default();
        let mut args = args.into_iter();
        let mut child_index = None;
        let mut run_id = None;
        let mut db = None;
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "--instances" => config.instances = number(&flag, &value()?)?,
                "--duration" => config.duration = duration(&flag, &value()?)?,
                "--db-latency" => config.db_latency = duration(&flag, &value()?)?,
                "--write-rate" => config.write_rate = number(&flag, &value()?)?,
                "--readers" => config.readers = number(&flag, &value()?)?,
                "--products" => config.products = number(&flag, &value()?)?,
                "--catalogs" => config.catalogs = number(&flag, &value()?)?,
                "--page-every" => config.page_every = number(&flag, &value()?)?,
                "--zipf" => config.zipf = number(&flag, &value()?)?,
                "--bound" => config.bound = duration(&flag, &value()?)?,
                "--redis" => {
                    let url = value()?;
                    config.redis = Some(if url == "auto" {
                        RedisTarget::Auto
                    } else {
                        RedisTarget::Url(url)
                    });
                }
                "--processes" => config.processes = true,
                "--no-backplane" => config.no_backplane = true,
                // Hidden: set by the parent of a --processes run.
                "--instance" => child_index = Some(number(&flag, &value()?)?),
                "--run-id" => run_id = Some(value()?),
                "--db" => db = Some(std::path::PathBuf::from(value()?)),
                other => return Err(format!("unknown flag `{other}` (see --help)")),
            }
        }
        if let Some(index) = child_index {
            let run_id = run_id.ok_or("--instance needs --run-id")?;
            let db = db.ok_or("--instance needs --db")?;
            config.child = Some(ChildArgs { index, run_id, db });
        }
        config.validate()?;
        Ok(Command::Run(config))
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
        if self.processes && self.redis.is_none() {
            return Err(
                "--processes needs --redis URL (or --redis auto): processes share \
                        their invalidations and their database through Redis"
                    .into(),
            );
        }
        if self.no_backplane && (self.redis.is_some() || self.processes) {
            return Err("--no-backplane cannot be combined with --redis or --processes".into());
        }
        if let Some(child) = &self.child
            && (child.index >= self.instances || !matches!(self.redis, Some(RedisTarget::Url(_))))
        {
            return Err("--instance is set by the demo itself for its instance processes".into());
        }
        Ok(())
    }

    /// The arguments that make an instance process of this run.
    pub(crate) fn child_args(
        &self,
        index: usize,
        run_id: &str,
        redis_url: &str,
        db: &std::path::Path,
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
        ];
        args.push(format!("--instance={index}"));
        args.push(format!("--run-id={run_id}"));
        args.push(format!("--db={}", db.display()));
        args
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: `{text}` is not a valid number"))
}

/// `250us`, `2ms`, `1.5s`, `1m`, or a bare number of seconds.
fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    let bad = || format!("{flag}: `{text}` is not a duration (like 250us, 2ms, 1.5s, 1m)");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(split);
    let amount: f64 = amount.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => amount,
        "ms" => amount / 1e3,
        "us" | "µs" => amount / 1e6,
        "m" => amount * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Config::parse(args.iter().map(|a| (*a).to_owned()))
    }

    fn config(args: &[&str]) -> Config {
        match parse(args).unwrap() {
            Command::Run(config) => config,
            Command::Help => panic!("not a run"),
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
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
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
        assert_eq!(config(&["--redis", "auto"]).redis, Some(RedisTarget::Auto));
        assert_eq!(
            config(&["--duration", "1m"]).duration,
            Duration::from_secs(60)
        );
        assert_eq!(
            config(&["--duration", "3"]).duration,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        for (args, says) in [
            (&["--instances", "0"][..], "--instances"),
            (&["--duration", "soon"], "not a duration"),
            (&["--duration", "10h"], "not a duration"),
            (&["--write-rate"], "needs a value"),
            (&["--processes"], "needs --redis"),
            (&["--no-backplane", "--redis", "auto"], "cannot be combined"),
            (&["--catalogs", "2000"], "--catalogs"),
            (&["--frobnicate"], "unknown flag"),
            (&["--instance", "1"], "--run-id"),
            (&["--instance", "1", "--run-id", "x"], "--db"),
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
            "--duration=1.5s",
            "--redis=auto",
            "--processes",
        ]);
        let args = parent.child_args(
            2,
            "run-1",
            "redis://127.0.0.1:7000",
            std::path::Path::new("/tmp/x/products.sqlite3"),
        );
        let child = config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            child.child,
            Some(ChildArgs {
                index: 2,
                run_id: "run-1".into(),
                db: "/tmp/x/products.sqlite3".into(),
            })
        );
        assert_eq!(
            child.redis,
            Some(RedisTarget::Url("redis://127.0.0.1:7000".into()))
        );
        assert_eq!(
            Config {
                child: None,
                redis: parent.redis.clone(),
                ..child
            },
            parent
        );
    }
}
