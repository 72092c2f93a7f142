//! The Redis the soak runs against (`--topology single|cluster|sentinel`) and the faults each
//! one suffers:
//!
//! * `single`: one `redis-server`, killed and restarted after a random outage, or its
//!   subscribers `CLIENT KILL`ed;
//! * `cluster`: 3 primaries + 3 replicas; the channel's shard fails over (`CLUSTER
//!   FAILOVER`), its primary is killed (the replica takes over; the killed node is restarted
//!   and rejoins as a replica), or the channel's slot migrates to another primary;
//! * `sentinel`: a primary, a replica and 3 Sentinels; a `SENTINEL FAILOVER`, or the primary
//!   is killed (Sentinel promotes the replica; the killed node is restarted and Sentinel
//!   makes it the new replica).
//!
//! [`Deployment::fault`] returns once the fault is over on the Redis side (failover done,
//! killed node back); the injector then measures how long the instances take to recover.

use std::io;
use std::time::Duration;

use nearcache_testkit::{RedisCluster, RedisSentinels, RedisServer};
use rand::Rng;
use rand::rngs::ThreadRng;

use crate::faults::{Fault, FaultCounts};

/// Which deployment `--topology` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Topology {
    /// One redis-server.
    Single,
    /// A Redis Cluster of 3 primaries and 3 replicas.
    Cluster,
    /// A primary and a replica behind 3 Sentinels.
    Sentinel,
}

/// A running deployment; everything in it is killed when dropped.
pub(crate) enum Deployment {
    Single(RedisServer),
    Cluster {
        cluster: RedisCluster,
        channel: String,
    },
    Sentinel(RedisSentinels),
}

impl Deployment {
    /// Starts `topology`; `channel` is the soak's channel (a cluster's faults follow its slot).
    pub(crate) fn start(topology: Topology, channel: &str) -> io::Result<Self> {
        Ok(match topology {
            Topology::Single => Self::Single(RedisServer::start()?),
            Topology::Cluster => Self::Cluster {
                cluster: RedisCluster::start()?,
                channel: channel.to_owned(),
            },
            Topology::Sentinel => Self::Sentinel(RedisSentinels::start()?),
        })
    }

    /// The URL the instances connect with.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster { cluster, .. } => cluster.url(),
            Self::Sentinel(sentinels) => sentinels.url(),
        }
    }

    /// One random fault, over on the Redis side when this returns.
    pub(crate) fn fault(&mut self, rng: &mut ThreadRng, counts: &FaultCounts) -> io::Result<()> {
        match self {
            Self::Single(server) => single_fault(server, rng, counts),
            Self::Cluster { cluster, channel } => cluster_fault(cluster, channel, rng, counts),
            Self::Sentinel(sentinels) => sentinel_fault(sentinels, rng, counts),
        }
    }
}

fn single_fault(
    server: &mut RedisServer,
    rng: &mut ThreadRng,
    counts: &FaultCounts,
) -> io::Result<()> {
    if rng.random_bool(0.5) {
        counts.note(Fault::RedisKill);
        server.kill()?;
        let outage = Duration::from_millis(rng.random_range(300..2_500));
        tracing::info!(?outage, "redis-server killed");
        std::thread::sleep(outage);
        server.restart()
    } else {
        counts.note(Fault::SubscriberKill);
        let killed = server.client_kill_pubsub()?;
        tracing::info!(killed, "CLIENT KILL TYPE pubsub");
        Ok(())
    }
}

fn cluster_fault(
    cluster: &mut RedisCluster,
    channel: &str,
    rng: &mut ThreadRng,
    counts: &FaultCounts,
) -> io::Result<()> {
    let slot = cluster.slot_of(channel)?;
    let owner = cluster.owner_of_slot(slot)?;
    match rng.random_range(0..3) {
        0 => {
            counts.note(Fault::Failover);
            let replica = first_replica(cluster, owner)?;
            tracing::info!(owner, replica, "CLUSTER FAILOVER of the channel's shard");
            cluster.failover(replica, slot)
        }
        1 => {
            counts.note(Fault::RedisKill);
            let replica = first_replica(cluster, owner)?;
            tracing::info!(owner, replica, "the channel's primary killed");
            cluster.node_mut(owner).kill()?;
            cluster.wait_for_owner(slot, replica)?;
            cluster.node_mut(owner).restart()?;
            cluster.wait_settled()
        }
        _ => {
            counts.note(Fault::Migration);
            let target = (0..6)
                .filter(|&i| i != owner)
                .find(|&i| cluster.is_primary(i).unwrap_or(false))
                .ok_or_else(|| io::Error::other("no other primary"))?;
            tracing::info!(slot, owner, target, "the channel's slot migrates");
            cluster.begin_slot_migration(slot, owner, target)?;
            cluster.finish_slot_migration(slot, target)
        }
    }
}

fn first_replica(cluster: &RedisCluster, primary: usize) -> io::Result<usize> {
    cluster
        .replicas_of(primary)?
        .first()
        .copied()
        .ok_or_else(|| io::Error::other(format!("primary {primary} has no replica")))
}

fn sentinel_fault(
    sentinels: &mut RedisSentinels,
    rng: &mut ThreadRng,
    counts: &FaultCounts,
) -> io::Result<()> {
    if rng.random_bool(0.5) {
        counts.note(Fault::Failover);
        tracing::info!("SENTINEL FAILOVER");
        sentinels.failover()?;
    } else {
        counts.note(Fault::RedisKill);
        let old = sentinels.primary()?;
        tracing::info!(old, "the primary killed");
        sentinels.node_mut(old).kill()?;
        sentinels.wait_for_new_primary(old)?;
        sentinels.node_mut(old).restart()?;
    }
    sentinels.wait_healthy()
}
