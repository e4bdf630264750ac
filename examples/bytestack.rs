//! ByteStack (seeds 001 and 002): scopes `read` ⊂ `write` ⊂ `admin`, and billing.
//! `cargo run --example bytestack`.
//!
//! | scope | allows |
//! |---|---|
//! | `read` | `GET /v1/queries/{id}` (query results), `GET /v1/jobs/{id}` (job status), `GET /v1/sources` |
//! | `write` | everything in `read`, plus `POST /v1/queries` and `POST /v1/jobs` |
//! | `admin` | everything, plus `POST /v1/webhooks` and the keys under `/v1/api-keys` |
//!
//! Keys are created with one or more scopes and cannot be renamed. 401: missing,
//! malformed or revoked key; 403: valid key without the scope; 402: the account's charge
//! failed more than 7 days ago. Prints `ADMIN_KEY`, `WRITE_KEY`, `READ_KEY`,
//! `PAST_DUE_KEY` (charge failed 8 days ago: 402) and `GRACE_KEY` (3 days ago: served),
//! reissued on every start, then `READY`. The key page is at `GET /dashboard` (paste
//! `ADMIN_KEY` into its "API key" field).
//!
//! ```text
//! curl -X POST localhost:3200/v1/queries -H "Authorization: Bearer $WRITE_KEY" \
//!      -H "Content-Type: application/json" -d '{"prompt": "Mentions of Acme on X this week", "sources": ["x"]}'
//! ```

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use tower_api_keys::RequireScope;
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::manage::{KeyManager, KeyRoutes, NewKey};
use tower_api_keys::record::AccountStanding;
use tower_api_keys::scope::{Admin, Read, Scope, Write};

const SOURCES: [&str; 4] = ["x", "reddit", "news", "web"];

/// Queries, jobs and webhooks by id, each with its account.
#[derive(Clone, Default)]
struct Data(Arc<Mutex<HashMap<String, (String, Value)>>>);

impl Data {
    fn insert(&self, prefix: &str, account: &str, mut object: Value) -> Value {
        let id = KeyId::generate_with_prefix(prefix).to_string();
        object["id"] = Value::String(id.clone());
        let mut objects = self.0.lock().unwrap();
        objects.insert(id, (account.to_owned(), object.clone()));
        object
    }

    fn get(&self, account: &str, id: &str) -> Option<Value> {
        let objects = self.0.lock().unwrap();
        objects
            .get(id)
            .filter(|(owner, _)| owner == account)
            .map(|(_, object)| object.clone())
    }
}

type Reply = (StatusCode, Json<Value>);

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
}

fn found(object: Option<Value>, what: &str) -> Reply {
    match object {
        Some(object) => (StatusCode::OK, Json(object)),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("{what}_not_found"),
            "no such id",
        ),
    }
}

fn strings(value: &Value) -> Option<Vec<&str>> {
    value.as_array()?.iter().map(Value::as_str).collect()
}

async fn submit_query(
    RequireScope(principal, ..): RequireScope<Write>,
    State(data): State<Data>,
    support::JsonBody(body): support::JsonBody,
) -> Reply {
    let prompt = body["prompt"].as_str().filter(|p| !p.trim().is_empty());
    let sources = strings(&body["sources"])
        .filter(|s| !s.is_empty() && s.iter().all(|s| SOURCES.contains(s)));
    let (Some(prompt), Some(sources)) = (prompt, sources) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            "give a non-empty prompt and sources from GET /v1/sources",
        );
    };
    let query = json!({ "prompt": prompt, "sources": sources, "status": "queued" });
    let query = data.insert("qry", principal.account_id(), query);
    (StatusCode::CREATED, Json(query))
}

async fn query_result(
    RequireScope(principal, ..): RequireScope<Read>,
    State(data): State<Data>,
    Path(id): Path<String>,
) -> Reply {
    found(
        data.get(principal.account_id(), &id)
            .filter(|q| q.get("prompt").is_some()),
        "query",
    )
}

async fn create_job(
    RequireScope(principal, ..): RequireScope<Write>,
    State(data): State<Data>,
    support::JsonBody(body): support::JsonBody,
) -> Reply {
    let (Some(query_id), Some(schedule)) = (body["query_id"].as_str(), body["schedule"].as_str())
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "give a query_id and a schedule",
        );
    };
    if data.get(principal.account_id(), query_id).is_none() {
        return error(StatusCode::NOT_FOUND, "query_not_found", "no such query");
    }
    let job = json!({ "query_id": query_id, "schedule": schedule, "status": "scheduled" });
    (
        StatusCode::CREATED,
        Json(data.insert("job", principal.account_id(), job)),
    )
}

async fn job_status(
    RequireScope(principal, ..): RequireScope<Read>,
    State(data): State<Data>,
    Path(id): Path<String>,
) -> Reply {
    found(
        data.get(principal.account_id(), &id)
            .filter(|j| j.get("schedule").is_some()),
        "job",
    )
}

async fn list_sources(_: RequireScope<Read>) -> Json<Value> {
    Json(json!({ "data": SOURCES }))
}

async fn configure_webhook(
    RequireScope(principal, ..): RequireScope<Admin>,
    State(data): State<Data>,
    support::JsonBody(body): support::JsonBody,
) -> Reply {
    match body["url"]
        .as_str()
        .filter(|url| url.starts_with("https://"))
    {
        Some(url) => {
            let hook = data.insert("wh", principal.account_id(), json!({ "url": url }));
            (StatusCode::CREATED, Json(hook))
        }
        None => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_url",
            "url must be https",
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("bytestack.db").await?;
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone());

    let now = OffsetDateTime::now_utc();
    let bootstrap = [
        ("ADMIN_KEY", "acct_bytestack", Scope::Admin, None),
        ("WRITE_KEY", "acct_bytestack", Scope::Write, None),
        ("READ_KEY", "acct_bytestack", Scope::Read, None),
        (
            "PAST_DUE_KEY",
            "acct_past_due",
            Scope::Write,
            Some(now - Duration::days(8)),
        ),
        (
            "GRACE_KEY",
            "acct_grace",
            Scope::Write,
            Some(now - Duration::days(3)),
        ),
    ];
    for (name, account, scope, charge_failed) in bootstrap {
        if let Some(since) = charge_failed {
            // ByteStack's 7-day grace period for failed charges.
            let standing = AccountStanding::past_due(since).with_grace_days(7);
            manager.set_standing(account, standing).await?;
        }
        let request = NewKey::named(name).scopes(scope);
        let created = manager.reissue(account, Environment::LIVE, request).await?;
        support::credential(name, created.key.expose_secret());
    }

    let keys = KeyRoutes::new(manager).renames(false).rotation(false); // admin scope by default
    // The key page (no data of its own: outside the key layer); it asks for an admin key.
    let page = keys
        .dashboard()
        .api_base("/v1")
        .title("ByteStack API keys")
        .router("/dashboard");
    let app = Router::new()
        .route("/v1/queries", post(submit_query))
        .route("/v1/queries/{id}", get(query_result))
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/v1/sources", get(list_sources))
        .route("/v1/webhooks", post(configure_webhook))
        .with_state(Data::default())
        .nest("/v1", keys.into_router())
        .layer(backend.layer(format).realm("bytestack"))
        .merge(page);
    support::serve(app, 3200, backend).await
}
