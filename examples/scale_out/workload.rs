//! What each instance does: readers that read Zipf-distributed products and catalog pages
//! through the cache, and the writer that updates products in the database and then
//! invalidates them through the cache.
//!
//! Every read is judged by the stale-read check as soon as it returns ([`WriteLog::check`]);
//! the few that the mirrored log cannot judge yet are kept and judged at the end.
//!
//! A database call that fails (a lock held too long, the file gone) is counted and tried
//! again after a short pause: the demo rides through it and reports it, it does not stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nearcache::{Cache, Key, LoadError, cache_key, region};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::time::Instant;

use crate::clock::{self, Micros};
use crate::db::{CatalogPage, Database, DbError, Layout, Product};
use crate::write_log::{Verdict, WriteLog};

region!(
    /// The catalog region: a catalog page is tied to its catalog's sub-key, so a write to
    /// one product expires the pages of its catalog (`expire_region_key::<Catalog>(&c)`).
    pub(crate) Catalog = "catalog"
);

/// The service whose reads are cached (names the keys: `ProductService:get-42`).
#[derive(Debug)]
pub(crate) struct ProductService;

/// How long a cached entry lives at most by default (`--ttl`). Far longer than a run: the
/// cache stays coherent through invalidations, not through short expiries.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(300);

/// Requests between two yields of a reader, so that on a busy runtime the tasks that apply
/// peers' invalidations are never starved by readers whose reads all hit.
const YIELD_EVERY: u32 = 32;

/// How long a reader or the writer waits before trying a failed database call again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Database errors logged per instance (all are counted).
const ERRORS_LOGGED: u64 = 5;

/// The key of product `id`.
pub(crate) fn product_key(id: u32) -> Key {
    cache_key!(ProductService, "get", &id)
}

/// The key of catalog `catalog`'s page.
pub(crate) fn catalog_key(catalog: u32) -> Key {
    cache_key!(ProductService, "catalog", &catalog)
}

/// Picks products with a Zipf distribution: product 0 is the most popular.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Popularity {
    zipf: Zipf<f64>,
    products: u32,
}

impl Popularity {
    /// Zipf over `products` products with exponent `exponent` (1.0 is the classic one).
    ///
    /// # Errors
    ///
    /// A message when `products` is 0 or `exponent` is negative or not a number.
    pub(crate) fn new(products: u32, exponent: f64) -> Result<Popularity, String> {
        let zipf = Zipf::new(f64::from(products), exponent).map_err(|e| {
            format!("cannot draw from {products} products with exponent {exponent}: {e}")
        })?;
        Ok(Popularity { zipf, products })
    }

    /// A product id in `0..products`.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> u32 {
        // Zipf yields ranks 1..=n as floats.
        let rank = self.zipf.sample(rng) as u32;
        rank.saturating_sub(1).min(self.products.saturating_sub(1))
    }
}

/// Counters of one instance, shared with the progress line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Reads served (cache hits and loads alike).
    pub(crate) requests: AtomicU64,
    /// Database queries made by this instance's reads (its cache's loads).
    pub(crate) db_queries: AtomicU64,
    /// Writes made by this instance (the writer).
    pub(crate) writes: AtomicU64,
    /// Stale reads seen.
    pub(crate) stale_reads: AtomicU64,
    /// The largest time, in µs, between a missed write and a stale read that missed it.
    pub(crate) worst_stale: AtomicU64,
    /// Database calls (loads and writes) that failed and were tried again.
    pub(crate) db_errors: AtomicU64,
    /// Time the cache was disconnected from the backplane, µs ([`crate::instance`]'s watcher).
    pub(crate) disconnected_us: AtomicU64,
    /// Time the cache's reads bypassed it, µs.
    pub(crate) bypass_us: AtomicU64,
    /// The most invalidations seen waiting in the cache's outbox at once.
    pub(crate) outbox_peak: AtomicU64,
}

/// A read the check could not judge yet (its write log is a mirror that was behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingRead {
    /// The product read.
    pub(crate) product: u32,
    /// The version the read returned.
    pub(crate) version: u64,
    /// When the read started.
    pub(crate) started: Micros,
}

/// Everything the readers and the writer of one instance share.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// This instance's cache.
    pub(crate) cache: Cache,
    /// The database.
    pub(crate) db: Database,
    /// The mirror of the database's write log that the check reads.
    pub(crate) log: Arc<WriteLog>,
    /// Products and catalogs.
    pub(crate) layout: Layout,
    /// Which products are read and written.
    pub(crate) popularity: Popularity,
    /// The propagation bound of the stale-read check, in µs.
    pub(crate) bound: Micros,
    /// One read in this many is a catalog page (0: none).
    pub(crate) page_every: u32,
    /// This instance's counters.
    pub(crate) counters: Arc<Counters>,
    /// How long cached entries live (`--ttl`).
    pub(crate) ttl: Duration,
}

impl Workload {
    /// Reads until `deadline`; returns the reads the check could not judge yet. A read whose
    /// load failed is counted and tried again.
    pub(crate) async fn read(self, deadline: Instant, seed: u64) -> Vec<PendingRead> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut pending = Vec::new();
        let mut served = 0;
        while Instant::now() < deadline {
            let product = self.popularity.sample(&mut rng);
            let page = self.page_every > 0 && rng.random_ratio(1, self.page_every);
            if !self.read_one(product, page, deadline, &mut pending).await {
                break;
            }
            served += 1;
            if served == YIELD_EVERY {
                self.counters
                    .requests
                    .fetch_add(u64::from(served), Ordering::Relaxed);
                served = 0;
                tokio::task::yield_now().await;
            }
        }
        self.counters
            .requests
            .fetch_add(u64::from(served), Ordering::Relaxed);
        pending
    }

    /// One request (a product, or its catalog's page), tried until it succeeds or `deadline`
    /// passes (then `false`).
    async fn read_one(
        &self,
        product: u32,
        page: bool,
        deadline: Instant,
        pending: &mut Vec<PendingRead>,
    ) -> bool {
        loop {
            let started = clock::now();
            let result = if page {
                self.catalog_page(self.layout.catalog_of(product))
                    .await
                    .map(|page| {
                        for read in &page.products {
                            self.judge(read, started, pending);
                        }
                    })
            } else {
                self.product(product)
                    .await
                    .map(|read| self.judge(&read, started, pending))
            };
            match result {
                Ok(()) => return true,
                Err(error) => {
                    self.count_error(&error);
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return false;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    fn count_error(&self, error: &DbError) {
        let seen = self.counters.db_errors.fetch_add(1, Ordering::Relaxed);
        if seen < ERRORS_LOGGED {
            tracing::warn!(
                error = error as &dyn std::error::Error,
                "a database call failed; trying again"
            );
        }
    }

    async fn product(&self, id: u32) -> Result<Arc<Product>, DbError> {
        let loaded = self
            .cache
            .get_or_create(product_key(id), async |entry| {
                entry.time_to_live(self.ttl);
                self.counters.db_queries.fetch_add(1, Ordering::Relaxed);
                self.db.product(id).await
            })
            .await;
        loaded.map_err(load_error)
    }

    async fn catalog_page(&self, catalog: u32) -> Result<Arc<CatalogPage>, DbError> {
        let loaded = self
            .cache
            .get_or_create(catalog_key(catalog), async |entry| {
                entry.time_to_live(self.ttl).region_key::<Catalog>(&catalog);
                self.counters.db_queries.fetch_add(1, Ordering::Relaxed);
                self.db.catalog(catalog).await
            })
            .await;
        loaded.map_err(load_error)
    }

    fn judge(&self, read: &Product, started: Micros, pending: &mut Vec<PendingRead>) {
        match self.log.check(read.id, read.version, started, self.bound) {
            Verdict::Fresh => {}
            Verdict::Stale { behind } => self.count_stale(read, behind),
            Verdict::Undecided => pending.push(PendingRead {
                product: read.id,
                version: read.version,
                started,
            }),
        }
    }

    /// Judges reads left undecided, against the log as it is now. Returns those still
    /// undecided (none, once the log is complete past their start plus the bound).
    pub(crate) fn judge_pending(&self, pending: Vec<PendingRead>) -> Vec<PendingRead> {
        let mut still = Vec::new();
        for read in pending {
            let product = Product {
                id: read.product,
                version: read.version,
            };
            self.judge(&product, read.started, &mut still);
        }
        still
    }

    fn count_stale(&self, read: &Product, behind: Micros) {
        let seen = self.counters.stale_reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .worst_stale
            .fetch_max(behind, Ordering::Relaxed);
        if seen < 5 {
            tracing::error!(
                product = read.id,
                version = read.version,
                behind_ms = behind as f64 / 1_000.0,
                "stale read: a newer version had been written before the read started"
            );
        }
    }

    /// Writes `rate` products a second until `deadline`: database first, then the cache
    /// (the product's key, then its catalog's pages), so peers evict after the new version
    /// is readable. A write that failed is counted and the next tick writes again.
    pub(crate) async fn write(self, rate: f64, deadline: Instant, seed: u64) {
        if rate.is_nan() || rate <= 0.0 {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if tokio::time::timeout_at(deadline, ticks.tick())
                .await
                .is_err()
            {
                return;
            }
            let product = self.popularity.sample(&mut rng);
            if let Err(error) = self.db.update(product).await {
                self.count_error(&error);
                continue;
            }
            self.cache.remove(product_key(product)).await;
            self.cache
                .expire_region_key::<Catalog, _>(&self.layout.catalog_of(product))
                .await;
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn load_error(error: LoadError<DbError>) -> DbError {
    match error {
        LoadError::Factory(shared) => match Arc::try_unwrap(shared) {
            Ok(error) => error,
            Err(shared) => DbError::Shared(shared.to_string()),
        },
        other => DbError::Shared(other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn popularity_stays_in_range_and_favours_the_first_products() {
        let popularity = Popularity::new(100, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 100];
        for _ in 0..20_000 {
            counts[popularity.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts[0] > counts[10] && counts[10] > counts[99],
            "{counts:?}"
        );
        let one = Popularity::new(1, 1.0).unwrap();
        assert!((0..100).all(|_| one.sample(&mut rng) == 0));
        assert!(Popularity::new(0, 1.0).is_err());
        assert!(Popularity::new(10, -1.0).is_err());
    }

    #[test]
    fn keys_are_readable() {
        assert_eq!(product_key(42).as_str(), "ProductService:get-42");
        assert_eq!(catalog_key(3).as_str(), "ProductService:catalog-3");
    }

    /// A new database of `products` in `catalogs`, in a directory of its own (removed when
    /// the returned one is dropped).
    fn database(products: u32, catalogs: u32) -> (tempfile::TempDir, Database, Layout) {
        let layout = Layout { products, catalogs };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::db::FILE_NAME);
        Database::create(&path, layout).unwrap();
        let db = Database::open(&path, layout, Duration::ZERO).unwrap();
        (dir, db, layout)
    }

    /// A workload on `db` with a cache of its own (no backplane).
    fn workload(db: &Database, layout: Layout) -> Workload {
        Workload {
            cache: Cache::new(nearcache::CacheOptions::default()).unwrap(),
            db: db.reopen().unwrap(),
            log: Arc::new(WriteLog::mirror(layout.products)),
            layout,
            popularity: Popularity::new(layout.products, 1.0).unwrap(),
            bound: 0,
            page_every: 2,
            counters: Arc::default(),
            ttl: ENTRY_TTL,
        }
    }

    /// One cache, its own writer: every write invalidates the cache right after the database,
    /// so no read is stale, and the cache serves most reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_and_readers_on_one_cache_never_read_stale() {
        let (_dir, db, layout) = database(20, 4);
        let mut work = workload(&db, layout);
        // The remove follows the commit at once, but not in the same instant.
        work.bound = 1_000_000;
        let deadline = Instant::now() + Duration::from_millis(300);
        let readers: Vec<_> = (0..3)
            .map(|i| tokio::spawn(work.clone().read(deadline, i)))
            .collect();
        work.clone().write(500.0, deadline, 99).await;
        let mut pending = Vec::new();
        for reader in readers {
            pending.extend(reader.await.unwrap());
        }
        // The mirror was never refreshed: every read waits, and a complete mirror judges all.
        let mut seen = 0;
        db.refresh(&work.log, &mut seen).await.unwrap();
        assert!(!pending.is_empty());
        assert!(work.judge_pending(pending).is_empty());
        let counters = &work.counters;
        let requests = counters.requests.load(Ordering::Relaxed);
        let queries = counters.db_queries.load(Ordering::Relaxed);
        assert!(counters.writes.load(Ordering::Relaxed) > 10);
        assert_eq!(counters.stale_reads.load(Ordering::Relaxed), 0);
        assert_eq!(counters.db_errors.load(Ordering::Relaxed), 0);
        assert!(
            requests > 10 * queries,
            "{requests} requests, {queries} queries"
        );
        assert_eq!(work.cache.stats().store.loads, queries);
    }

    /// Two caches that do not tell each other: the second keeps serving what the writer of
    /// the first changed, and the check catches it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_that_misses_invalidations_is_caught_reading_stale() {
        let (_dir, db, layout) = database(1, 1);
        let writer = workload(&db, layout);
        let mut reader = workload(&db, layout);
        reader.log = Arc::clone(&writer.log);
        // The reader caches version 1.
        let until = Instant::now() + Duration::from_millis(20);
        reader.clone().read(until, 1).await;
        // The writer updates it (invalidating only its own cache), then the reader reads on.
        writer
            .clone()
            .write(1_000.0, Instant::now() + Duration::from_millis(5), 2)
            .await;
        assert!(writer.counters.writes.load(Ordering::Relaxed) >= 1);
        let mut seen = 0;
        db.refresh(&writer.log, &mut seen).await.unwrap();
        reader
            .clone()
            .read(Instant::now() + Duration::from_millis(20), 3)
            .await;
        assert!(reader.counters.stale_reads.load(Ordering::Relaxed) > 0);
        assert!(reader.counters.worst_stale.load(Ordering::Relaxed) > 0);
    }

    /// A database that fails for a while (its table renamed away) costs errors, counted, and
    /// the readers go on reading once it is back: no read is lost, none is stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_database_calls_are_counted_and_retried() {
        let (dir, db, layout) = database(50, 5);
        let admin = rusqlite::Connection::open(dir.path().join(crate::db::FILE_NAME)).unwrap();
        admin
            .execute_batch("ALTER TABLE products RENAME TO hidden")
            .unwrap();
        let work = workload(&db, layout);
        let reader = tokio::spawn(
            work.clone()
                .read(Instant::now() + Duration::from_secs(30), 5),
        );
        // Wait (bounded by the reader's deadline) until the failures are seen, then heal.
        while work.counters.db_errors.load(Ordering::Relaxed) < 3 {
            assert!(!reader.is_finished(), "the reader gave up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(work.counters.requests.load(Ordering::Relaxed), 0);
        admin
            .execute_batch("ALTER TABLE hidden RENAME TO products")
            .unwrap();
        while work.counters.requests.load(Ordering::Relaxed) < 100 {
            assert!(!reader.is_finished(), "the reader gave up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reader.abort();
        assert!(work.counters.db_errors.load(Ordering::Relaxed) >= 3);
        assert_eq!(work.counters.stale_reads.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pending_reads_are_judged_once_the_mirror_catches_up() {
        let (_dir, db, layout) = database(1, 1);
        let work = workload(&db, layout);
        let mirror = Arc::clone(&work.log);
        let mut pending = Vec::new();
        work.judge(&Product { id: 0, version: 1 }, 5_000, &mut pending);
        work.judge(&Product { id: 0, version: 1 }, 9_000, &mut pending);
        assert_eq!(pending.len(), 2);
        assert_eq!(
            work.judge_pending(pending.clone()),
            pending,
            "nothing known yet"
        );
        mirror.record(0, 2, 6_000);
        mirror.set_known_until(10_000);
        assert!(work.judge_pending(pending).is_empty());
        assert_eq!(work.counters.stale_reads.load(Ordering::Relaxed), 1);
        assert_eq!(work.counters.worst_stale.load(Ordering::Relaxed), 3_000);
    }
}
