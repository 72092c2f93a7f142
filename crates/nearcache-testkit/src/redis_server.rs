//! [`RedisServer`]: a private `redis-server` for tests, benches, the demo and the soak.
//!
//! Each server runs from `PATH` on a free port of 127.0.0.1 (and only there), in its own
//! temporary directory, without persistence, and stops when dropped. Tests can kill it and
//! restart it on the same port to play a Redis outage, kill its pub/sub clients, and publish
//! raw bytes on a channel. Nothing here skips: without `redis-server` on `PATH`, starting fails
//! with the command that installs it.
//!
//! With [`RedisServerBuilder::tls`] it also listens with TLS, on a certificate of a throw-away
//! CA (made with the `openssl` tool), for tests of `rediss://`.
//!
//! Every method blocks (process control and a synchronous Redis client); call them from a
//! test's thread, a multi-threaded runtime, or `spawn_blocking`. Each one is bounded in time.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod certs;

/// How long a server may take to accept connections after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `restart` keeps trying when the port is still taken.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried by `start` when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 20;
/// Pause between two readiness probes.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// Bound on every command the harness sends.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

const INSTALL_HINT: &str = "redis-server was not found on PATH; install it with \
                            `cargo xtask redis` or `sudo apt-get install -y redis-server`";

/// Who may connect to a [`RedisServer`].
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    None,
    /// `requirepass`: the default user needs this password.
    Password(String),
    /// An ACL user with every permission; the default user is disabled.
    User {
        name: String,
        password: String,
    },
}

/// Configures a [`RedisServer`] before it starts. Made by [`RedisServer::builder`]. Its
/// `Debug` shows every field, never a password's text.
#[derive(Clone, Debug)]
pub struct RedisServerBuilder {
    auth: Auth,
    args: Vec<String>,
    tls: bool,
    mode: Mode,
}

/// What kind of server a [`RedisServerBuilder`] starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    /// `--cluster-enabled yes` with its bus on a second free port.
    ClusterNode,
    /// `redis-server <dir>/sentinel.conf --sentinel` with these configuration lines.
    Sentinel(Vec<String>),
}

impl RedisServerBuilder {
    /// Starts a Redis Cluster node (`--cluster-enabled yes`, its own `nodes.conf` in its
    /// directory, the cluster bus on a second free loopback port). Extra cluster settings
    /// (node timeout, ...) go through [`args`](Self::args). Used by
    /// [`RedisCluster`](crate::RedisCluster).
    pub fn cluster_node(mut self) -> Self {
        self.mode = Mode::ClusterNode;
        self
    }

    /// Starts a Sentinel (`redis-server sentinel.conf --sentinel`) whose configuration file
    /// holds `lines` (e.g. `sentinel monitor ...`); Sentinel rewrites that file as it learns.
    /// Used by [`RedisSentinels`](crate::RedisSentinels).
    pub fn sentinel<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.mode = Mode::Sentinel(lines.into_iter().map(Into::into).collect());
        self
    }

    /// Requires `password` from every client (`requirepass`); [`RedisServer::url`] then
    /// carries it (`redis://:password@…`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.auth = Auth::Password(password.into());
        self
    }

    /// Creates the ACL user `name` with `password` and every permission, and disables the
    /// default user, so only `name` can connect; [`RedisServer::url`] then carries both.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::User {
            name: name.into(),
            password: password.into(),
        };
        self
    }

    /// Also listens with TLS on a second port, with a certificate for 127.0.0.1 signed by a
    /// fresh CA (see [`RedisServer::tls_ca_pem`]); [`RedisServer::url`] is then the
    /// `rediss://` one. The harness itself keeps using the plain port. Needs `openssl` on
    /// `PATH` and a redis-server built with TLS (Debian's is).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Adds raw `redis-server` arguments, e.g. `["--maxclients", "64"]`. The port, the bind
    /// address and the directory are the harness's and cannot be changed this way.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the server on a free loopback port and waits until it answers.
    ///
    /// # Errors
    ///
    /// `NotFound` when `redis-server` is not on `PATH` (the message says how to install it);
    /// otherwise why the server did not come up, with the end of its log.
    pub fn start(self) -> io::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("nearcache-redis-")
            .tempdir()?;
        let certs = if self.tls {
            Some(certs::generate(dir.path())?)
        } else {
            None
        };
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls_port: None,
            bus_port: None,
            mode: self.mode,
            certs,
            auth: self.auth,
            args: self.args,
            dir,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let [port, tls_port, bus_port] = free_ports()?;
            server.port = port;
            server.tls_port = server.certs.is_some().then_some(tls_port);
            server.bus_port = (server.mode == Mode::ClusterNode).then_some(bus_port);
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(Startup::PortBusy(err)) => last_error = Some(err),
                Err(Startup::Failed(err)) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port found")))
    }
}

/// A `redis-server` process owned by the caller; killed when dropped.
///
/// ```no_run
/// use nearcache_testkit::RedisServer;
///
/// let mut server = RedisServer::builder().password("s3cret").start()?;
/// let url = server.url(); // redis://:s3cret@127.0.0.1:<port>
/// server.kill()?;         // an outage
/// server.restart()?;      // same port, empty server
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RedisServer {
    child: Option<Child>,
    /// The plain port; the harness's own connections always use it.
    port: u16,
    tls_port: Option<u16>,
    /// The cluster bus port of a cluster node.
    bus_port: Option<u16>,
    mode: Mode,
    certs: Option<certs::Certs>,
    auth: Auth,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

enum Startup {
    /// Another process holds the port; try again (another port, or later).
    PortBusy(io::Error),
    Failed(io::Error),
}

impl RedisServer {
    /// Starts a server without password. See [`RedisServerBuilder::start`].
    ///
    /// # Errors
    ///
    /// As [`RedisServerBuilder::start`].
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// A builder for a server with a password, an ACL user or extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder {
            auth: Auth::None,
            args: Vec::new(),
            tls: false,
            mode: Mode::Plain,
        }
    }

    /// The port of [`url`](Self::url) on 127.0.0.1 (the TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.tls_port.unwrap_or(self.port)
    }

    /// `redis://[user][:password@]127.0.0.1:port` with the credentials the server requires;
    /// `rediss://…` on the TLS port for a TLS server.
    pub fn url(&self) -> String {
        self.client_url(true)
    }

    /// [`url`](Self::url) without credentials (to test what a server with a password says to
    /// a client without one).
    pub fn url_without_auth(&self) -> String {
        self.client_url(false)
    }

    /// The PEM certificate of the CA that signed a TLS server's certificate (for
    /// `RedisConfig::tls_ca_pem`); `None` without TLS.
    ///
    /// # Errors
    ///
    /// When the file cannot be read.
    pub fn tls_ca_pem(&self) -> io::Result<Option<Vec<u8>>> {
        self.certs
            .as_ref()
            .map(|certs| std::fs::read(&certs.ca_cert))
            .transpose()
    }

    /// The plain-port URL with credentials, for the harness's own connections.
    fn control_url(&self) -> String {
        self.url_for("redis", self.port, true)
    }

    /// The URL clients use: `rediss` on the TLS port for a TLS server, else `redis`.
    fn client_url(&self, with_auth: bool) -> String {
        let scheme = if self.tls_port.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.url_for(scheme, self.port(), with_auth)
    }

    fn url_for(&self, scheme: &str, port: u16, with_auth: bool) -> String {
        match &self.auth {
            Auth::Password(password) if with_auth => {
                format!("{scheme}://:{password}@127.0.0.1:{port}")
            }
            Auth::User { name, password } if with_auth => {
                format!("{scheme}://{name}:{password}@127.0.0.1:{port}")
            }
            _ => format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// The server's directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running server, `None` after [`kill`](Self::kill) (a server
    /// that crashed on its own still shows its id; see [`is_running`](Self::is_running)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server with SIGKILL (no goodbye to its clients, like a crash) and waits for
    /// the process to end. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// When the process cannot be signalled or waited for.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // An error here means it already exited; wait reaps it either way.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port (killing it first if it runs). The new
    /// server is empty. Retries for a while if the port is briefly held by another process.
    ///
    /// # Errors
    ///
    /// When the server does not come back within 10 s, with the end of its log.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(Startup::PortBusy(err)) if Instant::now() < deadline => {
                    tracing::debug!(port = self.port, %err, "port still busy; retrying restart");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Startup::PortBusy(err) | Startup::Failed(err)) => return Err(err),
            }
        }
    }

    /// A fresh synchronous connection, authenticated.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub fn connection(&self) -> io::Result<redis::Connection> {
        connect(&self.control_url())
    }

    /// Runs one command on a connection of its own, which it closes with `QUIT` (see
    /// [`quit`]) so that it is gone from the server before the next command is sent.
    fn control<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> io::Result<T> {
        let mut con = self.connection()?;
        let result = command.query(&mut con).map_err(redis_error);
        quit(&mut con);
        result
    }

    /// Runs `CLIENT KILL TYPE pubsub`: drops every connection in subscribed state while the
    /// server stays up. Returns how many were killed.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub fn client_kill_pubsub(&self) -> io::Result<u64> {
        self.control(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
    }

    /// `PUBLISH channel payload` from a plain client, bytes verbatim (for garbage and foreign
    /// messages). Returns how many subscribers received it.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub fn publish_raw(&self, channel: &str, payload: &[u8]) -> io::Result<u64> {
        self.control(redis::cmd("PUBLISH").arg(channel).arg(payload))
    }

    /// How many clients are connected, not counting the one asking.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub fn connected_clients(&self) -> io::Result<usize> {
        let list: String = self.control(redis::cmd("CLIENT").arg("LIST"))?;
        Ok(list
            .lines()
            .filter(|line| !line.is_empty())
            .count()
            .saturating_sub(1))
    }

    /// Waits until exactly `expected` clients are connected (not counting the one asking),
    /// checking every 10 ms: the server announces no disconnect, so this polls.
    ///
    /// # Errors
    ///
    /// When the server does not answer, or `within` passes first (`TimedOut`, saying how many
    /// clients were still connected).
    pub fn wait_for_clients(&self, expected: usize, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let clients = self.connected_clients()?;
            if clients == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{clients} clients still connected after {within:?}, expected {expected}"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), Startup> {
        let child = self.spawn().map_err(Startup::Failed)?;
        self.child = Some(child);
        let result = self.wait_ready();
        if result.is_err() {
            let _ = self.kill();
        }
        result
    }

    fn spawn(&self) -> io::Result<Child> {
        let dir = self.dir.path();
        let stderr = File::create(dir.join("stderr.log"))?;
        let mut command = Command::new("redis-server");
        if let Mode::Sentinel(lines) = &self.mode {
            // Sentinel insists on a writable configuration file, given first.
            let conf = dir.join("sentinel.conf");
            std::fs::write(&conf, lines.join("\n") + "\n")?;
            command.arg(&conf).arg("--sentinel");
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "yes"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--loglevel", "notice"]);
        if let Some(bus_port) = self.bus_port {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .arg("--cluster-port")
                .arg(bus_port.to_string());
        }
        if let (Some(tls_port), Some(certs)) = (self.tls_port, &self.certs) {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&certs.server_cert)
                .arg("--tls-key-file")
                .arg(&certs.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca_cert)
                .args(["--tls-auth-clients", "no"]);
        }
        match &self.auth {
            Auth::None => {}
            Auth::Password(password) => {
                command.arg("--requirepass").arg(password);
            }
            Auth::User { name, password } => {
                // Each word of an ACL rule is its own argument on the command line.
                command
                    .args(["--user", name, "on"])
                    .arg(format!(">{password}"))
                    .args(["~*", "&*", "+@all"])
                    .args(["--user", "default", "off"]);
            }
        }
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        command.spawn().map_err(explain_spawn_error)
    }

    /// Polls until the server answers as the process we spawned, it exits, or time is up.
    fn wait_ready(&mut self) -> Result<(), Startup> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.control_url();
        let mut last_error: String;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(Startup::Failed(io::Error::other(
                    "redis-server is not running",
                )));
            };
            let pid = child.id();
            match child.try_wait() {
                Ok(Some(status)) => {
                    let log = self.log_tail();
                    let err = io::Error::other(format!(
                        "redis-server on port {} exited at start ({status}):\n{log}",
                        self.port
                    ));
                    let busy = log.contains("Address already in use");
                    return Err(if busy {
                        Startup::PortBusy(err)
                    } else {
                        Startup::Failed(err)
                    });
                }
                Ok(None) => {}
                Err(err) => return Err(Startup::Failed(err)),
            }
            // The answer must come from our process: another server could hold the port
            // while ours is still failing to bind it.
            match server_pid(&url) {
                Ok(answered) if answered == pid => return Ok(()),
                Ok(answered) => {
                    last_error = format!("port answered by another process ({answered})")
                }
                Err(err) => last_error = err.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Startup::Failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer within {START_TIMEOUT:?} \
                         (last: {last_error}):\n{}",
                        self.port,
                        self.log_tail()
                    ),
                )));
            }
            std::thread::sleep(PROBE_PAUSE);
        }
    }

    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for name in ["stderr.log", "redis.log"] {
            let path: PathBuf = self.dir.path().join(name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(15)..] {
                    tail.push_str(line);
                    tail.push('\n');
                }
            }
        }
        tail
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL then reap: bounded, never leaves a server behind; errors mean it is gone.
        let _ = self.kill();
    }
}

/// Written out only to show the child as its pid (`Child`'s own `Debug` has none); every
/// field is named, so a new one cannot be left out.
impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            child,
            port,
            tls_port,
            bus_port,
            mode,
            certs,
            auth,
            args,
            dir,
        } = self;
        f.debug_struct("RedisServer")
            .field("pid", &child.as_ref().map(Child::id))
            .field("port", port)
            .field("tls_port", tls_port)
            .field("bus_port", bus_port)
            .field("mode", mode)
            .field("certs", certs)
            .field("auth", auth)
            .field("args", args)
            .field("dir", &dir.path())
            .finish()
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Password(_) => f.write_str("Password(***)"),
            Self::User { name, .. } => write!(f, "User({name}, ***)"),
        }
    }
}

/// Turns "no such file" into the command that installs redis-server.
fn explain_spawn_error(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::NotFound {
        io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT)
    } else {
        io::Error::new(err.kind(), format!("cannot run redis-server: {err}"))
    }
}

/// Two distinct ports of 127.0.0.1 that were free a moment ago (the OS picks them; `start`
/// retries when another process takes one before redis-server binds it).
fn free_ports() -> io::Result<[u16; 3]> {
    let first = TcpListener::bind(("127.0.0.1", 0))?;
    let second = TcpListener::bind(("127.0.0.1", 0))?;
    let third = TcpListener::bind(("127.0.0.1", 0))?;
    Ok([
        first.local_addr()?.port(),
        second.local_addr()?.port(),
        third.local_addr()?.port(),
    ])
}

fn connect(url: &str) -> io::Result<redis::Connection> {
    let client = redis::Client::open(url).map_err(redis_error)?;
    let con = client
        .get_connection_with_timeout(COMMAND_TIMEOUT)
        .map_err(redis_error)?;
    con.set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(redis_error)?;
    con.set_write_timeout(Some(COMMAND_TIMEOUT))
        .map_err(redis_error)?;
    Ok(con)
}

/// The `process_id` the server at `url` reports.
fn server_pid(url: &str) -> io::Result<u32> {
    let client = redis::Client::open(url).map_err(redis_error)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(200))
        .map_err(redis_error)?;
    con.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(redis_error)?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .map_err(redis_error)?;
    quit(&mut con);
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| io::Error::other("INFO server has no process_id"))
}

/// Closes a control connection so that the server has let go of it before this returns:
/// the server frees a client that sent `QUIT` as soon as the reply is written, before it
/// serves anyone else. A connection merely dropped is closed by the server only when it
/// notices, so a `CLIENT LIST` right after might still count it.
fn quit(con: &mut redis::Connection) {
    let _ = redis::cmd("QUIT").query::<()>(con);
}

/// A redis-rs error as the harness's `io::Error`.
pub(crate) fn redis_error(err: redis::RedisError) -> io::Error {
    io::Error::other(format!("redis: {err}"))
}

/// `127.0.0.1:p0,127.0.0.1:p1,…`: `servers` as the host list of a cluster or Sentinel URL.
pub(crate) fn host_list<'a>(servers: impl IntoIterator<Item = &'a RedisServer>) -> String {
    let hosts: Vec<String> = servers
        .into_iter()
        .map(|server| format!("127.0.0.1:{}", server.port()))
        .collect();
    hosts.join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_stops_on_drop() {
        let mut server = RedisServer::start().unwrap();
        assert!(server.is_running());
        let mut con = server.connection().unwrap();
        let pong: String = redis::cmd("PING").query(&mut con).unwrap();
        assert_eq!(pong, "PONG");
        let mut config_get = |name: &str| -> Vec<String> {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query(&mut con)
                .unwrap()
        };
        assert_eq!(config_get("bind"), ["bind", "127.0.0.1"]);
        assert_eq!(config_get("save"), ["save", ""]);
        let port = server.port();
        drop(con);
        drop(server);
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens after drop"
        );
    }

    #[test]
    fn kill_and_restart_keep_the_port() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        server.kill().unwrap();
        assert!(!server.is_running());
        assert!(server.connection().is_err());
        server.kill().unwrap(); // idempotent
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(server.connected_clients().unwrap(), 0);
    }

    #[test]
    fn password_and_acl_user_are_required() {
        let server = RedisServer::builder().password("pw-1").start().unwrap();
        assert!(server.url().contains(":pw-1@"));
        assert!(server.connection().is_ok());
        let mut anonymous = connect(&server.url_without_auth()).unwrap();
        let denied = redis::cmd("PING").query::<String>(&mut anonymous);
        assert!(denied.is_err(), "{denied:?}");
        assert!(!format!("{server:?}").contains("pw-1"));

        let server = RedisServer::builder().user("app", "pw-2").start().unwrap();
        assert!(server.url().starts_with("redis://app:pw-2@"));
        assert_eq!(server.publish_raw("ch", b"x").unwrap(), 0);
        let mut anonymous = connect(&server.url_without_auth()).unwrap();
        assert!(redis::cmd("PING").query::<String>(&mut anonymous).is_err());
        assert!(!format!("{server:?}").contains("pw-2"));
    }

    #[test]
    fn parallel_starts_get_distinct_ports() {
        let servers: Vec<RedisServer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| RedisServer::start().unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4);
    }

    #[test]
    fn a_tls_server_listens_on_both_ports() {
        let server = RedisServer::builder().tls().password("pw").start().unwrap();
        let url = server.url();
        assert!(url.starts_with("rediss://:pw@127.0.0.1:"), "{url}");
        assert_ne!(server.port(), server.port, "TLS and plain ports differ");
        std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        // The plain port answers commands. (How many clients it reports is not checked:
        // the TLS connection just dropped may or may not be gone yet.)
        server.connected_clients().unwrap();
        let ca = server.tls_ca_pem().unwrap().unwrap();
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(RedisServer::start().unwrap().tls_ca_pem().unwrap(), None);
    }

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let err = Command::new("redis-server-that-is-not-installed")
            .spawn()
            .map_err(explain_spawn_error)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(text.contains("cargo xtask redis"), "{text}");
        assert!(text.contains("apt-get install -y redis-server"), "{text}");
    }

    #[test]
    fn a_bad_argument_fails_with_the_log() {
        let err = RedisServer::builder()
            .args(["--no-such-option", "1"])
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("no-such-option"), "{err}");
    }
}
