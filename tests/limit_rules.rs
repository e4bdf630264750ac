//! Rate limits and credits through the management routes (real HTTP, SQLite): the
//! shapes POST and PATCH accept and refuse (422 with stable codes, nothing written),
//! the views, and the rules for keys minting keys (no higher rate limit, no more
//! credits, no limit lifted), rotation moving a balance instead of doubling it.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use serde_json::json;
use support::raw_http::{Client, serve};
use support::temp_db::TempDb;
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::{Credits, Refill};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

struct Server {
    addr: std::net::SocketAddr,
    store: SqliteStore,
    manager: KeyManager<SqliteStore, SqliteStore>,
    _db: TempDb,
}

async fn server(name: &str) -> Server {
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let app = axum::Router::new()
        .nest("/v1/account", manage::router(manager.clone()))
        .layer(ApiKeyLayer::new(format, cache));
    Server {
        addr: serve(app).await,
        store,
        manager,
        _db: db,
    }
}

fn per_minute(limit: u32) -> RateLimit {
    RateLimit::new("requests", limit, Duration::from_secs(60)).unwrap()
}

async fn key(server: &Server, request: NewKey) -> (String, KeyId) {
    let created = server
        .manager
        .create_for_account("acct_1", Environment::LIVE, request)
        .await
        .unwrap();
    (created.key.expose_secret().to_owned(), created.info.id)
}

async fn active_keys(server: &Server) -> usize {
    server.store.list("acct_1").await.unwrap().len()
}

#[tokio::test]
async fn limits_and_credits_are_created_shown_and_changed() {
    let server = server("limits-crud").await;
    let (admin, _) = key(&server, NewKey::named("admin").scopes(Scope::Admin)).await;
    let admin = Client::new(server.addr, &admin);
    let created = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "metered", "ratelimits": [{"name": "requests", "limit": 100, "window_seconds": 60}],
                "credits": {"remaining": 1000, "refill": {"interval": "monthly", "amount": 1000, "day": 31}}}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(
        created["ratelimits"],
        json!([{"name": "requests", "limit": 100, "window_seconds": 60}])
    );
    assert_eq!(
        created["credits"],
        json!({"remaining": 1000, "refill": {"interval": "monthly", "amount": 1000, "day": 31}})
    );
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/account/api-keys/{id}");
    let changed = admin
        .send(
            "PATCH",
            &path,
            r#"{"credits": {"remaining": 7}, "ratelimits": []}"#,
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let shown = admin.send("GET", &path, "").await.json();
    assert_eq!(shown["credits"], json!({"remaining": 7, "refill": null}));
    assert_eq!(shown["ratelimits"], json!([]));
    let removed = admin.send("PATCH", &path, r#"{"credits": null}"#).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        admin.send("GET", &path, "").await.json()["credits"],
        json!(null)
    );
}

#[tokio::test]
async fn bad_shapes_are_422_with_stable_codes_and_nothing_is_written() {
    let server = server("limits-shapes").await;
    let (admin, _) = key(&server, NewKey::named("admin").scopes(Scope::Admin)).await;
    let admin = Client::new(server.addr, &admin);
    let limit = |name: &str, limit: i64, window: i64| json!({"name": name, "limit": limit, "window_seconds": window});
    let six: Vec<_> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|name| limit(name, 1, 1))
        .collect();
    let cases = [
        (
            json!({"ratelimits": [limit("requests", -1, 60)]}),
            "invalid_ratelimits",
        ),
        (
            json!({"ratelimits": [limit("requests", 0, 60)]}),
            "invalid_ratelimits",
        ),
        (
            json!({"ratelimits": [limit("requests", 1, 0)]}),
            "invalid_ratelimits",
        ),
        (json!({"ratelimits": six}), "invalid_ratelimits"),
        (
            json!({"ratelimits": [limit("requests", 1, 1), limit("requests", 2, 2)]}),
            "invalid_ratelimits",
        ),
        (
            json!({"ratelimits": [limit("two words", 1, 1)]}),
            "invalid_ratelimits",
        ),
        (
            json!({"ratelimits": {"name": "requests"}}),
            "invalid_ratelimits",
        ),
        (json!({"credits": {"remaining": -5}}), "invalid_credits"),
        (json!({"credits": 5}), "invalid_credits"),
        (
            json!({"credits": {"remaining": 5, "refill": {"interval": "weekly", "amount": 5}}}),
            "invalid_credits",
        ),
        (
            json!({"credits": {"remaining": 5, "refill": {"interval": "monthly", "amount": 5, "day": 32}}}),
            "invalid_credits",
        ),
        (json!({"credits": {"remaining": 1e300}}), "invalid_credits"),
        (
            json!({"credits": {"remaining": 5, "extra": 1}}),
            "invalid_credits",
        ),
    ];
    let before = active_keys(&server).await;
    let (_, target) = key(&server, NewKey::named("target")).await;
    let path = format!("/v1/account/api-keys/{target}");
    for (fields, code) in cases {
        let mut body = fields.clone();
        body["name"] = json!("bad");
        let refused = admin
            .send("POST", "/v1/account/api-keys", &body.to_string())
            .await;
        assert_eq!(
            (refused.status, refused.code()),
            (422, code.to_owned()),
            "POST {fields}"
        );
        let refused = admin.send("PATCH", &path, &fields.to_string()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (422, code.to_owned()),
            "PATCH {fields}"
        );
    }
    assert_eq!(
        active_keys(&server).await,
        before + 1,
        "nothing was created"
    );
    let unchanged = server.store.get("acct_1", &target).await.unwrap();
    assert!(unchanged.ratelimits.is_empty() && unchanged.credits.is_none());
}

#[tokio::test]
async fn a_key_never_mints_a_key_with_more_than_its_limits() {
    let server = server("limits-minting").await;
    let (limited, limited_id) = key(
        &server,
        NewKey::named("limited")
            .scopes(Scope::Admin)
            .ratelimits(vec![per_minute(100)])
            .credits(Credits::new(100)),
    )
    .await;
    let (_, broad) = key(&server, NewKey::named("broad").scopes(Scope::Read)).await;
    let client = Client::new(server.addr, &limited);
    let post = |body: serde_json::Value| {
        let client = &client;
        async move {
            client
                .send("POST", "/v1/account/api-keys", &body.to_string())
                .await
        }
    };
    let limit = |limit: u32, window: u32| json!({"name": "requests", "limit": limit, "window_seconds": window});
    let refusals = [
        json!({"name": "x", "ratelimits": [limit(200, 60)]}),
        json!({"name": "x", "ratelimits": [limit(100, 30)]}),
        json!({"name": "x", "ratelimits": []}),
        json!({"name": "x", "ratelimits": [{"name": "other", "limit": 1, "window_seconds": 60}]}),
        json!({"name": "x", "credits": {"remaining": 101}}),
        json!({"name": "x", "credits": {"remaining": 1, "refill": {"interval": "daily", "amount": 1}}}),
    ];
    let before = active_keys(&server).await;
    for body in refusals {
        let refused = post(body.clone()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "key_exceeds_caller".to_owned()),
            "{body}: {}",
            refused.body
        );
    }
    assert_eq!(active_keys(&server).await, before, "nothing was created");

    // Without limits given, the new key inherits the caller's rate limits; credits a key
    // gives out of its own balance (a transfer: minting keys never multiplies it), so
    // by default none.
    let balance = |server: &Server, id: KeyId| {
        let store = server.store.clone();
        async move {
            store
                .get("acct_1", &id)
                .await
                .unwrap()
                .credits
                .unwrap()
                .remaining
        }
    };
    let inherited = post(json!({"name": "child"})).await;
    assert_eq!(inherited.status, 201, "{}", inherited.body);
    let inherited = inherited.json();
    assert_eq!(inherited["ratelimits"], json!([limit(100, 60)]));
    assert_eq!(
        inherited["credits"],
        json!({"remaining": 0, "refill": null})
    );
    let before = balance(&server, limited_id.clone()).await;
    let narrower =
        post(json!({"name": "narrow", "ratelimits": [limit(5, 60)], "credits": {"remaining": 30}}))
            .await;
    assert_eq!(narrower.status, 201, "{}", narrower.body);
    assert_eq!(narrower.json()["credits"]["remaining"], 30);
    let after = balance(&server, limited_id.clone()).await;
    assert!(
        after + 30 <= before,
        "the 30 came out of the creator's balance ({before} → {after})"
    );
    // Asking for more than the creator's balance still holds is refused, and nothing
    // is taken from it.
    let greedy = post(json!({"name": "greedy", "credits": {"remaining": after + 1}})).await;
    assert_eq!(
        (greedy.status, greedy.code()),
        (403, "key_exceeds_caller".to_owned()),
        "{}",
        greedy.body
    );
    assert!(balance(&server, limited_id.clone()).await <= after);

    // A key lowers balances, never raises one, its own included.
    let narrow_id = narrower.json()["id"].as_str().unwrap().to_owned();
    let narrow_path = format!("/v1/account/api-keys/{narrow_id}");
    let raised = client
        .send("PATCH", &narrow_path, r#"{"credits": {"remaining": 31}}"#)
        .await;
    assert_eq!(
        (raised.status, raised.code()),
        (403, "key_exceeds_caller".to_owned())
    );
    let raised = client
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{limited_id}"),
            r#"{"credits": {"remaining": 100}}"#,
        )
        .await;
    assert_eq!(
        (raised.status, raised.code()),
        (403, "key_exceeds_caller".to_owned()),
        "a key cannot refill itself"
    );
    let lowered = client
        .send("PATCH", &narrow_path, r#"{"credits": {"remaining": 10}}"#)
        .await;
    assert_eq!(lowered.status, 200, "{}", lowered.body);

    // Nor lifts them through PATCH, nor obtains an unlimited key through rotation.
    let child = inherited["id"].as_str().unwrap();
    let lifted = client
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{child}"),
            r#"{"ratelimits": []}"#,
        )
        .await;
    assert_eq!(
        (lifted.status, lifted.code()),
        (403, "key_exceeds_caller".to_owned())
    );
    let lifted = client
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{child}"),
            r#"{"credits": null}"#,
        )
        .await;
    assert_eq!(
        (lifted.status, lifted.code()),
        (403, "key_exceeds_caller".to_owned())
    );
    let rotated = client
        .send("POST", &format!("/v1/account/api-keys/{broad}/rotate"), "")
        .await;
    assert_eq!(
        (rotated.status, rotated.code()),
        (403, "key_exceeds_caller".to_owned())
    );
    // Itself, yes: the rotation moves its balance, it does not double it.
    let rotated = client
        .send(
            "POST",
            &format!("/v1/account/api-keys/{limited_id}/rotate"),
            r#"{"overlap_seconds": 3600}"#,
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let stored = server.store.get("acct_1", &limited_id).await;
    let moved = rotated.json()["credits"]["remaining"].as_u64().unwrap();
    assert!(moved <= after, "{moved}");
    let new_id = KeyId::new(rotated.json()["id"].as_str().unwrap());
    let new = server.store.get("acct_1", &new_id).await.unwrap();
    assert_eq!(new.credits.map(|c| c.remaining), Some(moved));
    let old = stored.unwrap();
    assert_eq!(
        old.credits,
        Some(Credits::new(0)),
        "the old key keeps none, and no refill"
    );
}

/// Rotating a key with a refill leaves the old key (working during the overlap) with
/// no balance and no refill: the refill moves with the balance.
#[tokio::test]
async fn rotation_moves_the_refill_too() {
    let server = server("limits-rotate-refill").await;
    let (_, id) = key(
        &server,
        NewKey::named("refilled").credits(Credits::new(40).with_refill(Refill::daily(40))),
    )
    .await;
    let rotated = server
        .manager
        .rotate("acct_1", &id, Duration::from_secs(3_600))
        .await
        .unwrap();
    assert_eq!(
        rotated.info.credits,
        Some(Credits::new(40).with_refill(Refill::daily(40)))
    );
    let old = server.store.get("acct_1", &id).await.unwrap();
    assert_eq!(old.credits, Some(Credits::new(0)));
    let new = server.store.get("acct_1", &rotated.info.id).await.unwrap();
    assert_eq!(new.credits.map(|c| c.remaining), Some(40));
}
