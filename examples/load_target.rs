//! The server `benches/load.sh` loads: `GET /` answers `ok`, behind the API-key layer
//! (`MODE=api_key`, the default) or bare (`MODE=bare`), on `127.0.0.1:$PORT`
//! (default 3600). Prints `KEY=…` (a valid key; the bare twin ignores it), then `READY`.

use axum::Router;
use axum::routing::get;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::NewKey;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};
use tower_api_keys::{KeyManager, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let app = match std::env::var("MODE").as_deref() {
        Ok("bare") => routes,
        _ => routes.layer(
            ApiKeyLayer::new(format, CachedVerifier::new(store)).environment(Environment::LIVE),
        ),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3600".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("KEY={}", key.expose_secret());
    println!("READY");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
