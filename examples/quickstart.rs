//! The quickstart server: `cargo run --example quickstart`.
//!
//! Binds `127.0.0.1:$PORT` (default 3000). Keys live in `apikeys.db` (SQLite), or in
//! PostgreSQL if `DATABASE_URL` is a `postgres://` URL (build with `--features postgres`).
//! On first start it creates and prints `ADMIN_KEY=…` and `READ_KEY=…`; later starts
//! print only their ids (keys are stored as hashes and cannot be shown again). Then it
//! prints `READY`. Try:
//!
//! ```text
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/whoami
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/items
//! curl -H "Authorization: Bearer $READ_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items   # 403
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items  # 201
//! curl -H "Authorization: Bearer $ADMIN_KEY" localhost:3000/v1/account/api-keys        # the keys
//! ```

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, CreateKey, KeyManager};
use tower_api_keys::scope::{Read, Scope, Write};
use tower_api_keys::store::{KeyStore, SqlStore};
use tower_api_keys::usage::UsageRecorder;
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

const ACCOUNT: &str = "acct_quickstart";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let format = KeyFormat::new("sk");
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "apikeys.db".into());
    let store = SqlStore::open(&url).await?;
    store.migrate().await?;
    let cache = CachedVerifier::new(store.clone());
    #[cfg(feature = "postgres")]
    let _revocations = store.listen_for_revocations(cache.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());

    let existing = store.list(ACCOUNT).await?;
    if existing.is_empty() {
        for (name, scope) in [("ADMIN_KEY", Scope::Admin), ("READ_KEY", Scope::Read)] {
            let request = CreateKey::named(name).scopes(scope);
            let created = manager
                .create_for_account(ACCOUNT, Environment::LIVE, request)
                .await?;
            println!("{name}={}", created.key.expose_secret());
        }
    } else {
        for key in &existing {
            println!(
                "# {} exists as {} (sk_live_…{}); keys are shown only once",
                key.name, key.id, key.hint
            );
        }
        println!(
            "# another: cargo run --features cli --bin apikeys -- create --account {ACCOUNT} --name admin --scopes admin"
        );
    }

    let usage = UsageRecorder::new();
    let flusher = usage.spawn_flusher(store.clone(), Duration::from_secs(5));
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/items", get(list_items).post(create_item))
        .with_state(Items::default())
        .nest("/v1/account", manage::router(manager))
        .layer(
            ApiKeyLayer::new(format, cache)
                .environment(Environment::LIVE)
                .record_usage(usage.clone()),
        );

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("READY");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    flusher.abort();
    usage.flush(&store).await?;
    Ok(())
}
