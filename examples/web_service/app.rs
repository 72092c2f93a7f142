//! The HTTP API, with nearcache in front of the database:
//!
//! * `GET /products/{id}`: cache-aside read (single flight per key; a missing product is
//!   cached as missing too).
//! * `PUT /products/{id}` (JSON [`ProductUpdate`]): writes the database first, then removes
//!   the product's key and expires its catalog's pages, here and — through the backplane — in
//!   every other instance.
//! * `GET /catalogs/{id}`: the catalog's products, one cached page tied to the catalog's
//!   region sub-key.
//! * `POST /catalogs/{id}/expire`: expires that catalog's pages everywhere (after a bulk
//!   change made behind the service's back, say).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nearcache::{Cache, Key, cache_key, region};

use crate::products::{Product, ProductUpdate, Products};

region!(
    /// A catalog's pages: expiring a catalog's sub-key drops every page of it.
    pub(crate) Catalog = "catalog"
);

/// The service whose reads are cached (names the keys: `ProductApi:get-42`).
#[derive(Debug)]
struct ProductApi;

/// The key of product `id`.
fn product_key(id: u32) -> Key {
    cache_key!(ProductApi, "get", &id)
}

/// The key of catalog `id`'s page.
fn catalog_key(id: u32) -> Key {
    cache_key!(ProductApi, "catalog", &id)
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// This instance's cache.
    pub(crate) cache: Cache,
    /// The database.
    pub(crate) products: Products,
}

/// The service's routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/catalogs/{id}", get(get_catalog))
        .route("/catalogs/{id}/expire", post(expire_catalog))
        .with_state(state)
}

async fn get_product(State(app): State<AppState>, Path(id): Path<u32>) -> Response {
    let loaded = app
        .cache
        .get_or_create_optional(product_key(id), async |_entry| app.products.get(id).await)
        .await;
    match loaded {
        Ok(Some(product)) => Json(Product::clone(&product)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no product {id}\n")).into_response(),
        Err(error) => failed(&error),
    }
}

async fn put_product(
    State(app): State<AppState>,
    Path(id): Path<u32>,
    Json(update): Json<ProductUpdate>,
) -> Response {
    let (product, moved_from) = match app.products.put(id, update).await {
        Ok(written) => written,
        Err(error) => return failed(&error),
    };
    // Database first, then the caches: a peer that evicts reloads the new row.
    app.cache.remove(product_key(id)).await;
    app.cache
        .expire_region_key::<Catalog, _>(&product.details.catalog)
        .await;
    if let Some(old) = moved_from {
        app.cache.expire_region_key::<Catalog, _>(&old).await;
    }
    Json(product).into_response()
}

async fn get_catalog(State(app): State<AppState>, Path(id): Path<u32>) -> Response {
    let loaded = app
        .cache
        .get_or_create(catalog_key(id), async |entry| {
            entry.region_key::<Catalog>(&id);
            app.products.in_catalog(id).await
        })
        .await;
    match loaded {
        Ok(page) => Json(Vec::clone(&page)).into_response(),
        Err(error) => failed(&error),
    }
}

async fn expire_catalog(State(app): State<AppState>, Path(id): Path<u32>) -> StatusCode {
    app.cache.expire_region_key::<Catalog, _>(&id).await;
    StatusCode::NO_CONTENT
}

/// A 500 that says what failed (the database, or the cache).
/// A 500 whose body, like the log line, says what failed and why (the error's `source()`s).
fn failed(error: &(dyn std::error::Error + 'static)) -> Response {
    tracing::error!(error, "request failed");
    let mut text = format!("request failed: {error}");
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    (StatusCode::INTERNAL_SERVER_ERROR, text + "\n").into_response()
}

/// Serves `state` on `listener` until the process ends.
///
/// # Errors
///
/// When the listener fails.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use nearcache::{BackplaneOptions, CacheEvent, CacheOptions, RedisConfig};
    use nearcache_testkit::RedisServer;

    use super::*;

    /// One instance of the service on a free loopback port, with a cache on Redis at `url`.
    async fn instance(url: &str, db: &std::path::Path) -> (SocketAddr, Cache) {
        let cache = Cache::builder()
            .options(CacheOptions {
                backplane: BackplaneOptions {
                    redis: Some(RedisConfig {
                        app: "web-service-test".into(),
                        ..RedisConfig::new(url)
                    }),
                    ..BackplaneOptions::default()
                },
                ..CacheOptions::default()
            })
            .connect()
            .await
            .unwrap();
        cache.ready().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = AppState {
            cache: cache.clone(),
            products: Products::open(db).unwrap(),
        };
        tokio::spawn(serve(listener, app));
        (addr, cache)
    }

    /// Waits for `events` to report a peer's message applied (bounded, so a broken backplane
    /// fails the test instead of hanging it).
    async fn applied(events: &mut tokio::sync::broadcast::Receiver<CacheEvent>) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(CacheEvent::Applied { .. }) = events.recv().await {
                    return;
                }
            }
        })
        .await
        .expect("no invalidation arrived within 10 s");
    }

    /// Two instances on one database and one Redis: a PUT on A, then a GET on B returns the
    /// new version, although B had cached the old one; the same for a catalog page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_on_one_instance_is_read_on_the_other() {
        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("products.sqlite3");
        let (a, cache_a) = instance(&server.url(), &db).await;
        let (b, cache_b) = instance(&server.url(), &db).await;
        let http = reqwest::Client::new();
        let put = |addr: SocketAddr, price_cents: u64| {
            http.put(format!("http://{addr}/products/42"))
                .json(&ProductUpdate {
                    catalog: 3,
                    name: "kettle".into(),
                    price_cents,
                })
                .send()
        };
        let get = |addr: SocketAddr, path: &str| http.get(format!("http://{addr}{path}")).send();

        let missing = get(b, "/products/42").await.unwrap();
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
        let mut events = cache_b.events();
        let created: Product = put(a, 1_999).await.unwrap().json().await.unwrap();
        assert_eq!(created.version, 1);
        applied(&mut events).await;
        let read = get(b, "/products/42").await.unwrap();
        assert_eq!(
            read.status(),
            reqwest::StatusCode::OK,
            "B served its cached 404"
        );
        let read: Product = read.json().await.unwrap();
        assert_eq!(read, created);
        let page: Vec<Product> = get(b, "/catalogs/3").await.unwrap().json().await.unwrap();
        assert_eq!(page, [created]);

        // B has version 1 cached (product and page); A writes version 2.
        let mut events = cache_b.events();
        let updated: Product = put(a, 2_499).await.unwrap().json().await.unwrap();
        assert_eq!(updated.version, 2);
        applied(&mut events).await;
        let read: Product = get(b, "/products/42").await.unwrap().json().await.unwrap();
        assert_eq!(read, updated, "B served its cached old version");
        let page: Vec<Product> = get(b, "/catalogs/3").await.unwrap().json().await.unwrap();
        assert_eq!(page, std::slice::from_ref(&updated));

        // A caches the page; the row changes behind the service's back; an expiry sent to
        // B reaches A, whose next read of the page is fresh.
        let page: Vec<Product> = get(a, "/catalogs/3").await.unwrap().json().await.unwrap();
        assert_eq!(page, [updated]);
        let (behind, _) = Products::open(&db)
            .unwrap()
            .put(
                42,
                ProductUpdate {
                    catalog: 3,
                    name: "kettle".into(),
                    price_cents: 999,
                },
            )
            .await
            .unwrap();
        let mut events = cache_a.events();
        let expired = http
            .post(format!("http://{b}/catalogs/3/expire"))
            .send()
            .await
            .unwrap();
        assert_eq!(expired.status(), reqwest::StatusCode::NO_CONTENT);
        applied(&mut events).await;
        let page: Vec<Product> = get(a, "/catalogs/3").await.unwrap().json().await.unwrap();
        assert_eq!(page, [behind]);
        assert_eq!(
            get(a, "/products/nope").await.unwrap().status(),
            reqwest::StatusCode::BAD_REQUEST
        );
    }
}
