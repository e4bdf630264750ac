//! The request-time rules through the layer: billing standing, project locks,
//! restrictions (over real HTTP for client addresses), rotation.
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use support::raw_http::{Client, raw_get};
use support::{code_of, get_with, send};
use time::OffsetDateTime;
use tower_api_keys::client_ip::PeerAddr;
use tower_api_keys::clock::ManualClock;
use tower_api_keys::key::{ApiKey, Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::policy::ProjectFromPath;
use tower_api_keys::record::AccountStanding;
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::MemoryStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal};

struct Setup {
    manager: KeyManager<MemoryStore, MemoryStore>,
    cache: CachedVerifier<MemoryStore>,
    format: KeyFormat,
}

fn setup() -> Setup {
    let store = MemoryStore::new();
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(store, cache.clone(), format.clone());
    Setup {
        manager,
        cache,
        format,
    }
}

impl Setup {
    async fn key(&self, account: &str, request: NewKey) -> ApiKey {
        self.manager
            .create_for_account(account, Environment::LIVE, request.scopes(Scope::Admin))
            .await
            .unwrap()
            .key
    }

    fn layer(&self) -> ApiKeyLayer<MemoryStore> {
        ApiKeyLayer::new(self.format.clone(), self.cache.clone())
    }
}

fn routes() -> Router<()> {
    Router::new()
        .route(
            "/v1/whoami",
            get(|p: Principal| async move { axum::Json(p) }),
        )
        .route("/v1/projects/{project}/jobs", get(|| async { "jobs" }))
        .route(
            "/v1/users/{id}",
            get(|| async { "user" }).delete(|| async { "deleted" }),
        )
}

fn auth(key: &ApiKey) -> String {
    format!("Bearer {}", key.expose_secret())
}

#[tokio::test]
async fn past_due_accounts_get_402_after_the_grace_period_and_clearing_takes_effect_at_once() {
    let setup = setup();
    let key = setup.key("acct_1", NewKey::named("k")).await;
    let failed = OffsetDateTime::now_utc() - time::Duration::days(30);
    let clock = Arc::new(ManualClock::new(failed));
    let app = routes()
        .layer(setup.layer().clock(clock.clone()))
        .with_state(());
    let whoami = || get_with("/v1/whoami", Some(&auth(&key)));
    assert_eq!(
        send(&app, whoami()).await.status(),
        StatusCode::OK,
        "cached while in good standing"
    );

    setup
        .manager
        .set_standing("acct_1", AccountStanding::past_due(failed))
        .await
        .unwrap();
    let week = time::Duration::days(7);
    let second = time::Duration::seconds(1);
    clock.set(failed + week - second);
    assert_eq!(
        send(&app, whoami()).await.status(),
        StatusCode::OK,
        "within grace"
    );
    clock.set(failed + week + second);
    let response = send(&app, whoami()).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    assert_eq!(code_of(response).await, "payment_required");

    // A longer grace period for this account: served again.
    setup
        .manager
        .set_standing(
            "acct_1",
            AccountStanding::past_due(failed).with_grace_days(10),
        )
        .await
        .unwrap();
    assert_eq!(send(&app, whoami()).await.status(), StatusCode::OK);

    // Past due again, then cleared: the very next request is served, whatever the TTL.
    setup
        .manager
        .set_standing("acct_1", AccountStanding::past_due(failed - week))
        .await
        .unwrap();
    assert_eq!(
        send(&app, whoami()).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    setup
        .manager
        .set_standing("acct_1", AccountStanding::good())
        .await
        .unwrap();
    assert_eq!(send(&app, whoami()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn project_locked_keys_only_reach_their_project() {
    let setup = setup();
    let locked = setup
        .key("acct_1", NewKey::named("a").project("proj_a"))
        .await;
    let free = setup.key("acct_1", NewKey::named("any")).await;
    let app = routes()
        .layer(setup.layer().projects(ProjectFromPath::after("projects")))
        .with_state(());
    let status = |key: &ApiKey, path: &str| {
        let (app, request) = (app.clone(), get_with(path, Some(&auth(key))));
        async move { send(&app, request).await }
    };
    assert_eq!(
        status(&locked, "/v1/projects/proj_a/jobs").await.status(),
        StatusCode::OK
    );
    let refused = status(&locked, "/v1/projects/proj_b/jobs").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(code_of(refused).await, "project_forbidden");
    assert_eq!(
        status(&locked, "/v1/whoami").await.status(),
        StatusCode::OK,
        "account routes"
    );
    assert_eq!(
        status(&free, "/v1/projects/proj_b/jobs").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn referrer_and_endpoint_restrictions() {
    let setup = setup();
    let restrictions: Restrictions = serde_json::from_str(
        r#"{"allowed_referrers": ["https://app.example.com", "*.example.org"], "allowed_endpoints": ["GET /v1/users/*"]}"#,
    )
    .unwrap();
    let key = setup
        .key(
            "acct_1",
            NewKey::named("browser").restrictions(restrictions),
        )
        .await;
    let app = routes().layer(setup.layer()).with_state(());
    let request = |method: &str, path: &str, origin: Option<&str>| {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", auth(&key));
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    };
    let ok = send(
        &app,
        request("GET", "/v1/users/usr_1", Some("https://app.example.com")),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = send(
        &app,
        request("GET", "/v1/users/usr_1", Some("https://eu.example.org")),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    for (method, path, origin, code) in [
        (
            "GET",
            "/v1/users/usr_1",
            Some("https://evil.example.com"),
            "referrer_not_allowed",
        ),
        ("GET", "/v1/users/usr_1", None, "referrer_not_allowed"),
        (
            "DELETE",
            "/v1/users/usr_1",
            Some("https://app.example.com"),
            "endpoint_not_allowed",
        ),
        (
            "GET",
            "/v1/whoami",
            Some("https://app.example.com"),
            "endpoint_not_allowed",
        ),
    ] {
        let response = send(&app, request(method, path, origin)).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} {origin:?}"
        );
        assert_eq!(code_of(response).await, code);
    }
}

#[tokio::test]
async fn ip_restrictions_use_the_connection_and_believe_only_trusted_proxies() {
    let setup = setup();
    let elsewhere = Restrictions::none().ips(["203.0.113.0/24".parse().unwrap()]);
    let loopback =
        Restrictions::none().ips(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
    let far = setup
        .key("acct_1", NewKey::named("far").restrictions(elsewhere))
        .await;
    let near = setup
        .key("acct_1", NewKey::named("near").restrictions(loopback))
        .await;

    let serve = |layer: ApiKeyLayer<MemoryStore>| async move {
        let app = routes().layer(layer).with_state(());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        addr
    };
    let direct = serve(setup.layer()).await;
    let refused = Client::new(direct, far.expose_secret())
        .send("GET", "/v1/whoami", "")
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "ip_not_allowed".into())
    );
    assert_eq!(
        Client::new(direct, near.expose_secret())
            .send("GET", "/v1/whoami", "")
            .await
            .status,
        200
    );

    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let forged_auth = format!("Authorization: Bearer {}", far.expose_secret());
    let forged = raw_get(
        direct,
        "/v1/whoami",
        &[forged_auth.as_bytes(), b"X-Forwarded-For: 203.0.113.5"],
    )
    .await;
    assert_eq!(
        (forged.status, forged.code()),
        (403, "ip_not_allowed".into())
    );

    // Behind a trusted proxy (here: loopback), the right-most untrusted entry counts.
    let proxied = serve(
        setup
            .layer()
            .trusted_proxies(["127.0.0.1/32".parse().unwrap()]),
    )
    .await;
    let through_proxy = raw_get(
        proxied,
        "/v1/whoami",
        &[
            forged_auth.as_bytes(),
            b"X-Forwarded-For: 198.51.100.1, 203.0.113.5",
        ],
    )
    .await;
    assert_eq!(through_proxy.status, 200);
    let spoofed_left = raw_get(
        proxied,
        "/v1/whoami",
        &[
            forged_auth.as_bytes(),
            b"X-Forwarded-For: 203.0.113.5, 198.51.100.1",
        ],
    )
    .await;
    assert_eq!(
        (spoofed_left.status, spoofed_left.code()),
        (403, "ip_not_allowed".into())
    );
}

#[tokio::test]
async fn ipv6_peers_and_ranges() {
    let setup = setup();
    let v6 = Restrictions::none().ips(["2001:db8:abcd::/48".parse().unwrap()]);
    let key = setup
        .key("acct_1", NewKey::named("v6").restrictions(v6))
        .await;
    let app = routes().layer(setup.layer()).with_state(());
    for (peer, status) in [
        ("[2001:db8:abcd:1::9]:443", StatusCode::OK),
        ("[2001:db8:ffff::1]:443", StatusCode::FORBIDDEN),
    ] {
        let mut request = get_with("/v1/whoami", Some(&auth(&key)));
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        assert_eq!(send(&app, request).await.status(), status, "{peer}");
    }
}

#[tokio::test]
async fn restrictions_set_at_creation_and_by_patch_over_http() {
    let setup = setup();
    let admin = setup.key("acct_1", NewKey::named("admin")).await;
    let app = routes()
        .nest("/v1/account", manage::router(setup.manager.clone()))
        .layer(setup.layer());
    let addr = support::raw_http::serve(app).await;
    let admin = Client::new(addr, admin.expose_secret());

    let created = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "users only", "restrictions": {"allowed_endpoints": ["GET /v1/users/*"]}}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(
        created["restrictions"]["allowed_endpoints"],
        serde_json::json!(["GET /v1/users/*"])
    );
    let user = Client::new(addr, created["key"].as_str().unwrap());
    assert_eq!(user.send("GET", "/v1/users/usr_1", "").await.status, 200);
    assert_eq!(
        user.send("GET", "/v1/whoami", "").await.code(),
        "endpoint_not_allowed"
    );

    let id = created["id"].as_str().unwrap();
    let patched = admin
        .send(
            "PATCH",
            &format!("/v1/account/api-keys/{id}"),
            r#"{"restrictions": {"allowed_endpoints": ["GET /v1/whoami"]}}"#,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        user.send("GET", "/v1/whoami", "").await.status,
        200,
        "effective at once"
    );
    assert_eq!(
        user.send("GET", "/v1/users/usr_1", "").await.code(),
        "endpoint_not_allowed"
    );

    let bad = admin
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "x", "restrictions": {"allowed_ips": ["not an ip"]}}"#,
        )
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (422, "invalid_restrictions".into())
    );
    let empty = admin
        .send("PATCH", &format!("/v1/account/api-keys/{id}"), "{}")
        .await;
    assert_eq!((empty.status, empty.code()), (422, "invalid_body".into()));
}

#[tokio::test]
async fn rotation_keeps_the_old_key_until_the_overlap_ends() {
    let setup = setup();
    let admin = setup.key("acct_1", NewKey::named("admin")).await;
    let app = routes()
        .nest("/v1/account", manage::router(setup.manager.clone()))
        .layer(setup.layer());
    let addr = support::raw_http::serve(app).await;
    let admin_client = Client::new(addr, admin.expose_secret());
    let old = admin_client
        .send(
            "POST",
            "/v1/account/api-keys",
            r#"{"name": "integration", "scopes": ["read"]}"#,
        )
        .await
        .json();
    let old_client = Client::new(addr, old["key"].as_str().unwrap());
    assert_eq!(old_client.send("GET", "/v1/whoami", "").await.status, 200);

    let id = old["id"].as_str().unwrap();
    let rotated = admin_client
        .send(
            "POST",
            &format!("/v1/account/api-keys/{id}/rotate"),
            r#"{"overlap_seconds": 5}"#,
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let rotated = rotated.json();
    assert_eq!(rotated["rotated_from"], id);
    assert_eq!(
        (rotated["name"].clone(), rotated["scopes"].clone()),
        (old["name"].clone(), old["scopes"].clone())
    );
    assert_ne!(rotated["key"], old["key"]);
    let new_client = Client::new(addr, rotated["key"].as_str().unwrap());
    assert_eq!(new_client.send("GET", "/v1/whoami", "").await.status, 200);
    assert_eq!(
        old_client.send("GET", "/v1/whoami", "").await.status,
        200,
        "during the overlap"
    );

    // Served until the overlap ends, then refused as expired.
    support::eventually(
        "the end of the overlap",
        Duration::from_secs(10),
        async || {
            let reply = old_client.send("GET", "/v1/whoami", "").await;
            match reply.status {
                200 => false,
                _ => {
                    assert_eq!(
                        (reply.status, reply.code()),
                        (401, "api_key_expired".into())
                    );
                    true
                }
            }
        },
    )
    .await;
    assert_eq!(new_client.send("GET", "/v1/whoami", "").await.status, 200);

    // Without overlap, the old key is revoked at once.
    let new_id = rotated["id"].as_str().unwrap();
    let again = admin_client
        .send("POST", &format!("/v1/account/api-keys/{new_id}/rotate"), "")
        .await;
    assert_eq!(again.status, 201);
    let revoked = new_client.send("GET", "/v1/whoami", "").await;
    assert_eq!(
        (revoked.status, revoked.code()),
        (401, "api_key_revoked".into())
    );
    let gone = admin_client
        .send("POST", &format!("/v1/account/api-keys/{new_id}/rotate"), "")
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (404, "api_key_not_found".into())
    );
}
