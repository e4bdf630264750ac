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
//! the crate's metrics in the Prometheus text format, `GET /openapi.json` the OpenAPI
//! 3.1 description of every route and `GET /dashboard` the key page (paste `ADMIN_KEY`
//! into its "API key" field). Try:
//!
//! ```text
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/whoami
//! curl -H "Authorization: Bearer $READ_KEY" localhost:3000/v1/items
//! curl -H "Authorization: Bearer $READ_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items   # 403
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"x"}' -H 'content-type: application/json' localhost:3000/v1/items  # 201
//! curl -H "Authorization: Bearer $ADMIN_KEY" localhost:3000/v1/account/api-keys        # the keys
//! curl localhost:3000/metrics                                                           # the metrics
//! curl localhost:3000/openapi.json                                                      # the API description
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

/// `GET /openapi.json`: this server's routes, each needing a key (and the layer's
/// answers), merged with the management routes' description.
fn openapi_json<S, V>(routes: &manage::KeyRoutes<S, V>) -> Json<Value>
where
    S: tower_api_keys::store::KeyStore,
    V: tower_api_keys::KeyVerifier,
{
    use manage::openapi::require_api_key;
    let ok = |what: &str| json!({"200": {"description": what}});
    let mut api: utoipa::openapi::OpenApi = serde_json::from_value(json!({
        "openapi": "3.1.0",
        "info": {"title": "Quickstart", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/v1/whoami": {"get": {"operationId": "whoami", "summary": "The caller's principal", "responses": ok("The principal")}},
            "/v1/items": {
                "get": {"operationId": "listItems", "summary": "The items (read; costs 1)", "responses": ok("The items")},
                "post": {"operationId": "createItem", "summary": "Add an item (write; costs 5)", "responses": {"201": {"description": "The item"}}},
            },
        },
    }))
    .expect("a valid document");
    for (path, item) in api.paths.paths.iter_mut() {
        if let Some(get) = item.get.as_mut() {
            let scope = (path == "/v1/items").then_some(Scope::Read);
            require_api_key(get, scope.as_ref());
        }
        if let Some(post) = item.post.as_mut() {
            require_api_key(post, Some(&Scope::Write));
        }
    }
    api.merge(routes.openapi().prefix("/v1/account").document());
    Json(serde_json::to_value(api).expect("the document serializes"))
}

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

    let routes = manage::KeyRoutes::new(manager);
    // The key page and the API description hold no data: outside the key layer.
    let page = routes
        .dashboard()
        .api_base("/v1/account")
        .router("/dashboard");
    let openapi = openapi_json(&routes);
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/items", get(list_items))
        .route("/v1/items", post(create_item).route_layer(Cost::new(5)))
        .with_state(Items::default())
        .nest("/v1/account", routes.into_router())
        .layer(backend.layer(format).environment(Environment::LIVE))
        .merge(support::metrics_route(metrics))
        .merge(page)
        .route("/openapi.json", get(move || async move { openapi }));
    support::serve(app, 3000, backend).await
}
