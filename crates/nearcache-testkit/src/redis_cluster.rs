//! [`RedisCluster`]: a private Redis Cluster (3 primaries, 3 replicas) on loopback ports, for
//! tests of the cluster backplane.
//!
//! Each node is a [`RedisServer`] in cluster mode (its own temporary directory, its cluster bus
//! on a second free port), joined with `redis-cli --cluster create … --cluster-replicas 1`.
//! The node timeout is short (1 s) so an automatic failover after a hard kill takes a few
//! seconds, not the production default's tens. Dropping the cluster kills every node.
//!
//! Every method blocks and is bounded in time; waits poll the cluster's own view (`CLUSTER
//! SLOTS`, `CLUSTER INFO`) until it shows the expected state or a deadline passes.

use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::redis_server::{host_list, redis_error};
use crate::settle;

/// How long the cluster may take to form, or to agree on a change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `CLUSTER FAILOVER` is given before it is asked again.
const MANUAL_FAILOVER_PATIENCE: Duration = Duration::from_secs(6);
/// Pause between two polls of the cluster's state.
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// `cluster-node-timeout`, in milliseconds: how long a node may be silent before it is
/// suspected to have failed.
const NODE_TIMEOUT_MS: &str = "1000";

/// A Redis Cluster of three primaries with one replica each; killed when dropped.
///
/// Nodes are addressed by index (0–5) in the order they were started; which ones are primaries
/// changes with failovers, so ask [`owner_of_channel`](Self::owner_of_channel) and
/// [`replicas_of`](Self::replicas_of).
///
/// ```no_run
/// use nearcache_testkit::RedisCluster;
///
/// let cluster = RedisCluster::start()?;
/// let url = cluster.url(); // redis+cluster://127.0.0.1:p0,127.0.0.1:p1,...
/// let owner = cluster.owner_of_channel("nearcache:shop:invalidations")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes and joins them into a cluster (3 primaries, 3 replicas); returns once
    /// every node reports `cluster_state:ok` and all agree on who serves each slot.
    ///
    /// # Errors
    ///
    /// When a node does not start (see [`RedisServer::start`]), `redis-cli` is missing or
    /// fails, or the cluster does not settle within 20 s.
    pub fn start() -> io::Result<Self> {
        let nodes = (0..6)
            .map(|_| {
                RedisServer::builder()
                    .cluster_node()
                    .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
                    // A replica may take over however long it was cut off: tests kill nodes.
                    .args(["--cluster-replica-validity-factor", "0"])
                    .args(["--cluster-require-full-coverage", "no"])
                    // Replicas sync at once instead of after the default 5 s delay.
                    .args(["--repl-diskless-sync-delay", "0"])
                    .start()
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cluster = Self { nodes };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null());
        let output = create.output().map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "redis-cli was not found on PATH; install it with `cargo xtask redis` or \
                     `sudo apt-get install -y redis-tools`",
                )
            } else {
                err
            }
        })?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        cluster.wait_settled()?;
        Ok(cluster)
    }

    /// Waits until every node runs, reports `cluster_state:ok`, agrees with the others on
    /// the slot map, and every replica is in sync with its primary (a manual failover needs
    /// that) — after [`start`](Self::start), or after a killed node was restarted and
    /// rejoined as a replica.
    ///
    /// # Errors
    ///
    /// When that does not happen within 20 s.
    pub fn wait_settled(&self) -> io::Result<()> {
        self.wait_until("the cluster is whole and agrees", |cluster| {
            cluster.is_settled()
        })?;
        self.wait_until("every replica is in sync", |cluster| {
            cluster.nodes.iter().all(|node| {
                replication_info(node).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            })
        })
    }

    /// `redis+cluster://127.0.0.1:p0,127.0.0.1:p1,…` with every node as a seed.
    pub fn url(&self) -> String {
        self.url_of(&(0..self.nodes.len()).collect::<Vec<_>>())
    }

    /// `redis+cluster://…` with only the nodes `seeds` as seeds (an instance that knows one
    /// node and must find the rest itself).
    pub fn url_of(&self, seeds: &[usize]) -> String {
        let seeds = seeds.iter().filter_map(|&i| self.nodes.get(i));
        format!("redis+cluster://{}", host_list(seeds))
    }

    /// Node `index`, to kill, restart or query it.
    ///
    /// # Panics
    ///
    /// When `index` is 6 or more.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// Node `index`, mutably (to [`kill`](RedisServer::kill) or
    /// [`restart`](RedisServer::restart) it).
    ///
    /// # Panics
    ///
    /// When `index` is 6 or more.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The hash slot of `channel` (`CLUSTER KEYSLOT`, asked of a running node).
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn slot_of(&self, channel: &str) -> io::Result<u16> {
        self.ask_any(|con| redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel).query(con))
    }

    /// The index of the primary that serves `channel`'s slot, in the view of the first node
    /// that answers.
    ///
    /// # Errors
    ///
    /// When no node answers or no node serves the slot.
    pub fn owner_of_channel(&self, channel: &str) -> io::Result<usize> {
        let slot = self.slot_of(channel)?;
        self.owner_of_slot(slot)
    }

    /// The index of the primary that serves `slot`, in the view of the first node that
    /// answers.
    ///
    /// # Errors
    ///
    /// When no node answers or no node serves the slot.
    pub fn owner_of_slot(&self, slot: u16) -> io::Result<usize> {
        let slots = self.ask_any(slots_of)?;
        let port = owner_port(&slots, slot)
            .ok_or_else(|| io::Error::other(format!("no node serves slot {slot}")))?;
        self.index_of_port(port)
    }

    /// The indexes of the running replicas of primary `primary`, by their own `INFO
    /// replication` (`master_port`).
    ///
    /// # Errors
    ///
    /// When a running node does not answer.
    pub fn replicas_of(&self, primary: usize) -> io::Result<Vec<usize>> {
        let port = self.nodes[primary].port().to_string();
        let mut replicas = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.pid().is_none() || index == primary {
                continue;
            }
            let info = replication_info(node)?;
            if info
                .lines()
                .any(|line| line.strip_prefix("master_port:") == Some(port.as_str()))
            {
                replicas.push(index);
            }
        }
        Ok(replicas)
    }

    /// The cluster node id of node `index` (`CLUSTER MYID`).
    ///
    /// # Errors
    ///
    /// When the node does not answer.
    pub fn id_of(&self, index: usize) -> io::Result<String> {
        let mut con = self.nodes[index].connection()?;
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut con)
            .map_err(redis_error)
    }

    /// Starts moving `slot` from primary `from` to primary `to`: `CLUSTER SETSLOT … IMPORTING`
    /// on `to`, then `… MIGRATING` on `from`. The slot is still served by `from` (sharded
    /// pub/sub keeps being served by the source until the move ends).
    ///
    /// # Errors
    ///
    /// When a node refuses or does not answer.
    pub fn begin_slot_migration(&self, slot: u16, from: usize, to: usize) -> io::Result<()> {
        let from_id = self.id_of(from)?;
        let to_id = self.id_of(to)?;
        self.setslot(to, slot, &["IMPORTING", &from_id])?;
        self.setslot(from, slot, &["MIGRATING", &to_id])
    }

    /// Ends the move of `slot` to primary `to`: `CLUSTER SETSLOT … NODE` on `to`, then on the
    /// source and the other primaries, then waits until every running node names `to` as the
    /// slot's owner. There are no keys to move: the tests store nothing in the cluster.
    ///
    /// # Errors
    ///
    /// When a node refuses, or the nodes do not agree within 20 s.
    pub fn finish_slot_migration(&self, slot: u16, to: usize) -> io::Result<()> {
        let to_id = self.id_of(to)?;
        self.setslot(to, slot, &["NODE", &to_id])?;
        for index in 0..self.nodes.len() {
            if index != to && self.is_primary(index)? {
                self.setslot(index, slot, &["NODE", &to_id])?;
            }
        }
        self.wait_for_owner(slot, to)
    }

    /// A manual failover: `CLUSTER FAILOVER` on replica `replica` (again if it was
    /// abandoned), then waits until every running node names it as the owner of its former
    /// primary's slots (checked on `slot`).
    ///
    /// # Errors
    ///
    /// When the replica refuses, or the cluster does not agree within 20 s.
    pub fn failover(&self, replica: usize, slot: u16) -> io::Result<()> {
        let port = self.nodes[replica].port();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        // A manual failover the primary does not complete within its own timeout (5 s) is
        // abandoned without a word; ask again until it happens or the deadline passes.
        loop {
            let mut con = self.nodes[replica].connection()?;
            redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query::<()>(&mut con)
                .map_err(redis_error)?;
            let attempt_ends = (Instant::now() + MANUAL_FAILOVER_PATIENCE).min(deadline);
            while Instant::now() < attempt_ends {
                if self.is_primary(replica)?
                    && self
                        .ask_any(slots_of)
                        .is_ok_and(|slots| owner_port(&slots, slot) == Some(port))
                {
                    return self.wait_for_owner(slot, replica);
                }
                std::thread::sleep(POLL_PAUSE);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "node {replica} did not take over slot {slot} within {SETTLE_TIMEOUT:?}"
                    ),
                ));
            }
        }
    }

    /// Waits until every running node names node `owner` as the primary serving `slot` and
    /// reports `cluster_state:ok` (after a kill, the automatic failover takes a few node
    /// timeouts).
    ///
    /// # Errors
    ///
    /// When the nodes do not agree within 20 s.
    pub fn wait_for_owner(&self, slot: u16, owner: usize) -> io::Result<()> {
        let port = self.nodes[owner].port();
        self.wait_until(&format!("node {owner} serves slot {slot}"), |cluster| {
            cluster.running_views().is_some_and(|views| {
                views
                    .iter()
                    .all(|(slots, ok)| *ok && owner_port(slots, slot) == Some(port))
            })
        })
    }

    /// Whether node `index` is a primary, by its own `ROLE`.
    ///
    /// # Errors
    ///
    /// When the node does not answer.
    pub fn is_primary(&self, index: usize) -> io::Result<bool> {
        let mut con = self.nodes[index].connection()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).map_err(redis_error)?;
        Ok(matches!(role.first(), Some(redis::Value::BulkString(kind)) if kind == b"master"))
    }

    /// Sends `SPUBLISH channel payload` to node `index`; the number of subscribers reached.
    ///
    /// # Errors
    ///
    /// When the node does not answer or does not serve the channel's slot (`MOVED`).
    pub fn spublish_raw(&self, index: usize, channel: &str, payload: &[u8]) -> io::Result<u64> {
        let mut con = self.nodes[index].connection()?;
        redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut con)
            .map_err(redis_error)
    }

    fn setslot(&self, index: usize, slot: u16, rest: &[&str]) -> io::Result<()> {
        let mut con = self.nodes[index].connection()?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(rest)
            .query::<()>(&mut con)
            .map_err(redis_error)
    }

    fn index_of_port(&self, port: u16) -> io::Result<usize> {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .ok_or_else(|| io::Error::other(format!("no node of this cluster on port {port}")))
    }

    /// Whether every node is up, `cluster_state:ok`, and all agree on the slot map.
    fn is_settled(&self) -> bool {
        if self.nodes.iter().any(|node| node.pid().is_none()) {
            return false;
        }
        self.running_views().is_some_and(|views| {
            views.iter().all(|(_, ok)| *ok)
                && views.windows(2).all(|pair| pair[0].0 == pair[1].0)
                && views.first().is_some_and(|(slots, _)| covers_all(slots))
        })
    }

    /// `(slot ranges, cluster_state is ok)` of every node whose process runs; `None` when one
    /// of them does not answer.
    fn running_views(&self) -> Option<Vec<(Vec<SlotRange>, bool)>> {
        self.nodes
            .iter()
            .filter(|node| node.pid().is_some())
            .map(|node| {
                let mut con = node.connection().ok()?;
                let mut slots = slots_of(&mut con).ok()?;
                slots.sort_unstable();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()?;
                Some((slots, info.contains("cluster_state:ok")))
            })
            .collect()
    }

    fn ask_any<T>(
        &self,
        mut ask: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> io::Result<T> {
        let mut last = io::Error::other("no node is running");
        for node in self.nodes.iter().filter(|node| node.pid().is_some()) {
            match node.connection() {
                Ok(mut con) => match ask(&mut con) {
                    Ok(answer) => return Ok(answer),
                    Err(err) => last = redis_error(err),
                },
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut(&Self) -> bool) -> io::Result<()> {
        settle::poll_until(what, SETTLE_TIMEOUT, POLL_PAUSE, || done(self))
    }
}

/// `(first slot, last slot, primary's port)`.
type SlotRange = (u16, u16, u16);

fn slots_of(con: &mut redis::Connection) -> redis::RedisResult<Vec<SlotRange>> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(con)?;
    let mut out = Vec::new();
    for range in ranges {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (Some(first), Some(last), Some(redis::Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let (Ok(first), Ok(last), Some(Ok(port))) = (
            redis::from_redis_value_ref::<u16>(first),
            redis::from_redis_value_ref::<u16>(last),
            primary.get(1).map(redis::from_redis_value_ref::<u16>),
        ) else {
            continue;
        };
        out.push((first, last, port));
    }
    Ok(out)
}

fn owner_port(slots: &[SlotRange], slot: u16) -> Option<u16> {
    slots
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, port)| *port)
}

fn covers_all(slots: &[SlotRange]) -> bool {
    let covered: u32 = slots
        .iter()
        .map(|(first, last, _)| u32::from(*last) - u32::from(*first) + 1)
        .sum();
    covered == 16384
}

fn replication_info(node: &RedisServer) -> io::Result<String> {
    let mut con = node.connection()?;
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut con)
        .map_err(redis_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn forms_a_cluster_and_moves_a_slot() {
        let cluster = RedisCluster::start().unwrap();
        let channel = "nearcache:kit:invalidations";
        let slot = cluster.slot_of(channel).unwrap();
        let owner = cluster.owner_of_channel(channel).unwrap();
        assert!(cluster.is_primary(owner).unwrap());
        let replicas = cluster.replicas_of(owner).unwrap();
        assert_eq!(replicas.len(), 1, "{replicas:?}");
        let other = (0..6)
            .find(|&i| i != owner && cluster.is_primary(i).unwrap())
            .unwrap();
        cluster.begin_slot_migration(slot, owner, other).unwrap();
        assert_eq!(cluster.owner_of_slot(slot).unwrap(), owner);
        cluster.finish_slot_migration(slot, other).unwrap();
        assert_eq!(cluster.owner_of_slot(slot).unwrap(), other);
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        let ports: Vec<u16> = (0..6).map(|i| cluster.node(i).port()).collect();
        drop(cluster);
        for port in ports {
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        }
    }
}
