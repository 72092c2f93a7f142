//! The service's database: a `products` table in one SQLite file (WAL mode) that every
//! instance of the service opens. Each write increments the product's version, so a reader
//! can tell an old copy from a new one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::sqlite::SharedConnection;

/// How long a query waits for a lock another instance holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A product as the API returns it: its id, what a write sets (inline in its JSON), and its
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Product {
    /// Its id.
    pub(crate) id: u32,
    /// What the last write set.
    #[serde(flatten)]
    pub(crate) details: ProductUpdate,
    /// 1 when created, one more at every write.
    pub(crate) version: u64,
}

/// What a write sets: the body of `PUT /products/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProductUpdate {
    /// The catalog it is listed in.
    pub(crate) catalog: u32,
    /// Its name.
    pub(crate) name: String,
    /// Its price, in cents.
    pub(crate) price_cents: u64,
}

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// SQLite failed.
    #[error("the products database failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task that ran the query did not finish.
    #[error("a database query did not finish")]
    Task(#[from] tokio::task::JoinError),
}

/// A connection to the products database (clones share it).
#[derive(Debug, Clone)]
pub(crate) struct Products {
    conn: SharedConnection,
}

impl Products {
    /// Opens the database at `path`, creating the file and its table if needed.
    ///
    /// # Errors
    ///
    /// [`DbError::Sqlite`] when the file cannot be opened or created.
    pub(crate) fn open(path: &Path) -> Result<Products, DbError> {
        let conn = SharedConnection::open(path, BUSY_TIMEOUT)?;
        let _mode: String = conn
            .lock()
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.lock().execute_batch(
            "CREATE TABLE IF NOT EXISTS products (
                 id INTEGER PRIMARY KEY,
                 catalog INTEGER NOT NULL,
                 name TEXT NOT NULL,
                 price_cents INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );",
        )?;
        Ok(Products { conn })
    }

    /// The product `id`, if it exists.
    ///
    /// # Errors
    ///
    /// [`DbError`] when SQLite fails.
    pub(crate) async fn get(&self, id: u32) -> Result<Option<Product>, DbError> {
        self.conn
            .run(move |conn| {
                conn.query_row(
                    "SELECT id, catalog, name, price_cents, version FROM products WHERE id = ?1",
                    [id],
                    product,
                )
                .optional()
                .map_err(DbError::from)
            })
            .await
    }

    /// Creates or updates product `id` and returns it with its new version, and the catalog
    /// it was in before (if it moved).
    ///
    /// # Errors
    ///
    /// [`DbError`] when SQLite fails.
    pub(crate) async fn put(
        &self,
        id: u32,
        update: ProductUpdate,
    ) -> Result<(Product, Option<u32>), DbError> {
        self.conn
            .run(move |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let before: Option<(u32, i64)> = tx
                    .query_row(
                        "SELECT catalog, version FROM products WHERE id = ?1",
                        [id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let version = before.map_or(1, |(_, version)| version + 1);
                let price = i64::try_from(update.price_cents).unwrap_or(i64::MAX);
                tx.execute(
                    "INSERT INTO products (id, catalog, name, price_cents, version)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET catalog = ?2, name = ?3, price_cents = ?4,
                     version = ?5",
                    params![id, update.catalog, update.name, price, version],
                )?;
                tx.commit()?;
                let moved_from = before
                    .map(|(catalog, _)| catalog)
                    .filter(|&catalog| catalog != update.catalog);
                Ok((
                    Product {
                        id,
                        details: update,
                        version: u64::try_from(version).unwrap_or(0),
                    },
                    moved_from,
                ))
            })
            .await
    }

    /// The products of `catalog`, in id order.
    ///
    /// # Errors
    ///
    /// [`DbError`] when SQLite fails.
    pub(crate) async fn in_catalog(&self, catalog: u32) -> Result<Vec<Product>, DbError> {
        self.conn
            .run(move |conn| {
                let mut query = conn.prepare(
                    "SELECT id, catalog, name, price_cents, version FROM products
                 WHERE catalog = ?1 ORDER BY id",
                )?;
                let products = query
                    .query_map([catalog], product)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(products)
            })
            .await
    }
}

/// A `products` row (`id, catalog, name, price_cents, version`) as a [`Product`].
fn product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        details: ProductUpdate {
            catalog: row.get(1)?,
            name: row.get(2)?,
            price_cents: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        },
        version: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn update(catalog: u32, price_cents: u64) -> ProductUpdate {
        ProductUpdate {
            catalog,
            name: "kettle".into(),
            price_cents,
        }
    }

    #[tokio::test]
    async fn puts_create_then_version_products_seen_by_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("products.sqlite3");
        let a = Products::open(&path).unwrap();
        let b = Products::open(&path).unwrap();
        assert_eq!(b.get(7).await.unwrap(), None);
        let (created, moved) = a.put(7, update(1, 1_999)).await.unwrap();
        assert_eq!((created.version, moved), (1, None));
        let (updated, moved) = a.put(7, update(2, 2_499)).await.unwrap();
        assert_eq!((updated.version, moved), (2, Some(1)));
        assert_eq!(b.get(7).await.unwrap(), Some(updated.clone()));
        assert_eq!(
            b.in_catalog(2).await.unwrap(),
            std::slice::from_ref(&updated)
        );
        assert!(b.in_catalog(1).await.unwrap().is_empty());
    }
}
