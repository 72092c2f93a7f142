//! The publishing connection: one `PUBLISH` (or `SPUBLISH`) per payload, bounded in time.
//!
//! It rides on a `redis::aio::ConnectionManager`: one multiplexed connection shared by every
//! caller (no lock is held across an await; concurrent publishes pipeline on the socket),
//! replaced in the background when it drops. The manager is built with zero retries so a
//! publish during an outage fails at once with the last connection error instead of sitting
//! in the manager's own backoff: the facade's outbox owns retrying, and each failing publish
//! starts one fresh connection attempt, so attempts follow the facade's retry pace.
//!
//! The manager only replaces a connection that reported an error. A connection that went
//! silent (a half-open TCP connection after a network partition) reports nothing: commands on
//! it just time out, for as long as the kernel keeps retransmitting. So a publish that gets no
//! acknowledgement within `publish_timeout` also replaces the manager with a fresh (lazy) one;
//! the next publish connects anew. A generation number makes concurrent timeouts on the same
//! connection replace it once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nearcache_backplane::BackplaneError;
use parking_lot::RwLock;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue};
use tracing::{debug, info, warn};

use crate::config::RedisConfig;
use crate::error::{Failure, RedisBackplaneError, RedisCause};
use crate::replay::{LogKeys, ScriptCall};
use crate::resolve::ResolveError;
use crate::status::StatusCell;
use crate::target::Target;
use crate::topology::Topology;

/// The publishing connection.
#[derive(Clone)]
enum Conn {
    /// One node: a manager that reconnects to it.
    Manager(ConnectionManager),
    /// The resolved node of a cluster or Sentinel URL; `None` until the next publish resolves
    /// and connects.
    Direct(Option<MultiplexedConnection>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manager(_) => f.write_str("Manager"),
            Self::Direct(con) => write!(f, "Direct(connected: {})", con.is_some()),
        }
    }
}

/// Why a publish failed.
enum Failed {
    Timeout,
    Other(Failure),
}

#[derive(Debug)]
pub(crate) struct Publisher {
    /// The current connection and its generation. Read-locked only to clone it, never across
    /// an await.
    con: RwLock<(u64, Conn)>,
    /// Serialises connecting a [`Conn::Direct`], so concurrent publishes resolve once.
    connecting: tokio::sync::Mutex<()>,
    manager_config: ConnectionManagerConfig,
    command: &'static str,
    channel: Bytes,
    timeout: Duration,
    max_payload: usize,
    /// The replay log: when set, each payload is appended to it and published by one script.
    log: Option<LogKeys>,
    target: Arc<Target>,
    status: Arc<StatusCell>,
}

impl Publisher {
    /// Opens the connection and checks it with a `PING`, so a wrong password or a missing
    /// one fails here rather than at the first publish.
    pub(crate) async fn connect(
        target: Arc<Target>,
        config: &RedisConfig,
        status: Arc<StatusCell>,
    ) -> Result<Self, RedisBackplaneError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // The publish timeout is ours (below), so a timeout is seen as one and replaces
            // the connection; the manager's own would surface as an ordinary error.
            .set_response_timeout(None)
            .set_number_of_retries(0);
        let con = match target.parsed.topology {
            Topology::Single => {
                Conn::Manager(open_manager(&target, config, &manager_config).await?)
            }
            Topology::Cluster { .. } | Topology::Sentinel { .. } => {
                Conn::Direct(Some(open_direct(&target, config).await?))
            }
        };
        Ok(Self {
            con: RwLock::new((0, con)),
            connecting: tokio::sync::Mutex::new(()),
            manager_config,
            command: if config.sharded {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            channel: Bytes::from(config.channel_name()),
            timeout: config.publish_timeout,
            max_payload: config.max_payload,
            log: LogKeys::for_channel(&config.channel_name(), config.replay_log_len),
            target,
            status,
        })
    }

    /// The replay log's keys, when it keeps one.
    pub(crate) fn log(&self) -> Option<&LogKeys> {
        self.log.as_ref()
    }

    /// Sends `payload` (with a log: appends it and publishes it, in one script); `Ok` once
    /// Redis acknowledged it.
    pub(crate) async fn publish(&self, payload: &[u8]) -> Result<(), BackplaneError> {
        if payload.len() > self.max_payload {
            return Err(BackplaneError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        match &self.log {
            Some(log) => {
                self.run_script::<()>(&log.publish_cmd(self.command, &self.channel, payload))
                    .await
            }
            None => {
                let mut cmd = redis::Cmd::with_capacity(
                    3,
                    self.command.len() + self.channel.len() + payload.len(),
                );
                cmd.arg(self.command).arg(&self.channel[..]).arg(payload);
                self.run::<()>(&cmd).await
            }
        }
    }

    /// Runs one command on the publishing connection, bounded by `publish_timeout`, with the
    /// publisher's connection handling (a timeout replaces the connection).
    pub(crate) async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackplaneError> {
        self.run_with(cmd, None).await
    }

    /// Runs a script by its SHA1, and in full when the server does not know it (`NOSCRIPT`:
    /// the first call, or its script cache was emptied by a restart or `SCRIPT FLUSH`), both
    /// within one `publish_timeout`.
    pub(crate) async fn run_script<T: FromRedisValue>(
        &self,
        call: &ScriptCall,
    ) -> Result<T, BackplaneError> {
        self.run_with(&call.by_hash, Some(&call.in_full)).await
    }

    async fn run_with<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        unknown_script: Option<&Cmd>,
    ) -> Result<T, BackplaneError> {
        // A clone is a reference count; the connection itself is shared.
        let (generation, con) = self.con.read().clone();
        // Connecting (when needed) and the command share one `publish_timeout`.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let outcome = match con {
            Conn::Manager(mut con) => self.send(cmd, unknown_script, &mut con, deadline).await,
            Conn::Direct(Some(mut con)) => self.send(cmd, unknown_script, &mut con, deadline).await,
            Conn::Direct(None) => {
                match tokio::time::timeout_at(deadline, self.connect_direct(generation)).await {
                    Ok(Ok(mut con)) => self.send(cmd, unknown_script, &mut con, deadline).await,
                    Ok(Err(failure)) => Err(Failed::Other(failure)),
                    Err(_) => Err(Failed::Timeout),
                }
            }
        };
        match outcome {
            Ok(value) => {
                if let Some(outage) = self.status.publisher_succeeded() {
                    info!(
                        addr = %self.target.addr,
                        ?outage,
                        "redis publisher is back; publishes succeed again"
                    );
                }
                Ok(value)
            }
            Err(Failed::Other(failure)) => {
                self.failed(&failure);
                self.drop_direct(generation);
                Err(failure.into_unavailable())
            }
            Err(Failed::Timeout) => {
                self.failed(&"no acknowledgement within publish_timeout");
                self.replace(generation);
                Err(BackplaneError::Timeout(self.timeout))
            }
        }
    }

    /// One command, bounded by `deadline`; when it is a script the server does not know,
    /// `unknown_script` (the same call in full) instead.
    async fn send<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        unknown_script: Option<&Cmd>,
        con: &mut impl ConnectionLike,
        deadline: tokio::time::Instant,
    ) -> Result<T, Failed> {
        let mut outcome = tokio::time::timeout_at(deadline, cmd.query_async::<T>(con)).await;
        if let (Ok(Err(err)), Some(in_full)) = (&outcome, unknown_script)
            && err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        {
            debug!(
                addr = %self.target.addr,
                "redis does not know the replay log's script (first call, restart or SCRIPT \
                 FLUSH): sending it in full once"
            );
            outcome = tokio::time::timeout_at(deadline, in_full.query_async::<T>(con)).await;
        }
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if !err.is_timeout() => Err(Failed::Other(Failure::because(
                format!("a command to Redis at {} failed", self.target.addr),
                RedisCause::new(err, self.target.password()),
            ))),
            Ok(Err(_)) | Err(_) => Err(Failed::Timeout),
        }
    }

    /// Resolves the node and connects to it, unless another publish did so since
    /// `generation`.
    async fn connect_direct(&self, generation: u64) -> Result<MultiplexedConnection, Failure> {
        let _connecting = self.connecting.lock().await;
        if let (current, Conn::Direct(Some(con))) = &*self.con.read()
            && *current != generation
        {
            return Ok(con.clone());
        }
        let node = self
            .target
            .resolve()
            .await
            .map_err(ResolveError::into_failure)?;
        let con = node
            .client
            .get_multiplexed_async_connection_with_config(&direct_config(
                self.target.connect_timeout,
            ))
            .await
            .map_err(|err| {
                Failure::because(
                    format!("cannot connect to Redis at {}", node.addr),
                    RedisCause::new(err, self.target.password()),
                )
            })?;
        debug!(addr = %node.addr, "redis publisher connected to the resolved node");
        let mut current = self.con.write();
        current.0 = current.0.wrapping_add(1);
        current.1 = Conn::Direct(Some(con.clone()));
        Ok(con)
    }

    /// Forgets direct connection `generation` (if it is still the current one): the next
    /// publish resolves and connects anew.
    fn drop_direct(&self, generation: u64) {
        let mut current = self.con.write();
        if current.0 == generation && matches!(current.1, Conn::Direct(Some(_))) {
            *current = (generation.wrapping_add(1), Conn::Direct(None));
        }
    }

    /// Drops connection `generation` (if it is still the current one) for a fresh one that
    /// connects at the next publish.
    fn replace(&self, generation: u64) {
        let mut current = self.con.write();
        if current.0 != generation {
            return; // another timed-out publish replaced it already
        }
        if let Conn::Direct(_) = current.1 {
            *current = (generation.wrapping_add(1), Conn::Direct(None));
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.target.client.clone(),
            self.manager_config.clone(),
        ) {
            Ok(fresh) => {
                *current = (generation.wrapping_add(1), Conn::Manager(fresh));
                debug!(addr = %self.target.addr, "redis publisher connection replaced after a timeout");
            }
            // Only a configuration error, which the first connection would have met already;
            // keep the old connection rather than none.
            Err(err) => {
                debug!(addr = %self.target.addr, reason = %self.target.describe(&err), "could not replace the redis publisher connection")
            }
        }
    }

    fn failed(&self, reason: &dyn std::fmt::Display) {
        if self.status.publisher_failed() {
            warn!(
                addr = %self.target.addr,
                url = %self.target.url,
                %reason,
                "redis publisher lost its connection; publishes fail until it is back"
            );
        } else {
            debug!(addr = %self.target.addr, %reason, "redis publish failed");
        }
    }
}

/// Opens the manager of a one-node URL and checks it with a `PING`.
async fn open_manager(
    target: &Target,
    config: &RedisConfig,
    manager_config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, RedisBackplaneError> {
    let client = target.client.clone();
    let config_for_open = manager_config.clone();
    let open = async move {
        let mut con = client
            .get_connection_manager_with_config(config_for_open)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok::<_, redis::RedisError>(con)
    };
    match tokio::time::timeout(config.connect_timeout, open).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(err)) => Err(target.node_error(&target.single_node(), &err, config.connect_timeout)),
        Err(_) => Err(RedisBackplaneError::Timeout {
            addr: target.addr.clone(),
            after: config.connect_timeout,
        }),
    }
}

/// Resolves the node of a cluster or Sentinel URL, connects and checks it with a `PING`.
async fn open_direct(
    target: &Target,
    config: &RedisConfig,
) -> Result<MultiplexedConnection, RedisBackplaneError> {
    let timed_out = || RedisBackplaneError::Timeout {
        addr: target.addr.clone(),
        after: config.connect_timeout,
    };
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let node = match tokio::time::timeout_at(deadline, target.resolve()).await {
        Ok(Ok(node)) => node,
        Ok(Err(err)) => return Err(err.into_connect_error(target, &config.channel_name())),
        Err(_) => return Err(timed_out()),
    };
    let open = async {
        let mut con = node
            .client
            .get_multiplexed_async_connection_with_config(&direct_config(config.connect_timeout))
            .await?;
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok::<_, redis::RedisError>(con)
    };
    match tokio::time::timeout_at(deadline, open).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(err)) => Err(target.node_error(&node, &err, config.connect_timeout)),
        Err(_) => Err(timed_out()),
    }
}

/// A direct connection: bounded connecting; the publish timeout is ours (see
/// [`Publisher::send`]).
fn direct_config(connect_timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(None)
}
