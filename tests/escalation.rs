//! Routes that return a secret, tried by limited keys: a key never obtains a secret
//! broader than itself (scopes, expiry, restrictions, project), and a refused attempt
//! changes nothing. Over real HTTP, on the SQLite store.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use support::create::{NewKey, StoreForTests as _};
use support::raw_http::{Client, serve};
use support::temp_db::TempDb;
use time::OffsetDateTime;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{KeyManager, router_with_scope};
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyInfo, KeyStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

struct Server {
    addr: std::net::SocketAddr,
    store: SqliteStore,
    _db: TempDb,
}

/// The management routes under `/v1/account` requiring `scope` (`None`: any key), and
/// `GET /v1/whoami`.
async fn server(name: &str, scope: Option<Scope>) -> Server {
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let app = axum::Router::new()
        .route(
            "/v1/whoami",
            axum::routing::get(|p: tower_api_keys::Principal| async move { axum::Json(p) }),
        )
        .nest("/v1/account", router_with_scope(manager, scope))
        .layer(ApiKeyLayer::new(format, cache));
    Server {
        addr: serve(app).await,
        store,
        _db: db,
    }
}

impl Server {
    /// A key of `acct_1`, and a client using it.
    async fn key(&self, new: NewKey) -> (KeyInfo, Client) {
        let created = self.store.create(&KeyFormat::new("sk"), new).await.unwrap();
        (
            created.info,
            Client::new(self.addr, created.key.expose_secret()),
        )
    }

    async fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store
            .list("acct_1")
            .await
            .unwrap()
            .into_iter()
            .map(|key| key.id.to_string())
            .collect();
        ids.sort();
        ids
    }
}

fn new(name: &str, scope: Scope) -> NewKey {
    NewKey::new("acct_1", name, Environment::LIVE).scopes([scope])
}

fn in_days(days: i64) -> OffsetDateTime {
    let at = OffsetDateTime::now_utc() + time::Duration::days(days);
    at.replace_millisecond(at.millisecond()).unwrap()
}

/// Everything a refused rotation must leave as it was: the keys, and the target's
/// fields.
async fn assert_refused(server: &Server, caller: &Client, target: &KeyInfo, why: &str) {
    let before = server.ids().await;
    let reply = caller
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", target.id),
            "{}",
        )
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (403, "key_exceeds_caller"),
        "{why}: {}",
        reply.body
    );
    assert!(
        !reply.body.contains("sk_live_"),
        "{why}: no secret in a refusal"
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(why),
        "{why}: {}",
        reply.body
    );
    assert_eq!(server.ids().await, before, "{why}: no key created or ended");
    let after = server.store.get("acct_1", &target.id).await.unwrap();
    assert_eq!(&after, target, "{why}: the target is unchanged");
}

#[tokio::test]
async fn a_key_rotates_only_keys_it_could_have_created() {
    // Any key may manage keys here: the rotation rule alone must hold.
    let server = server("rotate_rules", None).await;
    let (admin, _) = server.key(new("admin", Scope::Admin)).await;
    let (reader_key, reader) = server.key(new("reader", Scope::Read)).await;
    let (_, writer) = server.key(new("writer", Scope::Write)).await;

    // Fewer scopes: neither a reader nor a writer rotates the admin key.
    assert_refused(&server, &reader, &admin, "a scope").await;
    assert_refused(&server, &writer, &admin, "a scope").await;

    // A short-lived key cannot rotate a key that never expires, nor one expiring later.
    let (_, short) = server
        .key(new("short", Scope::Admin).expires_at(in_days(1)))
        .await;
    assert_refused(&server, &short, &admin, "a later expiry").await;
    let (later, _) = server
        .key(new("later", Scope::Read).expires_at(in_days(30)))
        .await;
    assert_refused(&server, &short, &later, "a later expiry").await;

    // A restricted key cannot rotate an unrestricted one (nor differently restricted).
    let fence = Restrictions::none().endpoints(["* /v1/**".parse().unwrap()]);
    let (_, fenced) = server
        .key(new("fenced", Scope::Admin).restrictions(fence.clone()))
        .await;
    assert_refused(&server, &fenced, &admin, "other restrictions").await;
    let other_fence = Restrictions::none().endpoints(["GET /v1/**".parse().unwrap()]);
    let (elsewhere, _) = server
        .key(new("elsewhere", Scope::Read).restrictions(other_fence))
        .await;
    assert_refused(&server, &fenced, &elsewhere, "other restrictions").await;

    // Allowed: a writer rotates a reader; the fenced key rotates a key fenced like it;
    // the short-lived key rotates a key expiring before it. The new key is like the old.
    let reply = writer
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", reader_key.id),
            "",
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["scopes"], serde_json::json!(["read"]));
    let (same_fence, _) = server
        .key(new("same fence", Scope::Read).restrictions(fence))
        .await;
    let reply = fenced
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", same_fence.id),
            "",
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let (sooner, _) = server
        .key(new("sooner", Scope::Read).expires_at(in_days(1) - time::Duration::hours(1)))
        .await;
    let reply = short
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", sooner.id),
            "",
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    // The old key was ended (no overlap): the reader's key is refused now.
    assert_eq!(
        reader.send("GET", "/v1/whoami", "").await.code(),
        "api_key_revoked"
    );
}

#[tokio::test]
async fn a_key_locked_to_a_project_rotates_only_that_projects_keys() {
    let server = server("rotate_project", None).await;
    let (_, locked) = server
        .key(new("locked", Scope::Admin).project("proj_a"))
        .await;
    let (unlocked, _) = server.key(new("unlocked", Scope::Read)).await;
    let (theirs, _) = server
        .key(new("theirs", Scope::Read).project("proj_b"))
        .await;
    let (ours, _) = server.key(new("ours", Scope::Read).project("proj_a")).await;
    // Keys outside its project do not exist for it: 404, and nothing changes.
    for target in [&unlocked, &theirs] {
        let before = server.ids().await;
        let reply = locked
            .send(
                "POST",
                &format!("/v1/account/api-keys/{}/rotate", target.id),
                "",
            )
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (404, "api_key_not_found")
        );
        assert_eq!(server.ids().await, before);
    }
    let reply = locked
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", ours.id),
            "",
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["project_id"], "proj_a");
}

#[tokio::test]
async fn rotation_needs_the_scope_that_creation_needs() {
    let server = server("rotate_scope", Some(Scope::Write)).await;
    let (reader_key, reader) = server.key(new("reader", Scope::Read)).await;
    let (_, writer) = server.key(new("writer", Scope::Write)).await;
    let before = server.ids().await;
    for (method, path, body) in [
        (
            "POST",
            "/v1/account/api-keys".to_owned(),
            r#"{"name": "x"}"#,
        ),
        (
            "POST",
            format!("/v1/account/api-keys/{}/rotate", reader_key.id),
            "",
        ),
    ] {
        let reply = reader.send(method, &path, body).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, "insufficient_scope"),
            "{path}"
        );
        assert!(
            reply
                .head
                .contains(r#"error="insufficient_scope", scope="write""#),
            "{}",
            reply.head
        );
    }
    assert_eq!(server.ids().await, before);
    // A writer may rotate the reader's key (and so obtains only a read key).
    let reply = writer
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", reader_key.id),
            r#"{"overlap_seconds": 60}"#,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["scopes"], serde_json::json!(["read"]));
    // Within the overlap, the old key still works; it now has an expiry.
    assert_eq!(reader.send("GET", "/v1/whoami", "").await.status, 200);
    assert!(
        server
            .store
            .get("acct_1", &reader_key.id)
            .await
            .unwrap()
            .expires_at
            .is_some()
    );
}

#[tokio::test]
async fn creation_never_exceeds_the_caller_either() {
    // The other route that returns a secret, tried the same ways.
    let server = server("create_rules", None).await;
    let (_, reader) = server.key(new("reader", Scope::Read)).await;
    let (_, short) = server
        .key(new("short", Scope::Admin).expires_at(in_days(1)))
        .await;
    let fence = Restrictions::none().endpoints(["* /v1/**".parse().unwrap()]);
    let (_, fenced) = server
        .key(new("fenced", Scope::Admin).restrictions(fence))
        .await;
    let (_, locked) = server
        .key(new("locked", Scope::Admin).project("proj_a"))
        .await;
    let before = server.ids().await;
    for (caller, body, status, code) in [
        (
            &reader,
            r#"{"name": "x", "scopes": ["write"]}"#,
            403,
            "insufficient_scope",
        ),
        (
            &short,
            r#"{"name": "x", "expires_at": "2099-01-01T00:00:00Z"}"#,
            422,
            "invalid_expiry",
        ),
        (
            &fenced,
            r#"{"name": "x", "restrictions": null}"#,
            422,
            "invalid_restrictions",
        ),
        (
            &locked,
            r#"{"name": "x", "project_id": "proj_b"}"#,
            422,
            "invalid_project",
        ),
    ] {
        let reply = caller.send("POST", "/v1/account/api-keys", body).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (status, code),
            "{body}"
        );
    }
    assert_eq!(server.ids().await, before);
    // What they may create inherits their limits.
    let child = short
        .send("POST", "/v1/account/api-keys", r#"{"name": "child"}"#)
        .await;
    assert_eq!(child.status, 201, "{}", child.body);
    assert!(child.json()["expires_at"].is_string());
    let child = fenced
        .send("POST", "/v1/account/api-keys", r#"{"name": "child"}"#)
        .await;
    assert_eq!(
        child.json()["restrictions"]["allowed_endpoints"],
        serde_json::json!(["* /v1/**"])
    );
}

#[tokio::test]
async fn a_key_changes_only_keys_it_could_have_created() {
    let server = server("patch_rules", None).await;
    let fence = Restrictions::none().endpoints(["GET /v1/**".parse().unwrap()]);
    let (admin, admin_client) = server
        .key(new("admin", Scope::Admin).restrictions(fence.clone()))
        .await;
    let (_, writer) = server.key(new("writer", Scope::Write)).await;
    for body in [r#"{"restrictions": null}"#, r#"{"name": "mine now"}"#] {
        let reply = writer
            .send("PATCH", &format!("/v1/account/api-keys/{}", admin.id), body)
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, "key_exceeds_caller"),
            "{body}: {}",
            reply.body
        );
    }
    let after = server.store.get("acct_1", &admin.id).await.unwrap();
    assert_eq!(after, admin, "unchanged");
    let fenced = admin_client.send("POST", "/v1/whoami", "").await;
    assert_eq!(
        (fenced.status, fenced.code().as_str()),
        (403, "endpoint_not_allowed"),
        "still fenced to GET"
    );
    // Its own kind it may change.
    let (reader, _) = server.key(new("reader", Scope::Read)).await;
    let reply = writer
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{}", reader.id),
            r#"{"name": "renamed"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
