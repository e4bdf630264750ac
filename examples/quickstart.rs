//! The quickstart server: `cargo run --example quickstart`.
//!
//! Binds `127.0.0.1:$PORT` (default 3000). Keys live in `apikeys.db` (SQLite), or in
//! PostgreSQL if `DATABASE_URL` is a `postgres://` URL (build with `--features postgres`).
//! On every start it issues and prints `ADMIN_KEY=…` and `READ_KEY=…` (revoking the
//! ones of the previous start: keys are stored as hashes and cannot be shown again),
//! then `READY`. Every request under `/v1/` costs 1 and `POST /v1/items` costs 5, on
//! each rate limit and credit balance of the key (keys get them at creation:
//! `"ratelimits"`, `"credits"`); with `REDIS_URL` set, instances share rate limits
//! through Redis. `GET /metrics` (no key: it is merged outside the key layer) serves
//! the crate's metrics in the Prometheus text format. Try:
//!
//! ```text
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/whoami
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/items
//! curl -H "Authorization: Bearer $READ_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items   # 403
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items  # 201
//! curl -H "Authorization: Bearer $ADMIN_KEY" localhost:3000/v1/account/api-keys        # the keys
//! curl localhost:3000/metrics                                                           # the metrics
//! ```

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::meter::Cost;
use tower_api_keys::scope::{Read, Scope, Write};
use tower_api_keys::{Principal, RequireScope};

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
    // First: the cache and the layer register their metrics with it when built.
    let metrics = support::prometheus()?;
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
        .route("/v1/items", get(list_items))
        .route("/v1/items", post(create_item).route_layer(Cost::new(5)))
        .with_state(Items::default())
        .nest("/v1/account", manage::router(manager))
        .layer(backend.layer(format).environment(Environment::LIVE))
        .merge(support::metrics_route(metrics));
    support::serve(app, 3000, backend).await
}
