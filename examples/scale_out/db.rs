//! The simulated product database: versioned rows behind a per-query latency.
//!
//! Every product has a version that each write increments; a catalog lists the products
//! whose id modulo the number of catalogs is its number. Two backings:
//!
//! * [`Database::Memory`]: rows in this process ([`WriteLog::live`] is the table itself), for
//!   every instance of a one-process run.
//! * [`Database::Redis`]: rows in a Redis hash, shared by the instances of a `--processes`
//!   run. A write is one Lua script that increments the version and appends
//!   `product:version:seconds:micros` (Redis `TIME`, taken in the same atomic step) to a log
//!   list, which every process mirrors to check its reads.
//!
//! Both sleep for the configured latency before each query, as a real database's round trip.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::clock::{DemoClock, Micros};
use crate::write_log::{FIRST_VERSION, WriteLog};

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

    /// The products of `catalog`, in id order.
    pub(crate) fn products_in(&self, catalog: u32) -> impl Iterator<Item = u32> + use<> {
        let step = usize::try_from(self.catalogs.max(1)).unwrap_or(usize::MAX);
        (catalog..self.products).step_by(step)
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
    /// Its products, with the versions the query read.
    pub(crate) products: Vec<Product>,
}

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// A product id outside the table (a bug in the workload).
    #[error("product {0} is not in the database")]
    NoSuchProduct(u32),
    /// The Redis-backed table failed.
    #[error("the demo database in Redis failed ({0}); is Redis still running?")]
    Redis(#[from] redis::RedisError),
    /// A load failed and its error was shared with other callers of the flight.
    #[error("a database load failed: {0}")]
    Shared(String),
    /// The write log in Redis held an entry this demo did not write.
    #[error("unexpected entry `{0}` in the demo's write log in Redis")]
    BadLogEntry(String),
}

/// The database of one demo run.
#[derive(Debug, Clone)]
pub(crate) enum Database {
    /// Rows in this process.
    Memory(MemoryDb),
    /// Rows in Redis, shared between processes.
    Redis(RedisDb),
}

impl Database {
    /// Reads one product.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the product does not exist or Redis fails.
    pub(crate) async fn product(&self, id: u32) -> Result<Product, DbError> {
        match self {
            Database::Memory(db) => db.product(id).await,
            Database::Redis(db) => db.product(id).await,
        }
    }

    /// Reads every product of `catalog` in one query.
    ///
    /// # Errors
    ///
    /// [`DbError`] when Redis fails.
    pub(crate) async fn catalog(&self, catalog: u32) -> Result<CatalogPage, DbError> {
        match self {
            Database::Memory(db) => db.catalog(catalog).await,
            Database::Redis(db) => db.catalog(catalog).await,
        }
    }

    /// Writes a new version of product `id` and returns it.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the product does not exist or Redis fails.
    pub(crate) async fn update(&self, id: u32) -> Result<u64, DbError> {
        match self {
            Database::Memory(db) => db.update(id).await,
            Database::Redis(db) => db.update(id).await,
        }
    }
}

/// The table in this process; its [`WriteLog`] is the table itself.
#[derive(Debug, Clone)]
pub(crate) struct MemoryDb {
    log: Arc<WriteLog>,
    layout: Layout,
    latency: Duration,
    clock: DemoClock,
}

impl MemoryDb {
    /// Every product at version 1.
    pub(crate) fn new(layout: Layout, latency: Duration, clock: DemoClock) -> MemoryDb {
        MemoryDb {
            log: Arc::new(WriteLog::live(layout.products)),
            layout,
            latency,
            clock,
        }
    }

    /// The table's write log (live: the stale-read check reads it directly).
    pub(crate) fn log(&self) -> &Arc<WriteLog> {
        &self.log
    }

    async fn product(&self, id: u32) -> Result<Product, DbError> {
        pause(self.latency).await;
        let version = self.log.read(id).ok_or(DbError::NoSuchProduct(id))?;
        Ok(Product { id, version })
    }

    async fn catalog(&self, catalog: u32) -> Result<CatalogPage, DbError> {
        pause(self.latency).await;
        let products = self
            .layout
            .products_in(catalog)
            .filter_map(|id| {
                Some(Product {
                    id,
                    version: self.log.read(id)?,
                })
            })
            .collect();
        Ok(CatalogPage { catalog, products })
    }

    async fn update(&self, id: u32) -> Result<u64, DbError> {
        pause(self.latency).await;
        let clock = self.clock;
        self.log
            .commit(id, || clock.now())
            .ok_or(DbError::NoSuchProduct(id))
    }
}

/// Increments a product's version and logs the write with Redis' own time, atomically.
const UPDATE_SCRIPT: &str = r"
local version = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local now = redis.call('TIME')
redis.call('RPUSH', KEYS[2], ARGV[1] .. ':' .. version .. ':' .. now[1] .. ':' .. now[2])
return version
";

/// Returns Redis' time and the log from index `ARGV[1]` on, atomically: every write up to
/// that time is in the returned part of the log.
const MIRROR_SCRIPT: &str = r"
local now = redis.call('TIME')
local entries = redis.call('LRANGE', KEYS[1], ARGV[1], -1)
return {now[1], now[2], entries}
";

/// How long the demo's keys survive in Redis if a run dies before cleaning up.
const KEY_TTL_SECS: u64 = 3_600;

/// The table in a Redis hash, for instances in several processes.
#[derive(Clone)]
pub(crate) struct RedisDb {
    con: MultiplexedConnection,
    versions_key: String,
    log_key: String,
    layout: Layout,
    latency: Duration,
}

impl std::fmt::Debug for RedisDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDb")
            .field("versions_key", &self.versions_key)
            .field("layout", &self.layout)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

impl RedisDb {
    /// Connects to the table of run `run_id` at `url` (keys `nearcache-demo:{run_id}:*`).
    ///
    /// # Errors
    ///
    /// [`DbError::Redis`] when Redis cannot be reached.
    pub(crate) async fn connect(
        url: &str,
        run_id: &str,
        layout: Layout,
        latency: Duration,
    ) -> Result<RedisDb, DbError> {
        let client = redis::Client::open(url)?;
        let con = client.get_multiplexed_async_connection().await?;
        Ok(RedisDb {
            con,
            versions_key: format!("nearcache-demo:{run_id}:versions"),
            log_key: format!("nearcache-demo:{run_id}:log"),
            layout,
            latency,
        })
    }

    /// Puts every product at version 1 and empties the log (once per run, before any
    /// instance starts).
    ///
    /// # Errors
    ///
    /// [`DbError::Redis`] when Redis fails.
    pub(crate) async fn reset(&self) -> Result<(), DbError> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&self.versions_key)
            .ignore()
            .del(&self.log_key)
            .ignore();
        let rows: Vec<(u32, u64)> = (0..self.layout.products)
            .map(|id| (id, FIRST_VERSION))
            .collect();
        for chunk in rows.chunks(1_000) {
            pipe.hset_multiple(&self.versions_key, chunk).ignore();
        }
        pipe.expire(&self.versions_key, KEY_TTL_SECS as i64)
            .ignore();
        pipe.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Deletes the run's keys.
    ///
    /// # Errors
    ///
    /// [`DbError::Redis`] when Redis fails.
    pub(crate) async fn delete(&self) -> Result<(), DbError> {
        let mut con = self.con.clone();
        redis::cmd("DEL")
            .arg(&self.versions_key)
            .arg(&self.log_key)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn product(&self, id: u32) -> Result<Product, DbError> {
        pause(self.latency).await;
        let mut con = self.con.clone();
        let version: Option<u64> = redis::cmd("HGET")
            .arg(&self.versions_key)
            .arg(id)
            .query_async(&mut con)
            .await?;
        let version = version.ok_or(DbError::NoSuchProduct(id))?;
        Ok(Product { id, version })
    }

    async fn catalog(&self, catalog: u32) -> Result<CatalogPage, DbError> {
        pause(self.latency).await;
        let ids: Vec<u32> = self.layout.products_in(catalog).collect();
        if ids.is_empty() {
            return Ok(CatalogPage {
                catalog,
                products: Vec::new(),
            });
        }
        let mut con = self.con.clone();
        let versions: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(&self.versions_key)
            .arg(&ids)
            .query_async(&mut con)
            .await?;
        let products = ids
            .into_iter()
            .zip(versions)
            .filter_map(|(id, version)| {
                Some(Product {
                    id,
                    version: version?,
                })
            })
            .collect();
        Ok(CatalogPage { catalog, products })
    }

    async fn update(&self, id: u32) -> Result<u64, DbError> {
        if id >= self.layout.products {
            return Err(DbError::NoSuchProduct(id));
        }
        pause(self.latency).await;
        let mut con = self.con.clone();
        let version: u64 = redis::cmd("EVAL")
            .arg(UPDATE_SCRIPT)
            .arg(2)
            .arg(&self.versions_key)
            .arg(&self.log_key)
            .arg(id)
            .query_async(&mut con)
            .await?;
        Ok(version)
    }

    /// Copies the log entries after the first `*seen` into `mirror`, then declares the
    /// mirror complete up to Redis' time of that read. Returns how many entries were new.
    ///
    /// # Errors
    ///
    /// [`DbError::Redis`] when Redis fails, [`DbError::BadLogEntry`] for an entry this demo
    /// did not write.
    pub(crate) async fn refresh(&self, mirror: &WriteLog, seen: &mut usize) -> Result<usize, DbError> {
        let mut con = self.con.clone();
        let (seconds, micros, entries): (u64, u64, Vec<String>) = redis::cmd("EVAL")
            .arg(MIRROR_SCRIPT)
            .arg(1)
            .arg(&self.log_key)
            .arg(*seen)
            .query_async(&mut con)
            .await?;
        for entry in &entries {
            let (product, version, at) = parse_log_entry(entry)?;
            mirror.record(product, version, at);
        }
        *seen += entries.len();
        mirror.set_known_until(seconds.saturating_mul(1_000_000).saturating_add(micros));
        Ok(entries.len())
    }
}

/// `product:version:seconds:micros` → (product, version, µs since the epoch).
fn parse_log_entry(entry: &str) -> Result<(u32, u64, Micros), DbError> {
    let bad = || DbError::BadLogEntry(entry.to_owned());
    let mut parts = entry.split(':');
    let mut next = || parts.next().ok_or_else(bad);
    let product = next()?.parse::<u32>().map_err(|_| bad())?;
    let version = next()?.parse::<u64>().map_err(|_| bad())?;
    let seconds = next()?.parse::<u64>().map_err(|_| bad())?;
    let micros = next()?.parse::<u64>().map_err(|_| bad())?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((
        product,
        version,
        seconds.saturating_mul(1_000_000).saturating_add(micros),
    ))
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

    #[test]
    fn catalogs_partition_the_products() {
        let mut all: Vec<u32> = (0..3).flat_map(|c| LAYOUT.products_in(c)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(LAYOUT.products_in(1).collect::<Vec<_>>(), [1, 4, 7]);
        assert!(LAYOUT.products_in(1).all(|p| LAYOUT.catalog_of(p) == 1));
    }

    #[test]
    fn log_entries_parse_and_garbage_is_an_error() {
        assert_eq!(
            parse_log_entry("7:3:1700000000:42").unwrap(),
            (7, 3, 1_700_000_000_000_042)
        );
        for bad in ["", "7:3:1", "7:3:1:2:3", "x:3:1:2", "7:-1:1:2"] {
            assert!(
                matches!(parse_log_entry(bad), Err(DbError::BadLogEntry(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn the_memory_table_versions_rows_and_lists_catalogs() {
        let db = MemoryDb::new(LAYOUT, Duration::ZERO, DemoClock::monotonic());
        let db = Database::Memory(db);
        assert_eq!(db.product(4).await.unwrap(), Product { id: 4, version: 1 });
        assert_eq!(db.update(4).await.unwrap(), 2);
        assert_eq!(db.product(4).await.unwrap().version, 2);
        let page = db.catalog(1).await.unwrap();
        assert_eq!(
            page.products,
            [
                Product { id: 1, version: 1 },
                Product { id: 4, version: 2 },
                Product { id: 7, version: 1 },
            ]
        );
        assert!(matches!(
            db.product(10).await,
            Err(DbError::NoSuchProduct(10))
        ));
        assert!(matches!(
            db.update(10).await,
            Err(DbError::NoSuchProduct(10))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_table_logs_writes_that_a_mirror_can_judge() {
        let server = tokio::task::spawn_blocking(nearcache_suite::RedisServer::start)
            .await
            .unwrap()
            .unwrap();
        let db = RedisDb::connect(&server.url(), "test", LAYOUT, Duration::ZERO)
            .await
            .unwrap();
        db.reset().await.unwrap();
        let clock = DemoClock::Wall;
        let database = Database::Redis(db.clone());
        assert_eq!(database.product(4).await.unwrap().version, 1);
        let before = clock.now();
        assert_eq!(database.update(4).await.unwrap(), 2);
        assert_eq!(database.update(4).await.unwrap(), 3);
        let after = clock.now();
        assert_eq!(database.product(4).await.unwrap().version, 3);
        assert_eq!(
            database.catalog(1).await.unwrap().products,
            [
                Product { id: 1, version: 1 },
                Product { id: 4, version: 3 },
                Product { id: 7, version: 1 },
            ]
        );
        assert!(matches!(
            database.update(99).await,
            Err(DbError::NoSuchProduct(99))
        ));

        let mirror = WriteLog::mirror(LAYOUT.products);
        let mut seen = 0;
        assert_eq!(db.refresh(&mirror, &mut seen).await.unwrap(), 2);
        assert_eq!(db.refresh(&mirror, &mut seen).await.unwrap(), 0);
        assert_eq!(mirror.latest(4), Some(3));
        assert!(
            mirror.known_until() >= after,
            "Redis TIME is this host's clock"
        );
        // Version 2 was written between `before` and `after`: a read of version 1 long after
        // is stale, a read that started before the write is not.
        assert_eq!(mirror.check(4, 1, before, 0), Verdict::Fresh);
        assert!(matches!(
            mirror.check(4, 1, after + 1_000, 0),
            Verdict::Stale { .. }
        ));
        assert_eq!(mirror.check(4, 3, after, 0), Verdict::Fresh);
        db.delete().await.unwrap();
    }
}
