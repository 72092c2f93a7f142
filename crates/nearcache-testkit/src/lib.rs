//! nearcache-testkit: real Redis deployments and network faults for the tests of nearcache's
//! crates, its benchmarks, the demo and the soak. Not published.
//!
//! It depends on no nearcache crate (only on `redis`, `tokio` and `tempfile`), so any of them
//! can dev-depend on it. Every server it starts listens on 127.0.0.1 only and is killed when
//! its handle is dropped.
//!
//! * [`RedisServer`]: a private `redis-server` on a free loopback port, killable and
//!   restartable, for tests that need a real Redis.
//! * [`RedisCluster`]: a private Redis Cluster (3 primaries, 3 replicas) on loopback ports.
//! * [`RedisSentinels`]: a private primary, replica and three Sentinels on loopback ports.
//! * [`TcpProxy`]: a loopback relay whose connections can be made to go silent, to play a
//!   network partition (half-open connections) between an instance and Redis.

#![forbid(unsafe_code)]

pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
mod settle;
pub mod tcp_proxy;

pub use redis_cluster::RedisCluster;
pub use redis_sentinel::RedisSentinels;
pub use redis_server::{RedisServer, RedisServerBuilder};
pub use tcp_proxy::TcpProxy;
