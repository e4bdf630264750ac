//! The server the loopback benchmarks load (`benches/load.sh`, `benches/server_cpu.sh`):
//! `GET /` answers `ok` on `127.0.0.1:$PORT` (default 3600), with `WORKERS` tokio worker
//! threads (default: one per core). `MODE`:
//!
//! - `bare`: no authentication;
//! - `api_key` (the default): the layer through `Router::layer`;
//! - `around`: the layer around the whole router (`RouterExt::with_api_keys`);
//! - `around_limited`: the same with one in-process rate limit that the load never
//!   spends, and the metrics recorded (a Prometheus recorder installed).
//!
//! Prints `KEY=…` (a valid key; the bare twin ignores it), then `READY`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::manage::NewKey;
use tower_api_keys::serve::RouterExt as _;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};
use tower_api_keys::{KeyManager, MemoryStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Ok(workers) = std::env::var("WORKERS") {
        runtime.worker_threads(workers.parse()?);
    }
    runtime.enable_all().build()?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::var("MODE").unwrap_or_else(|_| "api_key".into());
    if mode == "around_limited" {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    }
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = manager
        .create_for_account("acct_load", Environment::LIVE, NewKey::named("load"))
        .await?
        .key;
    let routes = Router::new().route("/", get(|| async { "ok" }));
    let layer = ApiKeyLayer::new(format, CachedVerifier::new(store)).environment(Environment::LIVE);
    let port = std::env::var("PORT").unwrap_or_else(|_| "3600".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("KEY={}", key.expose_secret());
    println!("READY");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match mode.as_str() {
        "bare" => {
            axum::serve(listener, routes)
                .with_graceful_shutdown(stop)
                .await?
        }
        "around" => {
            axum::serve(listener, routes.with_api_keys(layer))
                .with_graceful_shutdown(stop)
                .await?;
        }
        "around_limited" => {
            let limit = RateLimit::new("load", 1_000_000_000, Duration::from_secs(1))?;
            axum::serve(listener, routes.with_api_keys(layer.rate_limit(limit)))
                .with_graceful_shutdown(stop)
                .await?;
        }
        _ => {
            axum::serve(listener, routes.layer(layer))
                .with_graceful_shutdown(stop)
                .await?;
        }
    }
    Ok(())
}
