//! [`OwnRedis`]: the Redis the demo starts for itself (`--redis auto`, `--redis
//! auto-cluster`), stopped when the run ends, and the one `--faults` may break.

use std::io;

use nearcache_testkit::{RedisCluster, RedisServer};

use crate::cli::RedisTarget;

/// A private Redis: one `redis-server`, or a cluster of 3 primaries and 3 replicas, on
/// loopback ports; every process is killed when this is dropped.
#[derive(Debug)]
pub(crate) enum OwnRedis {
    /// `--redis auto`.
    Server(Box<RedisServer>),
    /// `--redis auto-cluster`.
    Cluster(RedisCluster),
}

impl OwnRedis {
    /// Starts what `target` asks the demo to start; `None` for a Redis the user runs.
    ///
    /// # Errors
    ///
    /// When `redis-server` (or, for a cluster, `redis-cli`) is missing or a node does not
    /// start or join.
    pub(crate) fn start(target: Option<&RedisTarget>) -> io::Result<Option<OwnRedis>> {
        Ok(match target {
            Some(RedisTarget::Auto) => Some(OwnRedis::Server(Box::new(RedisServer::start()?))),
            Some(RedisTarget::AutoCluster) => Some(OwnRedis::Cluster(RedisCluster::start()?)),
            Some(RedisTarget::Url(_)) | None => None,
        })
    }

    /// The URL the instances connect with (`redis://…` or `redis+cluster://…` naming every
    /// node).
    pub(crate) fn url(&self) -> String {
        match self {
            OwnRedis::Server(server) => server.url(),
            OwnRedis::Cluster(cluster) => cluster.url(),
        }
    }
}
