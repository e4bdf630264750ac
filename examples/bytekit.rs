//! Bytekit (seed 000): the environment is the host. `cargo run --example bytekit`.
//!
//! `api.bytekit.com` is production and takes only `sk_live_` keys; `api-stg.bytekit.com`
//! is staging and takes only `sk_test_` keys; the wrong key for the host (or any key on
//! another host) is 401. Keys are managed under `/v1/account/api-keys` by any valid key
//! of the account, in the host's environment; 50 active keys per account and environment
//! at most (live and test keys are separate worlds).
//! Prints `LIVE_KEY` and `TEST_KEY` (reissued on every start), then `READY`.
//!
//! ```text
//! curl -H 'Host: api.bytekit.com' -H "Authorization: Bearer $LIVE_KEY" \
//!      -H 'Content-Type: application/json' -d '{"url": "https://example.com"}' localhost:3100/v1/scrape
//! curl -H 'Host: api.bytekit.com' -H "Authorization: Bearer $LIVE_KEY" \
//!      -H 'Content-Type: application/json' -d '{"name": "CI pipeline key"}' localhost:3100/v1/account/api-keys
//! ```

mod support;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tower_api_keys::Principal;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{KeyManager, KeyRoutes, NewKey};
use tower_api_keys::policy::EnvironmentByHost;

const ACCOUNT: &str = "acct_bytekit";

/// `POST /v1/scrape`, any valid key: `{"url": "https://…"}` → 202 with the job.
async fn scrape(
    principal: Principal,
    support::JsonBody(body): support::JsonBody,
) -> (StatusCode, Json<Value>) {
    match body.get("url").and_then(Value::as_str) {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => (
            StatusCode::ACCEPTED,
            Json(json!({
                "url": url,
                "status": "queued",
                "environment": principal.environment(),
            })),
        ),
        _ => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(
                json!({ "error": { "code": "invalid_url", "message": "url must be an http(s) URL" } }),
            ),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("bytekit.db").await?;
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone());
    for (name, environment) in [
        ("LIVE_KEY", Environment::LIVE),
        ("TEST_KEY", Environment::TEST),
    ] {
        let created = manager
            .reissue(ACCOUNT, environment, NewKey::named(name))
            .await?;
        support::credential(name, created.key.expose_secret());
    }

    let keys = KeyRoutes::new(manager)
        .scope(None) // any key of the account manages its keys
        .rotation(false) // rotating is: create a new key, revoke the old
        .key_view(|key| {
            json!({
                "id": key.id,
                "name": key.name,
                "prefix": format!("{}_", key.prefix),
                "hint": key.hint,
                "created_at": key.created_at.format(&time::format_description::well_known::Rfc3339).ok(),
                "last_used_at": key.last_used_at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()),
            })
        })
        .created_view(|key, secret| {
            json!({
                "id": key.id,
                "name": key.name,
                "key": secret,
                "created_at": key.created_at.format(&time::format_description::well_known::Rfc3339).ok(),
            })
        });
    let hosts = EnvironmentByHost::new()
        .host("api.bytekit.com", Environment::LIVE)
        .host("api-stg.bytekit.com", Environment::TEST);
    let app = Router::new()
        .route("/v1/scrape", post(scrape))
        .nest("/v1/account", keys.into_router())
        .layer(backend.layer(format).environment_by(hosts).realm("bytekit"));
    support::serve(app, 3100, backend).await
}
