//! Every row of the response table (README, DESIGN.md): status, code, and whether
//! `WWW-Authenticate` and `Retry-After` are there (and what the challenge says), one
//! request per row, through the layer and the management routes.
//! (`429 rate_limited` arrives with rate limits, which are not built yet.)
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response};
use support::body_json;
use support::temp_db::TempDb;
use tower::ServiceExt;
use tower_api_keys::client_ip::PeerAddr;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::policy::{EnvironmentByHost, ProjectFromPath};
use tower_api_keys::record::AccountStanding;
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::SqliteStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal};

const REALM: &str = r#"Bearer realm="api""#;
const INVALID_TOKEN: &str = r#"Bearer realm="api", error="invalid_token""#;
const INVALID_REQUEST: &str = r#"Bearer realm="api", error="invalid_request""#;

/// What one row promises.
struct Row {
    status: u16,
    code: &'static str,
    challenge: Option<&'static str>,
    retry_after: bool,
}

const fn row(
    status: u16,
    code: &'static str,
    challenge: Option<&'static str>,
    retry_after: bool,
) -> Row {
    Row {
        status,
        code,
        challenge,
        retry_after,
    }
}

async fn check(response: Response<Body>, row: &Row, what: &str) {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let retry_after = response.headers().contains_key(RETRY_AFTER);
    let body = body_json(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap_or_default()),
        (row.status, row.code),
        "{what}: {body}"
    );
    assert_eq!(
        challenge.as_deref(),
        row.challenge,
        "{what}: WWW-Authenticate"
    );
    assert_eq!(retry_after, row.retry_after, "{what}: Retry-After");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a message"
    );
}

struct Setup {
    app: axum::Router,
    keys: Vec<(&'static str, String)>,
    store: SqliteStore,
    _db: TempDb,
}

impl Setup {
    fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

async fn setup() -> Setup {
    let db = TempDb::new("response_table");
    let store = SqliteStore::open(db.path())
        .await
        .unwrap()
        .with_active_key_limit(3);
    store.migrate().await.unwrap();
    // A generous verify timeout: a slow store on a loaded machine is not an outage.
    let cache = CachedVerifier::builder(store.clone())
        .verify_timeout(Some(Duration::from_secs(30)))
        .build();
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let mut keys = Vec::new();
    let restricted = |r: Restrictions| NewKey::named("k").scopes(Scope::Admin).restrictions(r);
    for (name, account, environment, request) in [
        (
            "admin",
            "acct_1",
            Environment::LIVE,
            NewKey::named("admin").scopes(Scope::Admin),
        ),
        (
            "reader",
            "acct_1",
            Environment::LIVE,
            NewKey::named("reader").scopes(Scope::Read),
        ),
        (
            "test",
            "acct_1",
            Environment::TEST,
            NewKey::named("test").scopes(Scope::Admin),
        ),
        (
            "ip",
            "acct_2",
            Environment::LIVE,
            restricted(Restrictions::none().ips(["203.0.113.0/24".parse().unwrap()])),
        ),
        (
            "referrer",
            "acct_2",
            Environment::LIVE,
            restricted(
                Restrictions::none().referrers(["https://app.example.com".parse().unwrap()]),
            ),
        ),
        (
            "endpoint",
            "acct_2",
            Environment::LIVE,
            restricted(Restrictions::none().endpoints(["GET /v1/users/*".parse().unwrap()])),
        ),
        (
            "project",
            "acct_3",
            Environment::LIVE,
            NewKey::named("project").project("proj_a"),
        ),
        (
            "past_due",
            "acct_4",
            Environment::LIVE,
            NewKey::named("past due"),
        ),
        (
            "never_used",
            "acct_6",
            Environment::LIVE,
            NewKey::named("never used"),
        ),
    ] {
        let created = manager
            .create_for_account(account, environment, request)
            .await
            .unwrap();
        keys.push((name, created.key.expose_secret().to_owned()));
    }
    let revoked = manager
        .create_for_account("acct_5", Environment::LIVE, NewKey::named("revoked"))
        .await
        .unwrap();
    manager.revoke("acct_5", &revoked.info.id).await.unwrap();
    keys.push(("revoked", revoked.key.expose_secret().to_owned()));
    let expired = manager
        .create_for_account(
            "acct_5",
            Environment::LIVE,
            NewKey::named("expired")
                .expires_at(time::OffsetDateTime::now_utc() + time::Duration::seconds(1)),
        )
        .await
        .unwrap();
    manager
        .update(
            "acct_5",
            &expired.info.id,
            tower_api_keys::store::KeyChanges::default().expires_at(Some(
                time::OffsetDateTime::now_utc() - time::Duration::seconds(1),
            )),
        )
        .await
        .unwrap();
    keys.push(("expired", expired.key.expose_secret().to_owned()));
    manager
        .set_standing(
            "acct_4",
            AccountStanding::past_due(time::OffsetDateTime::now_utc() - time::Duration::days(30)),
        )
        .await
        .unwrap();

    let hosts = EnvironmentByHost::new()
        .host("api.example.com", Environment::LIVE)
        .host("localhost", Environment::LIVE);
    let app = axum::Router::new()
        .route("/whoami", get(|p: Principal| async move { axum::Json(p) }))
        .route("/v1/projects/{project}/jobs", get(|| async { "jobs" }))
        .nest("/v1/account", manage::router(manager))
        .layer(
            ApiKeyLayer::new(format, cache)
                .environment_by(hosts)
                .projects(ProjectFromPath::after("projects")),
        );
    Setup {
        app,
        keys,
        store,
        _db: db,
    }
}

fn request(method: &str, uri: &str, authorization: Option<&str>) -> http::request::Builder {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com")
        .extension(PeerAddr("198.51.100.1:5000".parse().unwrap()));
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
}

async fn send(setup: &Setup, request: Request<Body>) -> Response<Body> {
    setup.app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn every_row_of_the_response_table() {
    let setup = setup().await;
    let get = |key: &str| {
        request("GET", "/whoami", Some(&format!("Bearer {key}")))
            .body(Body::empty())
            .unwrap()
    };
    let admin = setup.key("admin").to_owned();
    let mut bad_checksum = admin.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'a' {
        b'b'
    } else {
        b'a'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();

    // The layer's rows.
    let cases: Vec<(&str, Request<Body>, Row)> = vec![
        ("accepted", get(&admin), row(200, "", None, false)),
        (
            "no header",
            request("GET", "/whoami", None).body(Body::empty()).unwrap(),
            row(401, "missing_api_key", Some(REALM), false),
        ),
        (
            "another scheme",
            request("GET", "/whoami", Some("Basic dXNlcjpwYXNz"))
                .body(Body::empty())
                .unwrap(),
            row(401, "missing_api_key", Some(REALM), false),
        ),
        (
            "two headers",
            request("GET", "/whoami", Some(&format!("Bearer {admin}")))
                .header(AUTHORIZATION, format!("Bearer {admin}"))
                .body(Body::empty())
                .unwrap(),
            row(400, "invalid_request", Some(INVALID_REQUEST), false),
        ),
        (
            "empty token",
            request("GET", "/whoami", Some("Bearer "))
                .body(Body::empty())
                .unwrap(),
            row(400, "invalid_request", Some(INVALID_REQUEST), false),
        ),
        (
            "illegal characters",
            request("GET", "/whoami", Some("Bearer sk_live_a\"b"))
                .body(Body::empty())
                .unwrap(),
            row(400, "invalid_request", Some(INVALID_REQUEST), false),
        ),
        (
            "bad checksum",
            get(&bad_checksum),
            row(401, "invalid_api_key", Some(INVALID_TOKEN), false),
        ),
        (
            "unknown key",
            get(KeyFormat::new("sk")
                .generate(&Environment::LIVE)
                .expose_secret()),
            row(401, "invalid_api_key", Some(INVALID_TOKEN), false),
        ),
        (
            "revoked",
            get(setup.key("revoked")),
            row(401, "api_key_revoked", Some(INVALID_TOKEN), false),
        ),
        (
            "expired",
            get(setup.key("expired")),
            row(401, "api_key_expired", Some(INVALID_TOKEN), false),
        ),
        (
            "test key on a live host",
            get(setup.key("test")),
            row(401, "environment_mismatch", Some(INVALID_TOKEN), false),
        ),
        (
            "another host",
            {
                let mut elsewhere = get(&admin);
                elsewhere
                    .headers_mut()
                    .insert("host", "elsewhere.example.org".parse().unwrap());
                elsewhere
            },
            row(401, "environment_mismatch", Some(INVALID_TOKEN), false),
        ),
        (
            "past due",
            get(setup.key("past_due")),
            row(402, "payment_required", None, false),
        ),
        (
            "insufficient scope",
            request(
                "POST",
                "/v1/account/api-keys",
                Some(&format!("Bearer {}", setup.key("reader"))),
            )
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name": "x"}"#))
            .unwrap(),
            row(
                403,
                "insufficient_scope",
                Some(r#"Bearer realm="api", error="insufficient_scope", scope="admin""#),
                false,
            ),
        ),
        (
            "another project",
            request(
                "GET",
                "/v1/projects/proj_b/jobs",
                Some(&format!("Bearer {}", setup.key("project"))),
            )
            .body(Body::empty())
            .unwrap(),
            row(403, "project_forbidden", None, false),
        ),
        (
            "ip",
            get(setup.key("ip")),
            row(403, "ip_not_allowed", None, false),
        ),
        (
            "referrer",
            request(
                "GET",
                "/whoami",
                Some(&format!("Bearer {}", setup.key("referrer"))),
            )
            .header("origin", "https://evil.example.org")
            .body(Body::empty())
            .unwrap(),
            row(403, "referrer_not_allowed", None, false),
        ),
        (
            "endpoint",
            get(setup.key("endpoint")),
            row(403, "endpoint_not_allowed", None, false),
        ),
    ];
    for (what, request, expected) in cases {
        let response = send(&setup, request).await;
        if expected.status == 200 {
            assert_eq!(response.status(), 200, "{what}");
            assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
            assert!(response.headers().get(RETRY_AFTER).is_none());
            continue;
        }
        check(response, &expected, what).await;
    }

    // Management rows: 409 at the limit (acct_1 has 3 live and test keys... per
    // environment: admin and reader are live, so one more fits).
    let create = |name: &str| {
        request(
            "POST",
            "/v1/account/api-keys",
            Some(&format!("Bearer {admin}")),
        )
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"name": "{name}"}}"#)))
        .unwrap()
    };
    let third = send(&setup, create("third")).await;
    assert_eq!(third.status(), 201);
    let third_id = body_json(third).await["id"].as_str().unwrap().to_owned();
    check(
        send(&setup, create("fourth")).await,
        &row(409, "api_key_limit_reached", None, false),
        "over the limit",
    )
    .await;
    let overlap = request(
        "POST",
        &format!("/v1/account/api-keys/{third_id}/rotate"),
        Some(&format!("Bearer {admin}")),
    )
    .header("content-type", "application/json")
    .body(Body::from(r#"{"overlap_seconds": -1}"#))
    .unwrap();
    check(
        send(&setup, overlap).await,
        &row(422, "invalid_overlap", None, false),
        "negative overlap",
    )
    .await;

    // The store fails: management answers 503 store_unavailable; a key not cached
    // answers 503 auth_unavailable with Retry-After.
    setup.store.pool().close().await;
    check(
        send(&setup, create("during the outage")).await,
        &row(503, "store_unavailable", None, false),
        "store down (management)",
    )
    .await;
    // The closed pool itself fails the verifier (no simulated failure).
    check(
        send(&setup, get(setup.key("never_used"))).await,
        &row(503, "auth_unavailable", None, true),
        "store down (an uncached key)",
    )
    .await;
}

#[tokio::test]
async fn keys_of_an_environment_not_issued_here_are_refused() {
    let setup = setup().await;
    let store = setup.store.clone();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store),
        KeyFormat::new("sk"),
    );
    let refused = manager
        .create_for_account("acct_9", Environment::new("staging"), NewKey::named("k"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status().as_u16(), refused.code()),
        (422, "invalid_environment")
    );
    assert!(
        manager.list("acct_9").await.unwrap().is_empty(),
        "nothing written"
    );
}
