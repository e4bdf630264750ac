//! The audit trail over real HTTP and the CLI (SQLite), and on PostgreSQL: every
//! management route and CLI command writes exactly its event, a change that fails
//! writes none, an edited row breaks `apikeys audit verify` at that row, no event or
//! export line holds a key or a hash, `GET /audit-events` pages and filters within the
//! caller's account and environment, and concurrent changes keep one chain.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::raw_http::{Client, serve_with_peer};
use support::temp_db::TempDb;
use tower_api_keys::audit::{Action, AuditEvent, verify_chain};
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::limit::credits::Credits;
use tower_api_keys::manage::{self, KeyManager, KeyOwner, NewKey};
use tower_api_keys::record::{AccountLimits, AccountStanding};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

struct Server {
    /// Keys manage at `/v1/account`, the signed-in user `usr_1` at `/dashboard`.
    addr: SocketAddr,
    store: SqliteStore,
    manager: KeyManager<SqliteStore, SqliteStore>,
    admin: String,
    admin_id: KeyId,
    db: TempDb,
}

async fn server(name: &str, limit: usize) -> Server {
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path())
        .await
        .unwrap()
        .with_active_key_limit(limit);
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let admin = manager
        .create_for_account(
            "acct_1",
            Environment::LIVE,
            NewKey::named("admin").scopes(Scope::Admin),
        )
        .await
        .unwrap();
    let dashboard = manage::router(manager.clone()).layer(axum::middleware::from_fn(
        |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            request
                .extensions_mut()
                .insert(KeyOwner::new("acct_1", Environment::LIVE).user("usr_1"));
            next.run(request).await
        },
    ));
    let app = axum::Router::new()
        .nest("/v1/account", manage::router(manager.clone()))
        .layer(ApiKeyLayer::new(format, cache))
        .nest("/dashboard", dashboard);
    Server {
        addr: serve_with_peer(app).await,
        admin: admin.key.expose_secret().to_owned(),
        admin_id: admin.info.id,
        store,
        manager,
        db,
    }
}

async fn trail(store: &SqliteStore, account: &str) -> Vec<AuditEvent> {
    store.audit_trail(account).await.unwrap()
}

fn apikeys(db: &TempDb, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .arg("--database-url")
        .arg(db.path())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The one event a step wrote: its action, actor, key and changed fields.
fn only_new(before: usize, events: &[AuditEvent]) -> &AuditEvent {
    assert_eq!(
        events.len(),
        before + 1,
        "exactly one event: {:#?}",
        &events[before..]
    );
    &events[before]
}

fn fields(event: &AuditEvent) -> Vec<String> {
    let mut fields: Vec<String> = event.changes.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    fields
}

/// (what, method, path, body, the action, the fields it changes)
type Step<'a> = (&'a str, &'a str, String, &'a str, &'a str, Vec<&'a str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_command_writes_exactly_its_event() {
    let server = server("audit-table", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    let dashboard = Client::new(server.addr, "unused");
    let actor_key = format!("key:{}", server.admin_id);
    let mut secrets = vec![server.admin.clone()];
    let created = trail(&server.store, "acct_1").await;
    assert_eq!(created.len(), 1, "the bootstrap key's creation");
    assert_eq!(
        (created[0].action.as_str(), created[0].actor.as_str()),
        ("key.created", "operator")
    );

    // (what, request, expected action, actor, fields that changed)
    let post = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "ci", "scopes": ["read"]}"#,
        )
        .await;
    assert_eq!(post.status, 201, "{}", post.body);
    let id = post.json()["id"].as_str().unwrap().to_owned();
    secrets.push(post.json()["key"].as_str().unwrap().to_owned());
    let events = trail(&server.store, "acct_1").await;
    let event = only_new(1, &events);
    assert_eq!(event.action, "key.created");
    assert_eq!(event.actor, actor_key);
    assert_eq!(event.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(event.environment.as_deref(), Some("live"));
    assert_eq!(event.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        event.changes["name"],
        json!({"before": null, "after": "ci"})
    );
    assert!(event.changes.get("last_used_at").is_none());

    let steps: Vec<Step<'_>> = vec![
        (
            "rename",
            "PATCH",
            format!("/v1/account/api-keys/{id}"),
            r#"{"name": "ci-2"}"#,
            "key.updated",
            vec!["name"],
        ),
        (
            "restrict and limit",
            "PATCH",
            format!("/v1/account/api-keys/{id}"),
            r#"{"restrictions": {"allowed_ips": ["10.0.0.0/8"]},
                "ratelimits": [{"name": "requests", "limit": 5, "window_seconds": 60}],
                "credits": {"remaining": 10}}"#,
            "key.updated",
            vec!["credits", "ratelimits", "restrictions"],
        ),
        (
            "revoke",
            "DELETE",
            format!("/v1/account/api-keys/{id}"),
            "",
            "key.revoked",
            vec!["revoked_at"],
        ),
    ];
    for (what, method, path, body, action, changed) in steps {
        let before = trail(&server.store, "acct_1").await.len();
        let reply = admin.send(method, &path, body).await;
        assert!(
            reply.status < 300,
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        let events = trail(&server.store, "acct_1").await;
        let event = only_new(before, &events);
        assert_eq!(
            (event.action.as_str(), event.actor.as_str()),
            (action, actor_key.as_str()),
            "{what}"
        );
        assert_eq!(fields(event), changed, "{what}: {}", event.changes);
    }
    // Revoking a revoked key changes nothing and writes nothing.
    let before = trail(&server.store, "acct_1").await.len();
    assert_eq!(
        admin
            .send("DELETE", &format!("/v1/account/api-keys/{id}"), "")
            .await
            .status,
        204
    );
    assert_eq!(trail(&server.store, "acct_1").await.len(), before);

    // Rotation: one event, the new key's, naming the key it replaces.
    let before = trail(&server.store, "acct_1").await.len();
    let rotated = admin
        .send(
            "POST",
            &format!("/v1/account/api-keys/{}/rotate", server.admin_id),
            "",
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let new_admin = rotated.json()["key"].as_str().unwrap().to_owned();
    secrets.push(new_admin.clone());
    let events = trail(&server.store, "acct_1").await;
    let event = only_new(before, &events);
    assert_eq!(event.action, "key.rotated");
    assert_eq!(event.changes["replaces"]["after"], server.admin_id.as_str());

    // A signed-in user of the dashboard.
    let before = trail(&server.store, "acct_1").await.len();
    let owned = dashboard
        .send(
            "POST",
            "/dashboard/api-keys",
            r#"{"name": "from the dashboard"}"#,
        )
        .await;
    assert_eq!(owned.status, 201, "{}", owned.body);
    secrets.push(owned.json()["key"].as_str().unwrap().to_owned());
    let events = trail(&server.store, "acct_1").await;
    let event = only_new(before, &events);
    assert_eq!(
        (event.action.as_str(), event.actor.as_str()),
        ("key.created", "user:usr_1")
    );

    // Operators: standing, account limits, reissue.
    let operator_steps: Vec<(&str, Action)> = vec![
        ("standing", Action::StandingChanged),
        ("limits", Action::LimitsChanged),
        ("reissue", Action::Reissued),
    ];
    for (what, action) in operator_steps {
        let before = trail(&server.store, "acct_1").await.len();
        match action {
            Action::StandingChanged => server
                .manager
                .set_standing("acct_1", AccountStanding::default().with_grace_days(3))
                .await
                .unwrap(),
            Action::LimitsChanged => server
                .manager
                .set_account_limits("acct_1", AccountLimits::none().credits(Credits::new(5)))
                .await
                .unwrap(),
            _ => {
                let issued = server
                    .manager
                    .reissue(
                        "acct_1",
                        Environment::LIVE,
                        NewKey::named("from the dashboard"),
                    )
                    .await
                    .unwrap();
                secrets.push(issued.key.expose_secret().to_owned());
            }
        }
        let events = trail(&server.store, "acct_1").await;
        let event = only_new(before, &events);
        assert_eq!(
            (event.action.as_str(), event.actor.as_str()),
            (action.as_str(), "operator"),
            "{what}"
        );
    }
    server
        .manager
        .set_account_limits("acct_1", AccountLimits::none())
        .await
        .unwrap();

    // The CLI: create, revoke, account limits.
    let (ok, out, err) = apikeys(
        &server.db,
        &[
            "create",
            "--account",
            "acct_1",
            "--name",
            "cli",
            "--scopes",
            "read",
        ],
    );
    assert!(ok, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let (cli_id, cli_key) = (field("id"), field("key"));
    secrets.push(cli_key);
    let cli_steps: Vec<(Vec<&str>, &str)> = vec![
        (vec!["revoke", cli_id.as_str()], "key.revoked"),
        (
            vec!["account-limits", "--account", "acct_1", "--credits", "9"],
            "account.limits_changed",
        ),
    ];
    let events = trail(&server.store, "acct_1").await;
    let created = events.last().unwrap();
    assert_eq!(
        (created.action.as_str(), created.actor.as_str()),
        ("key.created", "cli")
    );
    for (args, action) in cli_steps {
        let before = trail(&server.store, "acct_1").await.len();
        let (ok, _, err) = apikeys(&server.db, &args);
        assert!(ok, "{args:?}: {err}");
        let events = trail(&server.store, "acct_1").await;
        let event = only_new(before, &events);
        assert_eq!(
            (event.action.as_str(), event.actor.as_str()),
            (action, "cli"),
            "{args:?}"
        );
    }

    // The chain holds, and no event, export line or listing holds a key or a hash.
    let events = trail(&server.store, "acct_1").await;
    assert_eq!(verify_chain(&events), Ok(()));
    let (ok, out, err) = apikeys(&server.db, &["audit", "verify"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("verified {} events", events.len())),
        "{out}"
    );
    let (ok, export, _) = apikeys(&server.db, &["audit", "export", "--account", "acct_1"]);
    assert!(ok);
    assert_eq!(export.lines().count(), events.len());
    let listed = Client::new(server.addr, &new_admin)
        .send("GET", "/v1/account/audit-events?limit=200", "")
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    for secret in &secrets {
        let hash = KeyFormat::new("sk").parse(secret).unwrap().hash();
        let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        for (what, text) in [("export", &export), ("route", &listed.body)] {
            assert!(!text.contains(secret.as_str()), "{what} holds a key");
            assert!(!text.contains(&secret[8..]), "{what} holds a key's body");
            assert!(!text.contains(&hex), "{what} holds a hash");
        }
    }
}

#[tokio::test]
async fn a_change_that_fails_writes_no_event() {
    let server = server("audit-fails", 2).await;
    let admin = Client::new(server.addr, &server.admin);
    let count = || async { trail(&server.store, "acct_1").await.len() };
    let first = admin
        .send("POST", "/v1/account/api-keys", r#"{"name": "one"}"#)
        .await;
    assert_eq!(first.status, 201);
    let before = count().await;
    // The active-key limit (2): refused inside the insert transaction.
    let refused = admin
        .send("POST", "/v1/account/api-keys", r#"{"name": "three"}"#)
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "api_key_limit_reached".to_owned())
    );
    assert_eq!(count().await, before);
    // A revoked key is not updated, nor rotated.
    let id = KeyId::new(first.json()["id"].as_str().unwrap());
    server.manager.revoke("acct_1", &id).await.unwrap();
    let before = count().await;
    let renamed = admin
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{id}"),
            r#"{"name": "x"}"#,
        )
        .await;
    assert_eq!(renamed.status, 404);
    let rotated = server.manager.rotate("acct_1", &id, Duration::ZERO).await;
    assert!(rotated.is_err());
    assert_eq!(count().await, before);
}

#[tokio::test]
async fn an_edited_row_breaks_verify_at_that_row() {
    let server = server("audit-tamper", 50).await;
    for name in ["a", "b", "c"] {
        server
            .manager
            .create_for_account("acct_1", Environment::LIVE, NewKey::named(name))
            .await
            .unwrap();
    }
    let events = trail(&server.store, "acct_1").await;
    assert_eq!(events.len(), 4);
    let (ok, _, err) = apikeys(&server.db, &["audit", "verify", "--account", "acct_1"]);
    assert!(ok, "{err}");
    sqlx::query("UPDATE audit_events SET actor = 'cli' WHERE id = ?")
        .bind(&events[2].id)
        .execute(server.store.pool())
        .await
        .unwrap();
    let (ok, _, err) = apikeys(&server.db, &["audit", "verify"]);
    assert!(!ok, "an edited event must fail the check");
    assert!(err.contains(&events[2].id), "names the edited event: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn audit_events_page_and_filter_within_the_callers_account_and_environment() {
    let server = server("audit-route", 50).await;
    let admin = Client::new(server.addr, &server.admin);
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = admin
            .send(
                "POST",
                "/v1/account/api-keys",
                &format!(r#"{{"name": "k{n}"}}"#),
            )
            .await;
        ids.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    admin
        .send("DELETE", &format!("/v1/account/api-keys/{}", ids[0]), "")
        .await;
    // Another account's and another environment's events are never listed.
    server
        .manager
        .create_for_account("acct_2", Environment::LIVE, NewKey::named("theirs"))
        .await
        .unwrap();
    server
        .manager
        .create_for_account("acct_1", Environment::TEST, NewKey::named("test key"))
        .await
        .unwrap();
    let page = |query: &str| {
        let (admin, query) = (&admin, query.to_owned());
        async move {
            let reply = admin
                .send("GET", &format!("/v1/account/audit-events{query}"), "")
                .await;
            assert_eq!(reply.status, 200, "{query}: {}", reply.body);
            reply.json()
        }
    };
    let all = page("").await;
    let names: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        7,
        "bootstrap, five creations, one revocation: {names:?}"
    );
    assert_eq!(names[0], "key.revoked", "newest first");
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["account_id"] == "acct_1" && e["environment"] == "live")
    );
    let first = page("?limit=3").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = page(&format!("?limit=3&cursor={cursor}")).await;
    let third = page(&format!(
        "?limit=3&cursor={}",
        second["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(third["data"].as_array().unwrap().len(), 1);
    assert_eq!(third["next_cursor"], Value::Null);
    let mut paged: Vec<Value> = Vec::new();
    for page in [&first, &second, &third] {
        paged.extend(page["data"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(paged, *all["data"].as_array().unwrap());
    let of_key = page(&format!("?key_id={}", ids[0])).await;
    assert_eq!(of_key["data"].as_array().unwrap().len(), 2);
    let revoked = page("?action=key.revoked").await;
    assert_eq!(revoked["data"].as_array().unwrap().len(), 1);
    let future = page("?from=2999-01-01T00:00:00Z").await;
    assert!(future["data"].as_array().unwrap().is_empty());
    for bad in [
        "?action=key.stolen",
        "?from=yesterday",
        "?cursor=-1",
        "?limit=0",
        "?color=red",
    ] {
        let reply = admin
            .send("GET", &format!("/v1/account/audit-events{bad}"), "")
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "invalid_query".to_owned()),
            "{bad}"
        );
    }
    // The router's scope: a read key may not read the trail.
    let reader = server
        .manager
        .create_for_account(
            "acct_1",
            Environment::LIVE,
            NewKey::named("reader").scopes(Scope::Read),
        )
        .await
        .unwrap();
    let reply = Client::new(server.addr, reader.key.expose_secret())
        .send("GET", "/v1/account/audit-events", "")
        .await;
    assert_eq!(reply.status, 403);
}

/// The memory store keeps the same chain.
#[tokio::test]
async fn the_memory_store_chains_its_events_too() {
    let store = tower_api_keys::MemoryStore::new();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        KeyFormat::new("sk"),
    );
    let created = manager
        .create_for_account("acct", Environment::LIVE, NewKey::named("k"))
        .await
        .unwrap();
    manager
        .update(
            "acct",
            &created.info.id,
            tower_api_keys::store::KeyChanges::name("k2"),
        )
        .await
        .unwrap();
    manager.revoke("acct", &created.info.id).await.unwrap();
    manager.revoke("acct", &created.info.id).await.unwrap();
    let trail = store.audit_trail("acct").await.unwrap();
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.created", "key.updated", "key.revoked"]);
    assert_eq!(verify_chain(&trail), Ok(()));
    let page = store
        .audit_events(&tower_api_keys::audit::AuditQuery::account("acct"))
        .await
        .unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.events[0].action, "key.revoked");
}
