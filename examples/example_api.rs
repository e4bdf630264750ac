//! "Example API" (seed 003): envelopes, `key_…` ids, and restricted keys.
//! `cargo run --example example_api`.
//!
//! Every answer is `{"success": true, "data": …}` or `{"success": false, "error": …}`,
//! the layer's 401/403 included. Keys are `sk_live_…` or `sk_test_…` with ids `key_…`
//! and give full access to the account; they can be restricted by IP address, referrer
//! and endpoint. Routes: `GET /v1/users/{id}`, and `GET/POST /v1/api-keys`,
//! `GET/PATCH/DELETE /v1/api-keys/{id}`. Prints `LIVE_KEY`, `TEST_KEY`,
//! `IP_RESTRICTED_KEY` (only from 203.0.113.0/24, so refused from loopback) and
//! `ENDPOINT_RESTRICTED_KEY` (only `GET /v1/users/*`), reissued on every start, then
//! `READY`.
//!
//! ```text
//! curl localhost:3300/v1/users/usr_123 -H "Authorization: Bearer $LIVE_KEY"
//! curl localhost:3300/v1/api-keys -H "Authorization: Bearer $LIVE_KEY"
//! ```

mod support;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;
use tower_api_keys::Principal;
use tower_api_keys::error::Envelope;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{Ack, KeyManager, KeyRoutes, NewKey};
use tower_api_keys::restriction::Restrictions;

const ACCOUNT: &str = "acct_example";
const ENVELOPE: Envelope = Envelope::Success;

/// `2025-01-01T00:00:00Z`, as the document writes times.
fn timestamp(at: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(format)
        .expect("a UTC time formats")
}

/// A failure in the envelope.
fn refuse(status: StatusCode, code: &str, message: &str) -> (StatusCode, Json<Value>) {
    (status, Json(ENVELOPE.error(code, message)))
}

async fn user(_: Principal, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    if id == "usr_123" {
        let user = json!({ "id": id, "name": "Ada Lovelace", "email": "ada@example.com" });
        (StatusCode::OK, Json(ENVELOPE.data(user)))
    } else {
        refuse(StatusCode::NOT_FOUND, "user_not_found", "no such user")
    }
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("example_api.db").await?;
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone())
        .id_prefix("key");

    let bootstrap = [
        ("LIVE_KEY", Environment::LIVE, Restrictions::none()),
        ("TEST_KEY", Environment::TEST, Restrictions::none()),
        (
            "IP_RESTRICTED_KEY",
            Environment::LIVE,
            Restrictions::none().ips(["203.0.113.0/24".parse()?]),
        ),
        (
            "ENDPOINT_RESTRICTED_KEY",
            Environment::LIVE,
            Restrictions::none().endpoints(["GET /v1/users/*".parse()?]),
        ),
    ];
    for (name, environment, restrictions) in bootstrap {
        let request = NewKey::named(name).restrictions(restrictions);
        let created = manager.reissue(ACCOUNT, environment, request).await?;
        support::credential(name, created.key.expose_secret());
    }

    let keys = KeyRoutes::new(manager)
        .scope(None) // "API keys provide full access to your account"
        .rotation(false) // rotating is: create a new key, revoke the old
        .envelope(ENVELOPE)
        .key_view(|key| {
            json!({
                "id": key.id,
                "name": key.name,
                "prefix": format!("{}_", key.prefix),
                "created_at": timestamp(key.created_at),
                "last_used": key.last_used_at.map(timestamp),
            })
        })
        .revoked(Ack::Done(Some("API key revoked successfully".into())));
    let app = Router::new()
        .route("/v1/users/{id}", get(user))
        .nest("/v1", keys.into_router())
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(backend.layer(format).error_format(ENVELOPE));
    support::serve(app, 3300, backend).await
}
