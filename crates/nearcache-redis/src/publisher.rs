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
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{debug, info, warn};

use crate::config::RedisConfig;
use crate::error::RedisBackplaneError;
use crate::status::StatusCell;
use crate::target::Target;

#[derive(Debug)]
pub(crate) struct Publisher {
    /// The current connection and its generation. Read-locked only to clone it, never across
    /// an await.
    con: RwLock<(u64, ConnectionManager)>,
    manager_config: ConnectionManagerConfig,
    command: &'static str,
    channel: Bytes,
    timeout: Duration,
    max_payload: usize,
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
        let client = target.client.clone();
        let config_for_open = manager_config.clone();
        let open = async move {
            let mut con = client
                .get_connection_manager_with_config(config_for_open)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        };
        let con = match tokio::time::timeout(config.connect_timeout, open).await {
            Ok(Ok(con)) => con,
            Ok(Err(err)) => return Err(target.connect_error(&err, config.connect_timeout)),
            Err(_) => {
                return Err(RedisBackplaneError::Timeout {
                    addr: target.addr.clone(),
                    after: config.connect_timeout,
                });
            }
        };
        Ok(Self {
            con: RwLock::new((0, con)),
            manager_config,
            command: if config.sharded {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            channel: Bytes::copy_from_slice(config.channel.as_bytes()),
            timeout: config.publish_timeout,
            max_payload: config.max_payload,
            target,
            status,
        })
    }

    /// Sends `payload`; `Ok` once Redis acknowledged it.
    pub(crate) async fn publish(&self, payload: &[u8]) -> Result<(), BackplaneError> {
        if payload.len() > self.max_payload {
            return Err(BackplaneError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        let mut cmd =
            redis::Cmd::with_capacity(3, self.command.len() + self.channel.len() + payload.len());
        cmd.arg(self.command).arg(&self.channel[..]).arg(payload);
        // A clone is a reference count; the connection itself is shared.
        let (generation, mut con) = self.con.read().clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut con)).await {
            Ok(Ok(())) => {
                if let Some(outage) = self.status.publisher_succeeded() {
                    info!(
                        addr = %self.target.addr,
                        ?outage,
                        "redis publisher is back; publishes succeed again"
                    );
                }
                Ok(())
            }
            Ok(Err(err)) if !err.is_timeout() => {
                let reason = self.target.describe(&err);
                self.failed(&reason);
                Err(BackplaneError::Unavailable { reason })
            }
            Ok(Err(_)) | Err(_) => {
                self.failed("no acknowledgement within publish_timeout");
                self.replace(generation);
                Err(BackplaneError::Timeout(self.timeout))
            }
        }
    }

    /// Drops connection `generation` (if it is still the current one) for a fresh one that
    /// connects at the next publish.
    fn replace(&self, generation: u64) {
        let mut current = self.con.write();
        if current.0 != generation {
            return; // another timed-out publish replaced it already
        }
        match ConnectionManager::new_lazy_with_config(
            self.target.client.clone(),
            self.manager_config.clone(),
        ) {
            Ok(fresh) => {
                *current = (generation.wrapping_add(1), fresh);
                debug!(addr = %self.target.addr, "redis publisher connection replaced after a timeout");
            }
            // Only a configuration error, which the first connection would have met already;
            // keep the old connection rather than none.
            Err(err) => {
                debug!(addr = %self.target.addr, reason = %self.target.describe(&err), "could not replace the redis publisher connection")
            }
        }
    }

    fn failed(&self, reason: &str) {
        if self.status.publisher_failed() {
            warn!(
                addr = %self.target.addr,
                url = %self.target.url,
                reason,
                "redis publisher lost its connection; publishes fail until it is back"
            );
        } else {
            debug!(addr = %self.target.addr, reason, "redis publish failed");
        }
    }
}
