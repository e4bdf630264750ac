//! The quickstart server: `cargo run --example quickstart`.
//!
//! Binds `127.0.0.1:$PORT` (default 3000), prints `ADMIN_KEY=…` and `READ_KEY=…`, then
//! `READY`. Try:
//!
//! ```text
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/whoami
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/items
//! curl -H "Authorization: Bearer $READ_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items   # 403
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items  # 201
//! ```

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::scope::{Read, Scope, Write};
use tower_api_keys::store::{KeyStore, MemoryStore, NewKey};
use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal, RequireScope};

type Items = Arc<Mutex<Vec<Value>>>;

#[derive(Deserialize)]
struct NewItem {
    name: String,
}

async fn whoami(principal: Principal) -> Json<Principal> {
    Json(principal)
}

async fn list_items(_: RequireScope<Read>, State(items): State<Items>) -> Json<Value> {
    Json(json!({ "data": *items.lock().unwrap() }))
}

async fn create_item(
    RequireScope(principal, ..): RequireScope<Write>,
    State(items): State<Items>,
    Json(item): Json<NewItem>,
) -> (StatusCode, Json<Value>) {
    let item = json!({ "name": item.name, "created_by": principal.key_id() });
    items.lock().unwrap().push(item.clone());
    (StatusCode::CREATED, Json(item))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    for (name, scope) in [("ADMIN_KEY", Scope::Admin), ("READ_KEY", Scope::Read)] {
        let request = NewKey::new("acct_quickstart", name, Environment::LIVE).scopes([scope]);
        let created = store.create(&format, request).await?;
        println!("{name}={}", created.key.expose_secret());
    }

    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/items", get(list_items).post(create_item))
        .with_state(Items::default())
        .layer(ApiKeyLayer::new(format, CachedVerifier::new(store)).environment(Environment::LIVE));

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("READY");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
