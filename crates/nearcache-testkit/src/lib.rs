//! nearcache-suite: what the integration tests (`tests/`), the benchmarks (`benches/`), the
//! demo and the soak share. Not published.
//!
//! * [`RedisServer`]: a private `redis-server` on a free loopback port, killable and
//!   restartable, for tests that need a real Redis.
//! * [`RedisCluster`]: a private Redis Cluster (3 primaries, 3 replicas) on loopback ports.
//! * [`RedisSentinels`]: a private primary, replica and three Sentinels on loopback ports.
//! * [`TcpProxy`]: a loopback relay whose connections can be made to go silent, to play a
//!   network partition (half-open connections) between an instance and Redis.

pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod tcp_proxy;

pub use redis_cluster::RedisCluster;
pub use redis_sentinel::RedisSentinels;
pub use redis_server::{RedisServer, RedisServerBuilder};
pub use tcp_proxy::TcpProxy;

/// The README, whose usage example `cargo test` compiles and runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
