//! Row 4 of the benchmark table: a stampede. 1,000 async callers ask for one cold key at
//! once; the factory takes 5 ms. nearcache must run it once per round (single flight), and
//! the waiters' latency (each caller's own call → its value) shows what joining a flight
//! costs. moka's `future::Cache::get_with`, which also coalesces loads, is the baseline.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Goal, Payload, Product, Report, Row, Unit, VALUE, pick};
use hdrhistogram::Histogram;
use nearcache::{Cache, CacheOptions, EntryOptions, Key, cache_key};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

const CALLERS: usize = 1_000;
const FACTORY_TIME: Duration = Duration::from_millis(5);

/// What the rounds of one cache measured.
struct Outcome {
    /// Waiter latencies, every caller of every round.
    latency: Histogram<u64>,
    /// The most loads any round ran.
    max_loads: u64,
}

fn main() {
    let rounds = pick(50, 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ours = runtime.block_on(nearcache_rounds(rounds));
    let theirs = runtime.block_on(moka_rounds(rounds));

    let mut report = Report::new("stampede");
    report.push(Row::vs(
        "4",
        format!("stampede: loads per round, {CALLERS} callers on a cold key (worst of {rounds})"),
        Unit::Count,
        ours.max_loads as f64,
        "moka future get_with",
        theirs.max_loads as f64,
        Goal::Exactly(1.0),
    ));
    for (q, name) in [(0.50, "p50"), (0.99, "p99")] {
        report.push(Row::vs(
            "4",
            format!("stampede: waiter latency {name} (factory takes 5 ms)"),
            Unit::Nanos,
            ours.latency.value_at_quantile(q) as f64,
            "moka future get_with",
            theirs.latency.value_at_quantile(q) as f64,
            Goal::Info,
        ));
    }
}

/// Starts `CALLERS` tasks that wait at one barrier, then each runs `call` and times it.
async fn stampede<F, Fut>(call: F) -> Vec<(Duration, Arc<Payload>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Arc<Payload>> + Send,
{
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = JoinSet::new();
    for _ in 0..CALLERS {
        let barrier = Arc::clone(&barrier);
        let call = call.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let value = call().await;
            (start.elapsed(), value)
        });
    }
    tasks.join_all().await
}

/// Records one round's latencies and checks every caller got the same `Arc`.
fn record_round(latency: &mut Histogram<u64>, results: &[(Duration, Arc<Payload>)]) {
    let first = &results[0].1;
    for (elapsed, value) in results {
        assert!(Arc::ptr_eq(first, value), "every caller gets the same Arc");
        common::record(latency, *elapsed);
    }
}

async fn nearcache_rounds(rounds: usize) -> Outcome {
    let cache = Cache::new(CacheOptions::default()).expect("valid options");
    let mut latency = common::histogram();
    let mut max_loads = 0;
    for round in 0..rounds {
        let key: Key = cache_key!(Product, "stampede", &round);
        let before = cache.stats().store.loads;
        let results = stampede({
            let cache = cache.clone();
            move || {
                let cache = cache.clone();
                let key = key.clone();
                async move {
                    cache
                        .get_or_create(&key, async |_: &mut EntryOptions| {
                            tokio::time::sleep(FACTORY_TIME).await;
                            Ok::<Payload, Infallible>(VALUE)
                        })
                        .await
                        .expect("the factory cannot fail")
                }
            }
        })
        .await;
        record_round(&mut latency, &results);
        max_loads = max_loads.max(cache.stats().store.loads - before);
    }
    Outcome { latency, max_loads }
}

async fn moka_rounds(rounds: usize) -> Outcome {
    let cache: moka::future::Cache<Key, Arc<Payload>> = moka::future::Cache::new(10_000);
    let loads = Arc::new(AtomicU64::new(0));
    let mut latency = common::histogram();
    let mut max_loads = 0;
    for round in 0..rounds {
        let key: Key = cache_key!(Product, "stampede", &round);
        let before = loads.load(Ordering::Relaxed);
        let results = stampede({
            let cache = cache.clone();
            let loads = Arc::clone(&loads);
            move || {
                let cache = cache.clone();
                let key = key.clone();
                let loads = Arc::clone(&loads);
                async move {
                    cache
                        .get_with(key, async move {
                            loads.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(FACTORY_TIME).await;
                            Arc::new(VALUE)
                        })
                        .await
                }
            }
        })
        .await;
        record_round(&mut latency, &results);
        max_loads = max_loads.max(loads.load(Ordering::Relaxed) - before);
    }
    Outcome { latency, max_loads }
}
