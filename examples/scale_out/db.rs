//! The demo's product database: one SQLite file (WAL mode) in a temporary directory, opened
//! by every instance, whether the instances share a process or each has its own.
//!
//! * `products(id, catalog, version)`: every write increments a product's version; catalog
//!   `c` lists the products whose id modulo the number of catalogs is `c`.
//! * `writes(seq, product, version, at)`: the write log the stale-read check mirrors
//!   ([`Database::refresh`]). A write commits the new version with its log row, `at` still
//!   empty, and only then stamps `at` with the wall clock: a read that returned the old
//!   version queried before the commit, so it started before `at` and is never accused. A
//!   mirror stops at a row whose `at` is still empty and does not move its horizon past it.
//!
//! Every query waits the configured latency first, as a remote database's round trip would,
//! and runs on tokio's blocking pool (SQLite calls block).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::clock::{self, Micros};
use crate::sqlite::SharedConnection;
use crate::write_log::{FIRST_VERSION, WriteLog};

/// The database file's name in the run's directory.
pub(crate) const FILE_NAME: &str = "products.sqlite3";

/// How long a query waits for a lock another connection holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries of [`Database::refresh_patiently`], and of stamping a write's time.
const REFRESH_TRIES: u32 = 5;

/// How products are spread over catalogs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Number of products (ids `0..products`).
    pub(crate) products: u32,
    /// Number of catalogs (ids `0..catalogs`); product `p` is in catalog `p % catalogs`.
    pub(crate) catalogs: u32,
}

impl Layout {
    /// The catalog of `product`.
    pub(crate) fn catalog_of(&self, product: u32) -> u32 {
        product % self.catalogs.max(1)
    }
}

/// One product row as a query returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Product {
    /// Its id.
    pub(crate) id: u32,
    /// Its version when the query read it.
    pub(crate) version: u64,
}

/// A catalog page: every product of one catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogPage {
    /// The catalog.
    pub(crate) catalog: u32,
    /// Its products, with the versions the query read, in id order.
    pub(crate) products: Vec<Product>,
}

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// A product id outside the table (a bug in the workload).
    #[error("product {0} is not in the database")]
    NoSuchProduct(u32),
    /// SQLite failed (a lock held too long, a missing table, a full disk, …).
    #[error("the demo database failed")]
    Sqlite(#[from] rusqlite::Error),
    /// A load failed and its error was shared with other callers of the flight.
    #[error("a database load failed: {0}")]
    Shared(String),
    /// An injected fault (`--db-fail-rate`, `--db-outage`): the database did not answer.
    #[error("the database is unavailable (injected fault)")]
    Unavailable,
    /// The blocking task that ran the query did not finish.
    #[error("a database query did not finish")]
    Task(#[from] tokio::task::JoinError),
}

/// One connection to the run's database file (clones share it).
#[derive(Debug, Clone)]
pub(crate) struct Database {
    conn: SharedConnection,
    path: PathBuf,
    layout: Layout,
    latency: Duration,
    faults: Faults,
}

/// Faults injected into every database call: a failure rate, and a full outage window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Faults {
    /// Each call fails with this probability.
    pub(crate) fail_rate: f64,
    /// Every call between these two instants fails.
    pub(crate) outage: Option<(std::time::Instant, std::time::Instant)>,
}

impl Faults {
    /// `Err` when this call is to fail.
    fn check(&self) -> Result<(), DbError> {
        let now = std::time::Instant::now();
        let down = self
            .outage
            .is_some_and(|(start, end)| start <= now && now < end);
        if down || (self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate) {
            return Err(DbError::Unavailable);
        }
        Ok(())
    }
}

impl Database {
    /// Creates the database file at `path`: the tables, every product at its first version,
    /// WAL mode. Once per run, before any instance opens it.
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when the file cannot be created or written.
    pub(crate) fn create(path: &Path, layout: Layout) -> Result<(), DbError> {
        let mut conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "SQLite would not use WAL mode for the demo database");
        }
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE products (
                 id INTEGER PRIMARY KEY,
                 catalog INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX products_by_catalog ON products (catalog, id);
             CREATE TABLE writes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 product INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 at INTEGER
             );",
        )?;
        {
            let mut insert =
                tx.prepare("INSERT INTO products (id, catalog, version) VALUES (?1, ?2, ?3)")?;
            for id in 0..layout.products {
                insert.execute(params![id, layout.catalog_of(id), FIRST_VERSION as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Opens the database file at `path` (made by [`create`](Self::create)); every query
    /// waits `latency` first.
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when the file cannot be opened.
    pub(crate) fn open(
        path: &Path,
        layout: Layout,
        latency: Duration,
    ) -> Result<Database, DbError> {
        Ok(Database {
            conn: SharedConnection::open(path, BUSY_TIMEOUT)?,
            path: path.to_owned(),
            layout,
            latency,
            faults: Faults::default(),
        })
    }

    /// The same connection, with `faults` injected into every call.
    pub(crate) fn with_faults(mut self, faults: Faults) -> Database {
        self.faults = faults;
        self
    }

    /// Another connection to the same file (for a second instance in this process).
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when the file cannot be opened.
    pub(crate) fn reopen(&self) -> Result<Database, DbError> {
        Ok(Database::open(&self.path, self.layout, self.latency)?.with_faults(self.faults))
    }

    /// Reads one product.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the product does not exist or SQLite fails.
    pub(crate) async fn product(&self, id: u32) -> Result<Product, DbError> {
        self.query(move |conn| {
            let version: Option<i64> = conn
                .prepare("SELECT version FROM products WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            let version = version.ok_or(DbError::NoSuchProduct(id))?;
            Ok(Product {
                id,
                version: to_u64(version),
            })
        })
        .await
    }

    /// Reads every product of `catalog` in one query.
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when SQLite fails.
    pub(crate) async fn catalog(&self, catalog: u32) -> Result<CatalogPage, DbError> {
        self.query(move |conn| {
            let mut query =
                conn.prepare("SELECT id, version FROM products WHERE catalog = ?1 ORDER BY id")?;
            let products = query
                .query_map([catalog], |row| {
                    Ok(Product {
                        id: row.get(0)?,
                        version: to_u64(row.get(1)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(CatalogPage { catalog, products })
        })
        .await
    }

    /// Writes a new version of product `id` and returns it: the version and its log row in
    /// one transaction, then the row's write time, taken after the commit.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the product does not exist or SQLite fails.
    pub(crate) async fn update(&self, id: u32) -> Result<u64, DbError> {
        self.query(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: Option<i64> = tx
                .query_row(
                    "UPDATE products SET version = version + 1 WHERE id = ?1 RETURNING version",
                    [id],
                    |row| row.get(0),
                )
                .optional()?;
            let version = version.ok_or(DbError::NoSuchProduct(id))?;
            tx.execute(
                "INSERT INTO writes (product, version) VALUES (?1, ?2)",
                params![id, version],
            )?;
            let seq = tx.last_insert_rowid();
            tx.commit()?;
            // After the commit: every read that still returned the old version began earlier.
            let at = i64::try_from(clock::now()).unwrap_or(i64::MAX);
            // Until it is stamped, the row holds every mirror's horizon back: insist.
            let mut tries = 1;
            while let Err(error) =
                conn.execute("UPDATE writes SET at = ?1 WHERE seq = ?2", params![at, seq])
            {
                if tries == REFRESH_TRIES {
                    return Err(error.into());
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(to_u64(version))
        })
        .await
    }

    /// A query of the workload: it waits the configured latency (a remote database's round
    /// trip), fails when a fault is injected, then runs `query` on the blocking pool.
    async fn query<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        pause(self.latency).await;
        self.faults.check()?;
        self.conn.run(query).await
    }

    /// Copies the log rows after `*seen` into `mirror` (up to the first one not yet stamped),
    /// and when it got them all, declares the mirror complete up to the time taken before
    /// the query. Returns how many rows were new.
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when SQLite fails.
    pub(crate) async fn refresh(
        &self,
        mirror: &Arc<WriteLog>,
        seen: &mut i64,
    ) -> Result<usize, DbError> {
        let mirror = Arc::clone(mirror);
        let after = *seen;
        let (last, new) = self
            .conn
            .run(move |conn| {
                // Any write stamped before `horizon` committed before the query below began.
                let horizon = clock::now();
                let mut query = conn.prepare(
                    "SELECT seq, product, version, at FROM writes WHERE seq > ?1 ORDER BY seq",
                )?;
                let mut rows = query.query([after])?;
                let (mut last, mut new, mut complete) = (after, 0, true);
                while let Some(row) = rows.next()? {
                    let Some(at) = row.get::<_, Option<i64>>(3)? else {
                        complete = false;
                        break;
                    };
                    let product: u32 = row.get(1)?;
                    mirror.record(product, to_u64(row.get(2)?), to_u64(at));
                    last = row.get(0)?;
                    new += 1;
                }
                if complete {
                    mirror.set_known_until(horizon);
                }
                Ok::<_, DbError>((last, new))
            })
            .await?;
        *seen = last;
        Ok(new)
    }

    /// [`refresh`](Self::refresh), tried again after a short pause when it fails (a lock
    /// held too long), a few times: for the refreshes a run cannot do without.
    ///
    /// # Errors
    ///
    /// The last error, when every try failed.
    pub(crate) async fn refresh_patiently(
        &self,
        mirror: &Arc<WriteLog>,
        seen: &mut i64,
    ) -> Result<usize, DbError> {
        let mut tries = 1;
        loop {
            match self.refresh(mirror, seen).await {
                Ok(new) => return Ok(new),
                Err(error) if tries < REFRESH_TRIES => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "could not read the write log; trying again"
                    );
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A mirror of the write log of `products` products, complete up to now, then kept up to
    /// date in the background (see [`keep_mirrored`](Self::keep_mirrored)) until it is
    /// [`complete`](KeptMirror::complete)d or dropped.
    ///
    /// # Errors
    ///
    /// As [`refresh_patiently`](Self::refresh_patiently).
    pub(crate) async fn kept_mirror(
        &self,
        products: u32,
        bound: Duration,
    ) -> Result<KeptMirror, DbError> {
        let log = Arc::new(WriteLog::mirror(products));
        let mut seen = 0;
        self.refresh_patiently(&log, &mut seen).await?;
        let refresher = tokio::spawn(self.clone().keep_mirrored(Arc::clone(&log), seen, bound));
        Ok(KeptMirror {
            log,
            db: self.clone(),
            refresher,
        })
    }

    /// Refreshes `mirror` from row `seen` on, every quarter of `bound` (at most every 50 ms),
    /// until aborted. A failed refresh is logged and tried again on the next tick: reads wait
    /// to be judged meanwhile.
    async fn keep_mirrored(self, mirror: Arc<WriteLog>, mut seen: i64, bound: Duration) {
        let every = (bound / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if let Err(error) = self.refresh(&mirror, &mut seen).await {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "could not refresh the write log mirror; reads wait to be judged"
                );
            }
        }
    }
}

/// A mirror of the write log that a background task keeps up to date, for judging reads
/// while a run goes on; made by [`Database::kept_mirror`]. Dropping it stops that task.
pub(crate) struct KeptMirror {
    /// The mirror: complete up to a recent moment (reads after it wait to be judged).
    pub(crate) log: Arc<WriteLog>,
    db: Database,
    refresher: tokio::task::JoinHandle<()>,
}

impl KeptMirror {
    /// Stops the background refresh and reads the whole write log once more: the mirror is
    /// then complete up to now, so it judges every read started before this call.
    ///
    /// # Errors
    ///
    /// As [`Database::refresh_patiently`].
    pub(crate) async fn complete(&self) -> Result<(), DbError> {
        self.refresher.abort();
        let mut seen = 0;
        self.db.refresh_patiently(&self.log, &mut seen).await?;
        Ok(())
    }
}

impl Drop for KeptMirror {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

fn to_u64(value: i64) -> Micros {
    u64::try_from(value).unwrap_or(0)
}

async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::write_log::Verdict;

    const LAYOUT: Layout = Layout {
        products: 10,
        catalogs: 3,
    };

    fn database(dir: &tempfile::TempDir) -> Database {
        let path = dir.path().join(FILE_NAME);
        Database::create(&path, LAYOUT).unwrap();
        Database::open(&path, LAYOUT, Duration::ZERO).unwrap()
    }

    #[test]
    fn injected_faults_fail_calls_by_rate_and_during_the_outage() {
        assert!(Faults::default().check().is_ok());
        let always = Faults {
            fail_rate: 1.0,
            outage: None,
        };
        assert!(matches!(always.check(), Err(DbError::Unavailable)));
        let now = std::time::Instant::now();
        let hour = Duration::from_secs(3600);
        let down = Faults {
            fail_rate: 0.0,
            outage: Some((now, now + hour)),
        };
        assert!(matches!(down.check(), Err(DbError::Unavailable)));
        let later = Faults {
            fail_rate: 0.0,
            outage: Some((now + hour, now + 2 * hour)),
        };
        assert!(later.check().is_ok(), "before the outage");
    }

    #[tokio::test]
    async fn rows_are_versioned_and_catalogs_list_their_products() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        assert_eq!(db.product(4).await.unwrap(), Product { id: 4, version: 1 });
        assert_eq!(db.update(4).await.unwrap(), 2);
        // Another connection to the same file sees the write.
        let other = db.reopen().unwrap();
        assert_eq!(other.product(4).await.unwrap().version, 2);
        assert_eq!(
            other.catalog(1).await.unwrap().products,
            [
                Product { id: 1, version: 1 },
                Product { id: 4, version: 2 },
                Product { id: 7, version: 1 },
            ]
        );
        let mode: String = db
            .conn
            .lock()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(matches!(
            db.product(10).await,
            Err(DbError::NoSuchProduct(10))
        ));
        assert!(matches!(
            db.update(10).await,
            Err(DbError::NoSuchProduct(10))
        ));
    }

    #[tokio::test]
    async fn the_write_log_feeds_a_mirror_that_judges_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let before = clock::now();
        assert_eq!(db.update(4).await.unwrap(), 2);
        assert_eq!(db.update(4).await.unwrap(), 3);
        let after = clock::now();
        let mirror = Arc::new(WriteLog::mirror(LAYOUT.products));
        let mut seen = 0;
        assert_eq!(
            db.reopen()
                .unwrap()
                .refresh(&mirror, &mut seen)
                .await
                .unwrap(),
            2
        );
        assert_eq!(db.refresh(&mirror, &mut seen).await.unwrap(), 0);
        assert_eq!(mirror.latest(4), Some(3));
        assert!(mirror.known_until() >= after);
        // Version 2 was written between `before` and `after`: a read of version 1 long after
        // is stale, a read that started before the write is not.
        assert_eq!(mirror.check(4, 1, before, 0), Verdict::Fresh);
        assert!(matches!(
            mirror.check(4, 1, after + 1_000, 0),
            Verdict::Stale { .. }
        ));
        assert_eq!(mirror.check(4, 3, after, 0), Verdict::Fresh);
    }

    /// A write whose time is not stamped yet holds the mirror's horizon back: reads after it
    /// stay undecided instead of being judged against a log that may miss a write.
    #[tokio::test]
    async fn an_unstamped_write_holds_the_horizon_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        db.update(1).await.unwrap();
        let mirror = Arc::new(WriteLog::mirror(LAYOUT.products));
        let mut seen = 0;
        db.refresh(&mirror, &mut seen).await.unwrap();
        let horizon = mirror.known_until();
        db.conn
            .lock()
            .execute_batch(
                "UPDATE products SET version = version + 1 WHERE id = 2;
                 INSERT INTO writes (product, version) VALUES (2, 2);",
            )
            .unwrap();
        db.update(3).await.unwrap();
        assert_eq!(db.refresh(&mirror, &mut seen).await.unwrap(), 0);
        assert_eq!(mirror.known_until(), horizon);
        assert_eq!(mirror.check(5, 1, clock::now(), 0), Verdict::Undecided);
        let at = i64::try_from(clock::now()).unwrap();
        db.conn
            .lock()
            .execute("UPDATE writes SET at = ?1 WHERE product = 2", [at])
            .unwrap();
        assert_eq!(db.refresh(&mirror, &mut seen).await.unwrap(), 2);
        assert!(mirror.known_until() > horizon);
        assert_eq!(mirror.latest(3), Some(2));
    }

    /// Readers that read the database directly (no cache) and are judged with a zero bound
    /// are never stale, however the writer's commits interleave: the check has no false
    /// positives across connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_the_database_itself_is_never_stale() {
        const READERS: usize = 3;
        const READS: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            products: 2,
            catalogs: 1,
        };
        let path = dir.path().join(FILE_NAME);
        Database::create(&path, layout).unwrap();
        let writer = Database::open(&path, layout, Duration::ZERO).unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let db = writer.reopen().unwrap();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let product = u32::try_from(i % 2).unwrap();
                    let mut reads = Vec::with_capacity(READS);
                    for _ in 0..READS {
                        let started = clock::now();
                        let read = db.product(product).await.unwrap();
                        reads.push((read, started));
                    }
                    reads
                })
            })
            .collect();
        barrier.wait().await;
        for n in 0..READS {
            writer.update(u32::try_from(n % 2).unwrap()).await.unwrap();
        }
        let mirror = Arc::new(WriteLog::mirror(layout.products));
        let mut seen = 0;
        let mut judged = 0;
        let mut all = Vec::new();
        for reader in readers {
            all.extend(reader.await.unwrap());
        }
        writer.refresh(&mirror, &mut seen).await.unwrap();
        for (read, started) in all {
            assert_eq!(
                mirror.check(read.id, read.version, started, 0),
                Verdict::Fresh,
                "{read:?} started at {started}"
            );
            judged += 1;
        }
        assert_eq!(judged, READERS * READS);
        assert_eq!(mirror.latest(0), Some(1 + READS as u64 / 2));
    }
}
