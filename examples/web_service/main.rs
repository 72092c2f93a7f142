//! nearcache wired into a web service: an axum HTTP API over a SQLite products database,
//! with nearcache in front. Run two instances on one Redis and a write on one is read on
//! the other:
//!
//! ```sh
//! cargo run --example web_service -- --port 3001 --redis redis://127.0.0.1:6379
//! cargo run --example web_service -- --port 3002 --redis redis://127.0.0.1:6379
//! curl -X PUT localhost:3001/products/42 -H 'content-type: application/json' \
//!      -d '{"catalog": 3, "name": "kettle", "price_cents": 1999}'
//! curl localhost:3002/products/42
//! ```
//!
//! * [`products`]: the database (one SQLite file every instance opens).
//! * [`app`]: the routes, and how each uses the cache.
//!
//! Without `--redis` the cache has no backplane: right for one instance only.

mod app;
mod products;
#[path = "../shared/sqlite.rs"]
mod sqlite;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nearcache::{BackplaneOptions, Cache, CacheOptions, RedisConfig};

use crate::app::AppState;
use crate::products::Products;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "web_service",
    about = "A product API (axum + SQLite) with nearcache in front. Start two with the same \
             --redis and --db: a PUT on one is read on the other.",
    override_usage = "cargo run --example web_service -- [--port N] [--redis URL] [--db FILE]"
)]
struct Args {
    /// Port to listen on (127.0.0.1 only).
    #[arg(long, value_name = "N", default_value_t = 3000)]
    port: u16,
    /// Redis backplane shared by the instances; without it the cache has no backplane
    /// (one instance only).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The SQLite database file, created if missing (default:
    /// nearcache-web-service/products.sqlite3 in the temp directory, so instances started
    /// alike share it).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "no tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = &*error as &dyn std::error::Error,
                "web_service stopped"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let db = match args.db {
        Some(path) => path,
        None => {
            let dir = std::env::temp_dir().join("nearcache-web-service");
            std::fs::create_dir_all(&dir)?;
            dir.join("products.sqlite3")
        }
    };
    let products = Products::open(&db)?;
    let options = CacheOptions {
        backplane: BackplaneOptions {
            redis: args.redis.as_deref().map(|url| RedisConfig {
                app: "web-service".into(),
                ..RedisConfig::new(url)
            }),
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    };
    let cache = match &args.redis {
        Some(_) => Cache::builder().options(options).connect().await?,
        None => Cache::new(options)?,
    };
    cache.ready().await;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        %addr,
        db = %db.display(),
        redis = args.redis.as_deref().unwrap_or("none (one instance only)"),
        "serving GET/PUT /products/{{id}}, GET /catalogs/{{id}}, POST /catalogs/{{id}}/expire"
    );
    app::serve(listener, AppState { cache, products }).await?;
    Ok(())
}
