//! The management router over real HTTP, on the SQLite store.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use support::create::{NewKey, StoreForTests as _};
use support::raw_http::{Client, serve};
use support::temp_db::TempDb;
use tower_api_keys::KeyVerifier as _;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, SqliteStore};
use tower_api_keys::usage::UsageRecorder;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

struct Server {
    addr: std::net::SocketAddr,
    store: SqliteStore,
    admin: String,
    reader: String,
    other_account_key_id: String,
    usage: UsageRecorder,
    _db: TempDb,
}

async fn server(name: &str, limit: usize) -> Server {
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path())
        .await
        .unwrap()
        .with_active_key_limit(limit);
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    // A long TTL: revocation must not wait for it.
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let create = |name: &str, scope: Scope, account: &str| {
        let (manager, name, account) = (manager.clone(), name.to_owned(), account.to_owned());
        async move {
            manager
                .create_for_account(
                    &account,
                    Environment::LIVE,
                    manage::NewKey::named(name).scopes(scope),
                )
                .await
                .unwrap()
        }
    };
    let admin = create("admin", Scope::Admin, "acct_1")
        .await
        .key
        .expose_secret()
        .to_owned();
    let reader = create("reader", Scope::Read, "acct_1")
        .await
        .key
        .expose_secret()
        .to_owned();
    let other = create("theirs", Scope::Admin, "acct_2")
        .await
        .info
        .id
        .to_string();
    let usage = UsageRecorder::new();
    let app = axum::Router::new()
        .route(
            "/v1/whoami",
            axum::routing::get(|p: tower_api_keys::Principal| async move { axum::Json(p) }),
        )
        .nest("/v1/account", manage::router(manager))
        .layer(ApiKeyLayer::new(format, cache).record_usage(usage.clone()));
    Server {
        addr: serve(app).await,
        store,
        admin,
        reader,
        other_account_key_id: other,
        usage,
        _db: db,
    }
}

#[tokio::test]
async fn create_list_get_rename_revoke() {
    let server = server("crud", 50).await;
    let admin = Client::new(server.addr, &server.admin);

    let created = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "CI pipeline key", "scopes": ["read", "write"]}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ak_"));
    assert!(key.starts_with("sk_live_"));
    assert_eq!(created["name"], "CI pipeline key");
    assert_eq!(created["hint"], key[key.len() - 4..]);
    assert_eq!(created["scopes"], serde_json::json!(["read", "write"]));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created.get("key_hash").is_none());

    // The new key works at once.
    let new_key = Client::new(server.addr, &key);
    assert_eq!(new_key.send("GET", "/v1/whoami", "").await.status, 200);

    let listed = admin.send("GET", "/v1/account/api-keys", "").await;
    assert_eq!(listed.status, 200);
    assert!(!listed.body.contains(&key), "a listing never holds a key");
    assert!(
        !listed.body.contains("sk_live_"),
        "nor any part of one beyond the prefix"
    );
    let items = listed.json()["data"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3);
    assert!(
        items
            .iter()
            .all(|item| item.get("key").is_none() && item.get("hint").is_some())
    );
    assert!(items.iter().all(|item| item.get("last_used_at").is_some()));

    let one = admin
        .send("GET", &format!("/v1/account/api-keys/{id}"), "")
        .await;
    assert_eq!(
        (one.status, one.json()["name"].clone()),
        (200, "CI pipeline key".into())
    );

    let renamed = admin
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{id}"),
            r#"{"name": "Renamed key"}"#,
        )
        .await;
    assert_eq!(
        (renamed.status, renamed.json()["name"].clone()),
        (200, "Renamed key".into())
    );
    assert_eq!(
        new_key.send("GET", "/v1/whoami", "").await.json()["key_name"],
        "Renamed key"
    );

    let revoked = admin
        .send("DELETE", &format!("/v1/account/api-keys/{id}"), "")
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(revoked.body, "");
    let again = admin
        .send("DELETE", &format!("/v1/account/api-keys/{id}"), "")
        .await;
    assert_eq!(again.status, 204, "revoking twice is still 204");
    let refused = new_key.send("GET", "/v1/whoami", "").await;
    assert_eq!(
        (refused.status, refused.code()),
        (401, "api_key_revoked".into())
    );
    assert_eq!(
        admin.send("GET", "/v1/account/api-keys", "").await.json()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn other_accounts_keys_are_404_never_403() {
    let server = server("isolation", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    let theirs = format!("/v1/account/api-keys/{}", server.other_account_key_id);
    for (method, body) in [
        ("GET", ""),
        ("PATCH", r#"{"name": "mine now"}"#),
        ("DELETE", ""),
    ] {
        let reply = admin.send(method, &theirs, body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (404, "api_key_not_found".into()),
            "{method}"
        );
    }
    let missing = admin
        .send("GET", "/v1/account/api-keys/ak_doesnotexist", "")
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "api_key_not_found".into())
    );
    // Untouched.
    let id = tower_api_keys::key::KeyId::new(server.other_account_key_id.clone());
    let info = server.store.get("acct_2", &id).await.unwrap();
    assert_eq!((info.name.as_str(), info.revoked_at), ("theirs", None));
}

#[tokio::test]
async fn invalid_bodies_are_refused_and_nothing_is_written() {
    let server = server("invalid", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    let long_name = format!(r#"{{"name": "{}"}}"#, "n".repeat(101));
    let cases = [
        (
            "POST",
            "/v1/account/api-keys",
            "{not json",
            400,
            "invalid_json",
        ),
        ("POST", "/v1/account/api-keys", r#"{}"#, 422, "invalid_name"),
        (
            "POST",
            "/v1/account/api-keys",
            r#"{"name": ""}"#,
            422,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/account/api-keys",
            long_name.as_str(),
            422,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "a", "scopes": ["superuser"]}"#,
            422,
            "invalid_scope",
        ),
        (
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "a", "scopes": "admin"}"#,
            422,
            "invalid_scope",
        ),
        (
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "a", "expires_at": "2001-01-01T00:00:00Z"}"#,
            422,
            "invalid_expiry",
        ),
        (
            "POST",
            "/v1/account/api-keys",
            r#"["name"]"#,
            422,
            "invalid_body",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = admin.send(method, path, body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code.to_owned()),
            "{body}"
        );
    }
    let listed = admin.send("GET", "/v1/account/api-keys", "").await;
    let id = listed.json()["data"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/account/api-keys/{id}");
    let reply = admin.send("PATCH", &path, "nope").await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_json".into()));
    let reply = admin.send("PATCH", &path, &long_name).await;
    assert_eq!((reply.status, reply.code()), (422, "invalid_name".into()));
    assert_eq!(
        server.store.list("acct_1").await.unwrap().len(),
        2,
        "nothing was written"
    );
    assert_eq!(
        server
            .store
            .get("acct_1", &tower_api_keys::key::KeyId::new(id))
            .await
            .unwrap()
            .name,
        "admin"
    );
}

#[tokio::test]
async fn management_needs_the_admin_scope() {
    let server = server("scope", 50).await;
    let reader = Client::new(server.addr, &server.reader);
    for (method, path) in [
        ("GET", "/v1/account/api-keys"),
        ("POST", "/v1/account/api-keys"),
    ] {
        let reply = reader.send(method, path, r#"{"name": "sneaky"}"#).await;
        assert_eq!(
            (reply.status, reply.code()),
            (403, "insufficient_scope".into())
        );
        assert!(reply.head.contains(r#"scope="admin""#));
    }
    let anonymous = support::raw_http::raw_get(server.addr, "/v1/account/api-keys", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(server.store.list("acct_1").await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_fifty_first_active_key_is_409() {
    let server = server("limit", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    // `admin` and `reader` exist: 48 more make 50.
    for n in 0..48 {
        let reply = admin
            .send(
                "POST",
                "/v1/account/api-keys",
                &format!(r#"{{"name": "k{n}"}}"#),
            )
            .await;
        assert_eq!(reply.status, 201, "key {n}: {}", reply.body);
    }
    assert_eq!(server.store.list("acct_1").await.unwrap().len(), 50);
    let refused = admin
        .send("POST", "/v1/account/api-keys", r#"{"name": "fifty-first"}"#)
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "api_key_limit_reached".into())
    );
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50")
    );
    assert_eq!(server.store.list("acct_1").await.unwrap().len(), 50);
    // Revoked keys do not count.
    let listed = admin.send("GET", "/v1/account/api-keys", "").await;
    let last = listed.json()["data"][49]["id"].as_str().unwrap().to_owned();
    let revoked = admin
        .send("DELETE", &format!("/v1/account/api-keys/{last}"), "")
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(
        admin
            .send("POST", "/v1/account/api-keys", r#"{"name": "fifty-first"}"#)
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn a_thousand_requests_make_a_handful_of_usage_writes() {
    let server = server("usage", 50).await;
    let flusher = server
        .usage
        .spawn_flusher(server.store.clone(), Duration::from_millis(200));
    let reader = Client::new(server.addr, &server.reader);
    for _ in 0..1000 {
        assert_eq!(reader.send("GET", "/v1/whoami", "").await.status, 200);
    }
    support::eventually("a flush", Duration::from_secs(10), async || {
        server.usage.writes() >= 1
    })
    .await;
    flusher.abort();
    server.usage.flush(&server.store).await.unwrap();
    let writes = server.usage.writes();
    assert!(
        (1..=8).contains(&writes),
        "{writes} batch writes for 1,000 requests"
    );
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("1,000 requests -> {writes} usage writes\n"),
    );

    let admin = Client::new(server.addr, &server.admin);
    let listed = admin.send("GET", "/v1/account/api-keys", "").await.json();
    let reader_key = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "reader")
        .unwrap()
        .clone();
    assert!(reader_key["last_used_at"].is_string(), "{reader_key}");
}

#[tokio::test]
async fn a_key_never_creates_more_than_it_has_nor_sees_other_environments() {
    let server = server("bounds", 50).await;
    let format = KeyFormat::new("sk");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let locked = server
        .store
        .create(
            &format,
            NewKey::new("acct_1", "locked", Environment::LIVE)
                .scopes([Scope::Admin])
                .project("proj_a")
                .expires_at(soon),
        )
        .await
        .unwrap();
    let locked = Client::new(server.addr, locked.key.expose_secret());
    let other_project = locked
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "x", "project_id": "proj_b"}"#,
        )
        .await;
    assert_eq!(
        (other_project.status, other_project.code()),
        (422, "invalid_project".into())
    );
    let later = locked
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "x", "expires_at": "2099-01-01T00:00:00Z"}"#,
        )
        .await;
    assert_eq!((later.status, later.code()), (422, "invalid_expiry".into()));
    let inherited = locked
        .send("POST", "/v1/account/api-keys", r#"{"name": "child"}"#)
        .await;
    assert_eq!(inherited.status, 201, "{}", inherited.body);
    assert_eq!(inherited.json()["project_id"], "proj_a");
    assert!(inherited.json()["expires_at"].is_string());

    // A test-environment admin key of the same account sees no live key.
    let test_admin = server
        .store
        .create(
            &format,
            NewKey::new("acct_1", "test admin", Environment::TEST).scopes([Scope::Admin]),
        )
        .await
        .unwrap();
    let test_admin = Client::new(server.addr, test_admin.key.expose_secret());
    let listed = test_admin
        .send("GET", "/v1/account/api-keys", "")
        .await
        .json();
    let names: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, vec![serde_json::json!("test admin")]);
    let live_id = Client::new(server.addr, &server.admin)
        .send("GET", "/v1/account/api-keys", "")
        .await
        .json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = test_admin
        .send("DELETE", &format!("/v1/account/api-keys/{live_id}"), "")
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (404, "api_key_not_found".into())
    );
    let created = test_admin
        .send("POST", "/v1/account/api-keys", r#"{"name": "t"}"#)
        .await
        .json();
    assert!(created["key"].as_str().unwrap().starts_with("sk_test_"));
}

/// The routes nested under a prefix with an `{id}` of its own act on the key's `{id}`;
/// a caller locked to a project sees and touches only that project's keys; a custom
/// view that is not an object still shows the secret once; a revoked key cannot be
/// renamed.
#[tokio::test]
async fn nested_routes_project_callers_and_odd_views() {
    use tower_api_keys::manage::KeyRoutes;
    let store = tower_api_keys::store::MemoryStore::new();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let admin = |project: Option<&str>| {
        let mut request = manage::NewKey::named("admin").scopes(Scope::Admin);
        if let Some(project) = project {
            request = request.project(project);
        }
        let manager = manager.clone();
        async move {
            let created = manager
                .create_for_account("acct_1", Environment::LIVE, request)
                .await
                .unwrap();
            created.key.expose_secret().to_owned()
        }
    };
    let unlocked = admin(None).await;
    let locked = admin(Some("prj_a")).await;
    let routes = KeyRoutes::new(manager.clone()).into_router();
    let odd = KeyRoutes::new(manager.clone())
        .key_view(|key| serde_json::Value::String(key.name.clone()))
        .into_router();
    let app = axum::Router::new()
        .nest("/orgs/{id}", routes)
        .nest("/odd", odd)
        .layer(ApiKeyLayer::new(format, cache));
    let addr = serve(app).await;

    let client = Client::new(addr, &unlocked);
    let created = client
        .send("POST", "/orgs/org_1/api-keys", r#"{"name": "elsewhere"}"#)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let one = client
        .send("GET", &format!("/orgs/org_1/api-keys/{id}"), "")
        .await;
    assert_eq!(
        (one.status, one.json()["name"].clone()),
        (200, "elsewhere".into())
    );

    // Locked to prj_a: the unlocked key's keys are not its own.
    let project = Client::new(addr, &locked);
    let listed = project.send("GET", "/orgs/org_1/api-keys", "").await.json();
    let names: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, ["admin"], "only its own project's keys");
    let hidden = project
        .send("DELETE", &format!("/orgs/org_1/api-keys/{id}"), "")
        .await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (404, "api_key_not_found".into())
    );

    let odd = client
        .send("POST", "/odd/api-keys", r#"{"name": "odd"}"#)
        .await;
    assert_eq!(odd.status, 201);
    assert!(odd.json()["key"].as_str().unwrap().starts_with("sk_live_"));
    assert_eq!(odd.json()["view"], "odd");

    let path = format!("/orgs/org_1/api-keys/{id}");
    assert_eq!(client.send("DELETE", &path, "").await.status, 204);
    let renamed = client.send("PATCH", &path, r#"{"name": "x"}"#).await;
    assert_eq!(
        (renamed.status, renamed.code()),
        (404, "api_key_not_found".into())
    );
}

#[tokio::test]
async fn keys_record_their_creator_owner_and_metadata() {
    let server = server("provenance", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    let created = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "for ada", "scopes": ["read"], "owner_id": "usr_ada", "metadata": {"plan": "pro", "seats": 3}}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["owner_id"], "usr_ada");
    assert_eq!(
        created["metadata"],
        serde_json::json!({"plan": "pro", "seats": 3})
    );
    // Created by the admin key: its id.
    let admin_id = server
        .store
        .list("acct_1")
        .await
        .unwrap()
        .into_iter()
        .find(|key| key.name == "admin")
        .unwrap()
        .id;
    assert_eq!(created["created_by"], admin_id.as_str());
    // The verifier's record carries all three (what `Principal` exposes).
    let key = tower_api_keys::key::ApiKey::from_secret(created["key"].as_str().unwrap());
    let record = server.store.verify(&key.hash()).await.unwrap().unwrap();
    assert_eq!(
        (record.created_by.as_deref(), record.owner_id.as_deref()),
        (Some(admin_id.as_str()), Some("usr_ada"))
    );
    assert_eq!(record.metadata["plan"], "pro");

    // PATCH replaces the metadata and clears the owner; GET shows it.
    let path = format!("/v1/account/api-keys/{id}");
    let patched = admin
        .send(
            "PATCH",
            &path,
            r#"{"metadata": {"plan": "team"}, "owner_id": null}"#,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let shown = admin.send("GET", &path, "").await.json();
    assert_eq!(shown["metadata"], serde_json::json!({"plan": "team"}));
    assert_eq!(shown["owner_id"], serde_json::Value::Null);
    assert_eq!(shown["created_by"], admin_id.as_str());

    // Bad shapes: 422 with their codes, and nothing written.
    let big = format!(
        r#"{{"name": "k", "metadata": {{"blob": "{}"}}}}"#,
        "x".repeat(4_100)
    );
    for (body, code) in [
        (
            r#"{"name": "k", "metadata": [1]}"#.to_owned(),
            "invalid_metadata",
        ),
        (big, "invalid_metadata"),
        (
            r#"{"name": "k", "owner_id": ""}"#.to_owned(),
            "invalid_owner",
        ),
        (
            r#"{"name": "k", "owner_id": 7}"#.to_owned(),
            "invalid_owner",
        ),
    ] {
        let before = server.store.list("acct_1").await.unwrap().len();
        let refused = admin.send("POST", "/v1/account/api-keys", &body).await;
        assert_eq!(refused.status, 422, "{body}");
        assert_eq!(refused.json()["error"]["code"], code, "{body}");
        assert_eq!(server.store.list("acct_1").await.unwrap().len(), before);
    }
    let refused = admin.send("PATCH", &path, r#"{"metadata": "x"}"#).await;
    assert_eq!(refused.json()["error"]["code"], "invalid_metadata");
}
