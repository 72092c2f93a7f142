//! A SQLite file that every instance of an example opens: one connection per instance
//! (clones share it) whose queries run on tokio's blocking pool, as SQLite calls block.
//! Included by the examples that keep their data in SQLite (`#[path]`), so each does not
//! write its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rusqlite::Connection;

/// One connection to a database file; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct SharedConnection(Arc<Mutex<Connection>>);

impl SharedConnection {
    /// Opens the file at `path` (creating it if needed). A query waits up to `busy_timeout`
    /// for a lock another connection holds; writes are `synchronous = NORMAL` (with WAL:
    /// durable enough for an example, and no fsync per write).
    ///
    /// # Errors
    ///
    /// The SQLite error when the file cannot be opened.
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<SharedConnection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        Ok(SharedConnection(Arc::new(Mutex::new(conn))))
    }

    /// Runs `query` on the connection on tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// What `query` returns, or the pool's error (as `E`) when the task did not finish.
    pub(crate) async fn run<T, E>(
        &self,
        query: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<tokio::task::JoinError> + Send + 'static,
    {
        let conn = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || query(&mut conn.lock())).await?
    }

    /// The connection itself, for a call made where blocking is fine (set-up, tests).
    // The scale-out demo calls it only from its tests.
    #[allow(dead_code)]
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.0.lock()
    }
}
