//! [`RedisSentinels`]: a private primary, one replica and three Sentinels on loopback ports, for
//! tests of the Sentinel backplane.
//!
//! Every process is a [`RedisServer`] (its own temporary directory, killed when dropped). The
//! Sentinels watch the primary under the name [`MASTER_NAME`] with a quorum of 2 and a short
//! `down-after-milliseconds` (1 s), so a failover after a hard kill takes a few seconds.
//!
//! Every method blocks and is bounded in time; waits poll the Sentinels' own view until it
//! shows the expected state or a deadline passes.

use std::io;
use std::time::Duration;

use crate::RedisServer;
use crate::redis_server::{host_list, redis_error};
use crate::settle;

/// The name under which the Sentinels know the primary.
pub const MASTER_NAME: &str = "nearcache-primary";

/// How long the set-up may take to settle, or a failover to complete.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls.
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// A primary, its replica and three Sentinels; all killed when dropped.
///
/// The two data nodes are addressed by index (0 starts as the primary, 1 as its replica);
/// [`primary`](Self::primary) says which one the Sentinels name now.
///
/// ```no_run
/// use nearcache_testkit::RedisSentinels;
///
/// let sentinels = RedisSentinels::start()?;
/// let url = sentinels.url(); // redis+sentinel://127.0.0.1:s0,…/nearcache-primary
/// sentinels.failover()?;     // SENTINEL FAILOVER, and wait until all three agree
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisSentinels {
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// Starts the primary, the replica (and waits until it is in sync) and three Sentinels,
    /// and returns once every Sentinel knows the replica and the two other Sentinels.
    ///
    /// # Errors
    ///
    /// When a process does not start or the set-up does not settle within 30 s.
    pub fn start() -> io::Result<Self> {
        // Replicas sync at once instead of after the default 5 s delay.
        let no_delay = ["--repl-diskless-sync-delay", "0"];
        let primary = RedisServer::builder().args(no_delay).start()?;
        let replica = RedisServer::builder()
            .args(no_delay)
            .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start()?;
        let mut this = Self {
            data: vec![primary, replica],
            sentinels: Vec::new(),
        };
        this.wait_until("the replica is in sync", |this| {
            info_field(&this.data[1], "replication", "master_link_status").as_deref() == Some("up")
        })?;
        let port = this.data[0].port();
        for _ in 0..3 {
            let sentinel = RedisServer::builder()
                .sentinel([
                    format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2"),
                    format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
                    format!("sentinel failover-timeout {MASTER_NAME} 10000"),
                    format!("sentinel parallel-syncs {MASTER_NAME} 1"),
                ])
                .start()?;
            this.sentinels.push(sentinel);
        }
        this.wait_until("the Sentinels know each other and the replica", |this| {
            this.sentinels.iter().all(|sentinel| {
                master_fields(sentinel).is_some_and(|fields| {
                    field(&fields, "num-slaves") == Some("1")
                        && field(&fields, "num-other-sentinels") == Some("2")
                })
            })
        })?;
        Ok(this)
    }

    /// `redis+sentinel://127.0.0.1:s0,127.0.0.1:s1,127.0.0.1:s2/nearcache-primary`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{MASTER_NAME}",
            host_list(&self.sentinels)
        )
    }

    /// Data node `index` (0 or 1).
    ///
    /// # Panics
    ///
    /// When `index` is 2 or more.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.data[index]
    }

    /// Data node `index` (0 or 1), mutably, to kill or restart it.
    ///
    /// # Panics
    ///
    /// When `index` is 2 or more.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.data[index]
    }

    /// Sentinel `index` (0–2).
    ///
    /// # Panics
    ///
    /// When `index` is 3 or more.
    pub fn sentinel(&self, index: usize) -> &RedisServer {
        &self.sentinels[index]
    }

    /// The index of the data node every Sentinel names as the primary.
    ///
    /// # Errors
    ///
    /// When the Sentinels disagree or do not answer.
    pub fn primary(&self) -> io::Result<usize> {
        let mut named = None;
        for sentinel in &self.sentinels {
            let port = primary_port(sentinel)?;
            if named.is_some_and(|other| other != port) {
                return Err(io::Error::other("the Sentinels disagree on the primary"));
            }
            named = Some(port);
        }
        let port = named.ok_or_else(|| io::Error::other("no Sentinel"))?;
        self.data
            .iter()
            .position(|node| node.port() == port)
            .ok_or_else(|| io::Error::other(format!("the primary on port {port} is not ours")))
    }

    /// A manual failover (`SENTINEL FAILOVER` on the first Sentinel); returns the new
    /// primary's index once every Sentinel names it and it answers `ROLE` as a primary.
    ///
    /// # Errors
    ///
    /// When the Sentinel refuses, or the failover does not complete within 30 s.
    pub fn failover(&self) -> io::Result<usize> {
        let old = self.primary()?;
        let mut con = self.sentinels[0].connection()?;
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query::<()>(&mut con)
            .map_err(redis_error)?;
        self.wait_for_new_primary(old)
    }

    /// Waits until every Sentinel names a primary other than `old` and that node answers
    /// `ROLE` as a primary (after killing `old`, Sentinel needs `down-after-milliseconds` and
    /// an election). Returns the new primary's index.
    ///
    /// # Errors
    ///
    /// When that does not happen within 30 s.
    pub fn wait_for_new_primary(&self, old: usize) -> io::Result<usize> {
        let mut new = None;
        self.wait_until("the Sentinels promote a new primary", |this| {
            new = this.primary().ok().filter(|&index| index != old);
            new.is_some_and(|index| {
                info_field(&this.data[index], "replication", "role").as_deref() == Some("master")
            })
        })?;
        new.ok_or_else(|| io::Error::other("no new primary"))
    }

    /// Waits until the data node that is not the primary replicates from it in sync and
    /// every Sentinel lists it as a healthy replica — after [`start`](Self::start), or after
    /// a killed primary was restarted (Sentinel turns it into a replica of the new one). A
    /// [`failover`](Self::failover) needs that.
    ///
    /// # Errors
    ///
    /// When that does not happen within 30 s.
    pub fn wait_healthy(&self) -> io::Result<()> {
        let primary = self.primary()?;
        let replica = 1 - primary;
        let port = self.data[replica].port().to_string();
        self.wait_until("the replica is in sync and known", |this| {
            let in_sync = info_field(&this.data[replica], "replication", "master_link_status")
                .as_deref()
                == Some("up");
            in_sync
                && this
                    .sentinels
                    .iter()
                    .all(|sentinel| replica_flags(sentinel, &port).as_deref() == Some("slave"))
        })
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut(&Self) -> bool) -> io::Result<()> {
        settle::poll_until(what, SETTLE_TIMEOUT, POLL_PAUSE, || done(self))
    }
}

/// `SENTINEL MASTER` as name/value pairs.
fn master_fields(sentinel: &RedisServer) -> Option<Vec<(String, String)>> {
    let mut con = sentinel.connection().ok()?;
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER_NAME)
        .query(&mut con)
        .ok()?;
    Some(
        flat.chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect(),
    )
}

/// The flags Sentinel shows for the replica on `port` (`slave` when healthy).
fn replica_flags(sentinel: &RedisServer, port: &str) -> Option<String> {
    let mut con = sentinel.connection().ok()?;
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(MASTER_NAME)
        .query(&mut con)
        .ok()?;
    replicas.into_iter().find_map(|flat| {
        let fields: Vec<(String, String)> = flat
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        (field(&fields, "port") == Some(port))
            .then(|| field(&fields, "flags").map(str::to_owned))?
    })
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn primary_port(sentinel: &RedisServer) -> io::Result<u16> {
    let mut con = sentinel.connection()?;
    let (_host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER_NAME)
        .query(&mut con)
        .map_err(redis_error)?;
    Ok(port)
}

fn info_field(node: &RedisServer, section: &str, name: &str) -> Option<String> {
    let mut con = node.connection().ok()?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut con).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_fails_over() {
        let sentinels = RedisSentinels::start().unwrap();
        assert_eq!(sentinels.primary().unwrap(), 0);
        assert!(sentinels.url().starts_with("redis+sentinel://127.0.0.1:"));
        assert!(sentinels.url().ends_with("/nearcache-primary"));
        assert_eq!(sentinels.failover().unwrap(), 1);
        assert_eq!(sentinels.primary().unwrap(), 1);
    }
}
