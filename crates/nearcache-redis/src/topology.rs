//! [`Topology`]: which kind of Redis deployment a URL names, parsed from its scheme.
//!
//! * `redis://…`, `rediss://…` — one node (or anything that looks like one: a proxy, a managed
//!   endpoint).
//! * `redis+cluster://[user:password@]host1[:port],host2[:port],…` (`rediss+cluster://` for
//!   TLS) — a Redis Cluster, given by any number of seed nodes (port 6379 by default).
//! * `redis+sentinel://[user:password@]host1[:port],host2[:port],…/master-name`
//!   (`rediss+sentinel://` for TLS) — a primary found through Sentinels (port 26379 by
//!   default). The credentials are those of the data nodes; the Sentinels are asked without.
//!
//! Each node the backplane later connects to gets a `redis://` (or `rediss://`) URL built
//! from the scheme, the credentials and its `host:port`, so one parser (the `redis` crate's)
//! reads every address and password.

use crate::slot::slot_of;

/// The deployment a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One node: the URL as given.
    Single,
    /// A Redis Cluster: the seeds to ask, and the channel's hash slot.
    Cluster {
        /// `host:port` of each seed, in the order given.
        seeds: Vec<String>,
        /// The hash slot of the channel.
        slot: u16,
    },
    /// A primary behind Sentinels.
    Sentinel {
        /// `host:port` of each Sentinel, in the order given.
        sentinels: Vec<String>,
        /// The name the Sentinels know the primary by.
        master: String,
    },
}

/// A parsed URL: the topology and how to build the URL of any one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) topology: Topology,
    /// `redis` or `rediss`: the scheme of every node's URL.
    scheme: &'static str,
    /// `user:password` (as written, still percent-encoded), if any.
    userinfo: Option<String>,
    /// The URL of the node checked at start: the URL itself for one node, the first seed or
    /// Sentinel otherwise.
    pub(crate) first: String,
}

impl Parsed {
    /// The URL of data node `host_port`, with the URL's credentials.
    pub(crate) fn node_url(&self, host_port: &str) -> String {
        match &self.userinfo {
            Some(userinfo) => format!("{}://{userinfo}@{host_port}", self.scheme),
            None => format!("{}://{host_port}", self.scheme),
        }
    }

    /// The URL of Sentinel `host_port` (no credentials).
    pub(crate) fn sentinel_url(&self, host_port: &str) -> String {
        format!("{}://{host_port}", self.scheme)
    }

    /// The data nodes' scheme is `rediss`.
    pub(crate) fn is_tls(&self) -> bool {
        self.scheme == "rediss"
    }
}

/// Parses `url`; `channel` gives the slot for a cluster. `Err` says what is wrong, without
/// the password.
pub(crate) fn parse(url: &str, channel: &str) -> Result<Parsed, String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = scheme.to_ascii_lowercase();
    let (tls, kind) = match scheme.as_str() {
        "redis+cluster" | "valkey+cluster" => (false, Kind::Cluster),
        "rediss+cluster" | "valkeys+cluster" => (true, Kind::Cluster),
        "redis+sentinel" | "valkey+sentinel" => (false, Kind::Sentinel),
        "rediss+sentinel" | "valkeys+sentinel" => (true, Kind::Sentinel),
        _ => {
            return Ok(Parsed {
                topology: Topology::Single,
                scheme: "redis",
                userinfo: None,
                first: url.to_owned(),
            });
        }
    };
    let scheme = if tls { "rediss" } else { "redis" };
    // The last `@` ends the credentials, as in `RedactedUrl`.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(rest[..at].to_owned()), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let default_port = match kind {
        Kind::Cluster => 6379,
        Kind::Sentinel => 26379,
    };
    let nodes = hosts
        .split(',')
        .map(|host| with_port(host.trim(), default_port))
        .collect::<Result<Vec<_>, _>>()?;
    let topology = match kind {
        Kind::Cluster => {
            if !matches!(path, "" | "/" | "/0") {
                return Err(format!(
                    "a Redis Cluster has only database 0, but the URL ends with {path:?}"
                ));
            }
            Topology::Cluster {
                seeds: nodes,
                slot: slot_of(channel.as_bytes()),
            }
        }
        Kind::Sentinel => {
            let master = path.strip_prefix('/').unwrap_or(path);
            if master.is_empty() || master.contains(['/', '?']) {
                return Err(
                    "a Sentinel URL ends with the primary's name: redis+sentinel://host:26379/<name>"
                        .to_owned(),
                );
            }
            Topology::Sentinel {
                sentinels: nodes,
                master: master.to_owned(),
            }
        }
    };
    let mut parsed = Parsed {
        topology,
        scheme,
        userinfo,
        first: String::new(),
    };
    parsed.first = match &parsed.topology {
        Topology::Cluster { seeds, .. } => parsed.node_url(&seeds[0]),
        Topology::Sentinel { sentinels, .. } => parsed.sentinel_url(&sentinels[0]),
        Topology::Single => url.to_owned(),
    };
    Ok(parsed)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Cluster,
    Sentinel,
}

/// `host` or `host:port` (`[v6]` or `[v6]:port`) → `host:port`.
fn with_port(host: &str, default_port: u16) -> Result<String, String> {
    if host.is_empty() {
        return Err("an empty host in the list of nodes (check the commas)".to_owned());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in host {host:?}"))?;
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| format!("invalid port {port:?} in host {host:?}"))?,
        None => default_port,
    };
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> Parsed {
        parse(url, "ch").unwrap_or_else(|err| panic!("{url}: {err}"))
    }

    #[test]
    fn plain_urls_are_one_node() {
        let p = parsed("redis://u:pw@h:1/2");
        assert_eq!(p.topology, Topology::Single);
        assert_eq!(p.first, "redis://u:pw@h:1/2");
    }

    #[test]
    fn cluster_urls_list_seeds_and_default_the_port() {
        let p = parsed("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002");
        assert_eq!(
            p.topology,
            Topology::Cluster {
                seeds: vec![
                    "10.0.0.1:7000".to_owned(),
                    "10.0.0.2:6379".to_owned(),
                    "[::1]:7002".to_owned()
                ],
                slot: slot_of(b"ch"),
            }
        );
        assert_eq!(p.first, "redis://app:pw@10.0.0.1:7000");
        assert_eq!(p.node_url("h:1"), "redis://app:pw@h:1");
        assert!(parsed("REDISS+CLUSTER://h").is_tls());
    }

    #[test]
    fn sentinel_urls_name_the_primary() {
        let p = parsed("redis+sentinel://:pw@s1,s2:5000/shop-primary");
        assert_eq!(
            p.topology,
            Topology::Sentinel {
                sentinels: vec!["s1:26379".to_owned(), "s2:5000".to_owned()],
                master: "shop-primary".to_owned(),
            }
        );
        assert_eq!(
            p.first, "redis://s1:26379",
            "Sentinels are asked without credentials"
        );
        assert_eq!(p.node_url("10.0.0.9:6379"), "redis://:pw@10.0.0.9:6379");
    }

    #[test]
    fn mistakes_are_explained() {
        for (url, words) in [
            ("redis+sentinel://s1:26379", "primary's name"),
            ("redis+sentinel://s1:26379/", "primary's name"),
            ("redis+cluster://h1,,h2", "empty host"),
            ("redis+cluster://h1:port", "invalid port"),
            ("redis+cluster://h1/3", "database 0"),
            ("redis+cluster://[::1", "unclosed"),
        ] {
            let err = parse(url, "ch").err().unwrap_or_default();
            assert!(err.contains(words), "{url}: {err}");
        }
    }
}
