//! `--metrics ADDR`: the caches' metrics as Prometheus text on `http://ADDR/metrics`.
//!
//! The Prometheus recorder is installed as the process's recorder before any cache is
//! built (caches register their series when built), with buckets for every `_seconds`
//! histogram so they aggregate across instances. A one-process run serves all its
//! instances on one port (series told apart by `instance`); in a `--processes` run each
//! instance process serves its own: port `P + i` for instance `i`, or a port of its own
//! choosing when `P` is 0. Each prints where it listens on stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::DemoError;

/// Bucket bounds of the `_seconds` histograms: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// How often histograms are maintained (the exporter needs it when it runs no listener).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Where this process serves, once it does (for the tests, which ask for port 0).
static SERVING: (Mutex<Option<SocketAddr>>, Condvar) = (Mutex::new(None), Condvar::new());

/// Installs the Prometheus recorder and serves it on `addr`; returns the bound address.
/// `who` names the process in the printed line.
///
/// # Errors
///
/// [`DemoError::Usage`] when another recorder is installed, the address cannot be bound
/// or the buckets are refused.
pub(crate) async fn serve(addr: SocketAddr, who: &str) -> Result<SocketAddr, DemoError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| DemoError::Usage(format!("--metrics: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        DemoError::Usage("--metrics: a metrics recorder is already installed".into())
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| DemoError::Usage(format!("--metrics: cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| DemoError::Usage(format!("--metrics: {e}")))?;
    let render = handle.clone();
    let app = Router::new().route("/metrics", get(async move || render.render()));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        loop {
            upkeep.tick().await;
            handle.run_upkeep();
        }
    });
    let _ = writeln!(std::io::stderr(), "{who} metrics: http://{bound}/metrics");
    let (lock, signal) = &SERVING;
    if let Ok(mut serving) = lock.lock() {
        *serving = Some(bound);
        signal.notify_all();
    }
    Ok(bound)
}

/// Where this process serves its metrics, waiting up to `timeout` for it to start.
#[cfg(test)]
pub(crate) fn serving(timeout: Duration) -> Option<SocketAddr> {
    let (lock, signal) = &SERVING;
    let guard = lock.lock().ok()?;
    let (guard, _) = signal
        .wait_timeout_while(guard, timeout, |serving| serving.is_none())
        .ok()?;
    *guard
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cli::Config;

    #[test]
    fn each_instance_process_gets_its_own_port() {
        let args = |metrics: &str, index| {
            let config = Config {
                metrics: Some(metrics.parse().unwrap()),
                ..Config::default()
            };
            config.child_args(
                index,
                "run",
                "redis://127.0.0.1:1",
                std::path::Path::new("db"),
            )
        };
        assert!(args("127.0.0.1:9100", 2).contains(&"--metrics=127.0.0.1:9102".to_owned()));
        assert!(args("127.0.0.1:0", 2).contains(&"--metrics=127.0.0.1:0".to_owned()));
    }

    /// The demo, run briefly with `--metrics 127.0.0.1:0`, scraped while it runs: the
    /// caches' hits, propagation-lag buckets and loss clears are there, labelled.
    #[test]
    fn the_demo_serves_prometheus_text_while_it_runs() {
        let config = Config::parse_args(
            [
                "--instances=2",
                "--duration=6s",
                "--db-latency=100us",
                "--readers=2",
                "--metrics=127.0.0.1:0",
            ]
            .map(String::from),
        )
        .unwrap();
        let crate::cli::Command::Run(config) = config else {
            panic!("a run")
        };
        let demo = std::thread::spawn(move || crate::run(&config).map(|_| ()));
        let addr = serving(Duration::from_secs(30)).expect("the endpoint to start");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let wanted = [
            "nearcache_hits_total{cache=\"products\"",
            "nearcache_propagation_lag_seconds_bucket{cache=\"products\"",
            "nearcache_loss_clears_total{cache=\"products\"",
        ];
        let body = runtime.block_on(async {
            // Scraped while the demo runs (its endpoint ends with it).
            let client = reqwest::Client::new();
            let url = format!("http://{addr}/metrics");
            // The caches export every second and the lag histogram needs a first
            // invalidation: scrape until everything is there, as Prometheus would.
            let mut body = String::new();
            while !demo.is_finished() {
                body = client.get(&url).send().await.unwrap().text().await.unwrap();
                let hits = body
                    .lines()
                    .filter(|l| l.starts_with(wanted[0]))
                    .any(|l| !l.ends_with(" 0"));
                if hits && wanted.iter().all(|w| body.contains(w)) {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("not every series showed up while the demo ran:\n{body}");
        });
        assert!(body.contains("instance=\""), "{body}");
        assert!(body.contains("cause=\"reconnect\""), "{body}");
        demo.join().unwrap().unwrap();
    }
}
