//! The quickstart server: `cargo run --example quickstart`.
//!
//! Binds `127.0.0.1:$PORT` (default 3000). Keys live in `apikeys.db` (SQLite), or in
//! PostgreSQL if `DATABASE_URL` is a `postgres://` URL (build with `--features postgres`).
//! On every start it issues and prints `ADMIN_KEY=…` and `READ_KEY=…` (revoking the
//! ones of the previous start: keys are stored as hashes and cannot be shown again),
//! then `READY`. Try:
//!
//! ```text
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/whoami
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/items
//! curl -H "Authorization: Bearer $READ_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items   # 403
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items  # 201
//! curl -H "Authorization: Bearer $ADMIN_KEY" localhost:3000/v1/account/api-keys        # the keys
//! ```

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::scope::{Read, Scope, Write};
use tower_api_keys::{ApiKeyLayer, Principal, RequireScope};

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
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("apikeys.db").await?;
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone());
    for (name, scope) in [("ADMIN_KEY", Scope::Admin), ("READ_KEY", Scope::Read)] {
        let request = NewKey::named(name).scopes(scope);
        let created = manager.reissue(ACCOUNT, Environment::LIVE, request).await?;
        support::credential(name, created.key.expose_secret());
    }

    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/items", get(list_items).post(create_item))
        .with_state(Items::default())
        .nest("/v1/account", manage::router(manager))
        .layer(
            ApiKeyLayer::new(format, backend.cache.clone())
                .environment(Environment::LIVE)
                .record_usage(backend.usage.clone()),
        );
    support::serve(app, 3000, backend).await
}
