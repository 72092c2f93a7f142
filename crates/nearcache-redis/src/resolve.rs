//! Finding the node to talk to: the URL's node, the Redis Cluster primary that serves the
//! channel's hash slot, or the primary a Sentinel names.
//!
//! Every connection attempt of the publisher and the subscriber resolves anew, so after a
//! slot migration or a failover the next attempt goes to the new owner or primary. A cluster
//! is asked with `CLUSTER SLOTS` (seeds in turn until one answers); a Sentinel with `SENTINEL
//! GET-MASTER-ADDR-BY-NAME` (Sentinels in turn), after which the named node must answer
//! `ROLE` as a primary — a node Sentinel still names while it is being demoted would accept
//! `PUBLISH` as a replica and forward it nowhere.

use std::fmt;
use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};

use crate::error::{Chain, ErrorClass, Failure, RedisBackplaneError, RedisCause, classify};
use crate::target::{Node, Target};
use crate::topology::Topology;

/// Why no node could be chosen. Every text is scrubbed of the password.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// No seed or Sentinel answered; `(address, reason)` for each one tried.
    NoneReachable(Vec<(String, String)>),
    /// The cluster answered but no node serves the slot.
    SlotNotServed { slot: u16, asked: String },
    /// The Sentinels answered but know no primary by that name.
    UnknownMaster { master: String, asked: String },
    /// The node is not usable: it refused the credentials, or is not a primary.
    Node(RedisBackplaneError),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoneReachable(tried) => {
                f.write_str("no node reachable:")?;
                for (addr, reason) in tried {
                    write!(f, " {addr}: {reason};")?;
                }
                Ok(())
            }
            Self::SlotNotServed { slot, asked } => {
                write!(f, "no cluster node serves slot {slot} (asked {asked})")
            }
            Self::UnknownMaster { master, asked } => {
                write!(
                    f,
                    "the Sentinels ({asked}) know no primary named {master:?}"
                )
            }
            // Read in logs and in `NoNodeReachable`'s reasons: the whole chain.
            Self::Node(err) => Chain(err).fmt(f),
        }
    }
}

impl ResolveError {
    /// The failure of a publish or a subscription that needed a node.
    pub(crate) fn into_failure(self) -> Failure {
        match self {
            Self::Node(err) => Failure::because("no usable Redis node", err),
            other => Failure::new(other.to_string()),
        }
    }

    /// The typed error `connect` returns for this.
    pub(crate) fn into_connect_error(self, target: &Target, channel: &str) -> RedisBackplaneError {
        match self {
            Self::NoneReachable(tried) => RedisBackplaneError::NoNodeReachable {
                nodes: target.addr.clone(),
                reasons: tried
                    .iter()
                    .map(|(addr, reason)| format!("{addr}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            Self::SlotNotServed { slot, asked } => RedisBackplaneError::SlotNotServed {
                slot,
                channel: channel.to_owned(),
                asked,
            },
            Self::UnknownMaster { master, asked } => {
                RedisBackplaneError::UnknownMaster { master, asked }
            }
            Self::Node(err) => err,
        }
    }
}

impl Target {
    /// The node to connect to now.
    pub(crate) async fn resolve(&self) -> Result<Node, ResolveError> {
        match &self.parsed.topology {
            Topology::Single => Ok(self.single_node()),
            Topology::Cluster { seeds, slot } => self.slot_owner(seeds, *slot).await,
            Topology::Sentinel { sentinels, master } => self.primary(sentinels, master).await,
        }
    }

    async fn slot_owner(&self, seeds: &[String], slot: u16) -> Result<Node, ResolveError> {
        let mut tried = Vec::new();
        let mut answered = Vec::new();
        let mut refused_credentials = None;
        for seed in self.in_turn(seeds) {
            let answer = async {
                let node = self.data_node(seed).map_err(Refusal::other)?;
                let mut con = self.open(&node).await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut con)
                    .await
                    .map_err(|err| self.refusal(&err))
            };
            match answer.await {
                Ok(slots) => match owner_of(&slots, slot) {
                    Some(owner) => {
                        self.answered(seeds, seed);
                        let owner = match owner.host.as_str() {
                            // An empty or `?` host means "the address you reached me at".
                            "" | "?" => host_of(seed).map_or_else(
                                || seed.clone(),
                                |host| format!("{host}:{}", owner.port),
                            ),
                            _ => owner.host_port(),
                        };
                        return self.data_node(&owner).map_err(|reason| {
                            ResolveError::NoneReachable(vec![(owner.clone(), reason)])
                        });
                    }
                    None => answered.push(seed.clone()),
                },
                Err(refusal) => {
                    if let (Some(source), None) = (&refusal.auth, &refused_credentials) {
                        refused_credentials = Some(RedisBackplaneError::Auth {
                            addr: seed.clone(),
                            source: source.clone(),
                        });
                    }
                    tried.push((seed.clone(), refusal.reason));
                }
            }
        }
        if let (true, Some(err)) = (answered.is_empty(), refused_credentials) {
            // A node that answers but refuses is no reachability problem: say what to fix.
            Err(ResolveError::Node(err))
        } else if answered.is_empty() {
            Err(ResolveError::NoneReachable(tried))
        } else {
            Err(ResolveError::SlotNotServed {
                slot,
                asked: answered.join(","),
            })
        }
    }

    async fn primary(&self, sentinels: &[String], master: &str) -> Result<Node, ResolveError> {
        let mut tried = Vec::new();
        let mut unknown = Vec::new();
        let mut not_primary = None;
        for sentinel in self.in_turn(sentinels) {
            let answer = async {
                let node = self.sentinel_node(sentinel)?;
                let mut con = self.open(&node).await.map_err(|refusal| refusal.reason)?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut con)
                    .await
                    .map_err(|err| self.describe(&err))
            };
            let (host, port) = match answer.await {
                Ok(Some(addr)) => {
                    self.answered(sentinels, sentinel);
                    addr
                }
                Ok(None) => {
                    unknown.push(sentinel.clone());
                    continue;
                }
                Err(reason) => {
                    tried.push((sentinel.clone(), reason));
                    continue;
                }
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let node = self
                .data_node(&addr)
                .map_err(|reason| ResolveError::NoneReachable(vec![(addr.clone(), reason)]))?;
            match self.role(&node).await {
                Ok(role) if role == "master" => return Ok(node),
                Ok(role) => {
                    not_primary = Some(RedisBackplaneError::Server {
                        addr: node.addr.clone(),
                        reason: format!(
                            "Sentinel {sentinel} names it the primary of {master:?} but it is a \
                             {role} (a failover is in progress)"
                        ),
                        source: None,
                    });
                }
                Err(err) => return Err(ResolveError::Node(err)),
            }
        }
        if let Some(err) = not_primary {
            return Err(ResolveError::Node(err));
        }
        if unknown.is_empty() {
            Err(ResolveError::NoneReachable(tried))
        } else {
            Err(ResolveError::UnknownMaster {
                master: master.to_owned(),
                asked: unknown.join(","),
            })
        }
    }

    /// `hosts` in the order to ask them: from the one that answered last, so a seed or
    /// Sentinel that hangs (a black-holed address, whose connection takes all of
    /// `connect_timeout`) does not stand first in every attempt — before each host is asked,
    /// the next attempt is set to start after it, and an answer moves the start back to it.
    fn in_turn<'a>(&self, hosts: &'a [String]) -> impl Iterator<Item = &'a String> {
        let start = self.first_to_ask.load(Ordering::Relaxed);
        (0..hosts.len()).map(move |i| {
            let at = (start + i) % hosts.len();
            self.first_to_ask
                .store((at + 1) % hosts.len(), Ordering::Relaxed);
            &hosts[at]
        })
    }

    /// `host` answered: ask it first next time.
    fn answered(&self, hosts: &[String], host: &str) {
        if let Some(at) = hosts.iter().position(|h| h == host) {
            self.first_to_ask.store(at, Ordering::Relaxed);
        }
    }

    /// `ROLE` of a data node: `master`, `slave`, ...
    async fn role(&self, node: &Node) -> Result<String, RedisBackplaneError> {
        let ask = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.command_timeout));
            let mut con = node
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut con).await?;
            Ok::<_, RedisError>(match role.first() {
                Some(Value::BulkString(kind)) => String::from_utf8_lossy(kind).into_owned(),
                Some(Value::SimpleString(kind)) => kind.clone(),
                _ => String::new(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, ask).await {
            Ok(Ok(role)) => Ok(role),
            Ok(Err(err)) => Err(self.node_error(node, &err, self.connect_timeout)),
            Err(_) => Err(RedisBackplaneError::Timeout {
                addr: node.addr.clone(),
                after: self.connect_timeout,
            }),
        }
    }

    fn refusal(&self, err: &RedisError) -> Refusal {
        Refusal {
            reason: self.describe(err),
            auth: (classify(err) == ErrorClass::Auth)
                .then(|| RedisCause::new(err.clone(), self.password())),
        }
    }

    /// A short-lived connection to a seed or a Sentinel, bounded in time.
    async fn open(&self, node: &Node) -> Result<MultiplexedConnection, Refusal> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        match tokio::time::timeout(
            self.connect_timeout,
            node.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(con)) => Ok(con),
            Ok(Err(err)) => Err(self.refusal(&err)),
            Err(_) => Err(Refusal::other(format!(
                "no connection within connect_timeout ({:?})",
                self.connect_timeout
            ))),
        }
    }
}

/// Why a seed or Sentinel gave no answer, password scrubbed.
struct Refusal {
    reason: String,
    /// What it said, when it refused the credentials or the ACL user's permissions.
    auth: Option<RedisCause>,
}

impl Refusal {
    fn other(reason: String) -> Self {
        Self { reason, auth: None }
    }
}

/// The primary of one slot range in a `CLUSTER SLOTS` answer.
struct Owner {
    host: String,
    port: u16,
}

impl Owner {
    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The primary serving `slot` in a `CLUSTER SLOTS` answer:
/// `[[first, last, [host, port, id, …], replicas…], …]`.
fn owner_of(slots: &Value, slot: u16) -> Option<Owner> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(parts) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        if !(*first..=*last).contains(&i64::from(slot)) {
            return None;
        }
        let host = match primary.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return None,
        };
        let port = match primary.get(1) {
            Some(Value::Int(port)) => u16::try_from(*port).ok()?,
            _ => return None,
        };
        Some(Owner { host, port })
    })
}

/// The host part of `host:port`.
fn host_of(host_port: &str) -> Option<&str> {
    host_port.rsplit_once(':').map(|(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: i64, last: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn finds_the_owner_of_a_slot() {
        let slots = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "10.0.0.2", 7001),
            range(10923, 16383, "::1", 7002),
        ]);
        let owner = owner_of(&slots, 5461).map(|o| o.host_port());
        assert_eq!(owner.as_deref(), Some("10.0.0.2:7001"));
        let owner = owner_of(&slots, 16383).map(|o| o.host_port());
        assert_eq!(owner.as_deref(), Some("[::1]:7002"));
        let partial = Value::Array(vec![range(0, 100, "h", 1)]);
        assert!(owner_of(&partial, 101).is_none());
        assert!(owner_of(&Value::Nil, 0).is_none());
    }

    #[test]
    fn a_host_that_hangs_is_not_asked_first_again() {
        let target = Target::new(&crate::RedisConfig::new("redis+cluster://a:1,b:2,c:3"))
            .unwrap_or_else(|err| panic!("{err}"));
        let hosts: Vec<String> = ["a:1", "b:2", "c:3"].map(str::to_owned).to_vec();
        let order = |target: &Target| target.in_turn(&hosts).cloned().collect::<Vec<_>>();
        assert_eq!(order(&target), ["a:1", "b:2", "c:3"]);
        // An attempt cut short while asking its first host (the caller's timeout).
        let mut attempt = target.in_turn(&hosts);
        assert_eq!(attempt.next().map(String::as_str), Some("a:1"));
        drop(attempt);
        assert_eq!(order(&target), ["b:2", "c:3", "a:1"]);
        target.answered(&hosts, "c:3");
        assert_eq!(order(&target), ["c:3", "a:1", "b:2"]);
    }

    #[test]
    fn errors_say_what_is_missing() {
        let err = ResolveError::SlotNotServed {
            slot: 42,
            asked: "h:1".to_owned(),
        };
        assert!(err.to_string().contains("serves slot 42"));
        let err = ResolveError::UnknownMaster {
            master: "shop".to_owned(),
            asked: "s:26379".to_owned(),
        };
        assert!(err.to_string().contains("no primary named \"shop\""));
        let err = ResolveError::NoneReachable(vec![("h:1".to_owned(), "refused".to_owned())]);
        assert_eq!(err.to_string(), "no node reachable: h:1: refused;");
    }
}
