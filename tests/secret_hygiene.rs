//! The plaintext key never reaches tracing output, at any level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::*;
use tower_api_keys::CachedVerifier;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_in_trace_output() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let app = app(live_layer(&keys, CachedVerifier::new(verifier.clone())));
    let unknown = keys
        .format
        .generate(&tower_api_keys::key::Environment::LIVE);
    let mut typo = keys.admin.expose_secret().to_owned();
    typo.replace_range(12..13, if &typo[12..13] == "x" { "y" } else { "x" });

    // Miss, hit, revoked, expired, wrong environment, unknown, malformed, scope failure:
    // each path answers as it should (so none silently stopped running).
    for (key, expected) in [
        (&keys.read, (200, "")),
        (&keys.read, (200, "")),
        (&keys.revoked, (401, "api_key_revoked")),
        (&keys.expired, (401, "api_key_expired")),
        (&keys.test_env, (401, "environment_mismatch")),
        (&unknown, (401, "invalid_api_key")),
    ] {
        let response = send(&app, get_with("/whoami", Some(&bearer(key)))).await;
        let status = response.status().as_u16();
        assert_eq!((status, code_of(response).await.as_str()), expected);
    }
    let response = send(&app, get_with("/whoami", Some(&format!("Bearer {typo}")))).await;
    assert_eq!(
        (response.status().as_u16(), code_of(response).await.as_str()),
        (401, "invalid_api_key")
    );
    let post = http::Request::post("/items")
        .header(http::header::AUTHORIZATION, bearer(&keys.read))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, post).await.status(), StatusCode::FORBIDDEN);
    // A backend failure, logged at error level.
    verifier.fail(true);
    let fresh = keys.write.expose_secret();
    let response = send(&app, get_with("/whoami", Some(&format!("Bearer {fresh}")))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        output.contains("api_key_auth"),
        "the capture works: {output}"
    );
    assert!(output.contains("outcome=\"accepted\"") || output.contains("outcome=accepted"));
    assert!(output.contains("api_key_revoked"));
    for key in [
        &keys.read,
        &keys.revoked,
        &keys.expired,
        &keys.test_env,
        &unknown,
        &keys.write,
    ] {
        let secret = key.expose_secret();
        // Neither the key, nor its random body, nor its hash.
        assert!(!output.contains(secret));
        assert!(!output.contains(&secret[8..]));
        assert!(!output.contains(&key.hash().to_hex()));
    }
    assert!(!output.contains(&typo[8..]));
}

/// Every management route and every rejection, with TRACE captured: the key is in no
/// log line, in no body but the one create (or rotate) response, in no `Debug` output;
/// its hash is in no body and no log line.
#[tokio::test(flavor = "current_thread")]
async fn no_key_or_hash_anywhere_across_every_route_and_rejection() {
    use axum::body::Body;
    use http::Request;
    use tower_api_keys::key::{Environment, KeyFormat};
    use tower_api_keys::manage::{self, KeyManager, NewKey};
    use tower_api_keys::record::AccountStanding;
    use tower_api_keys::restriction::Restrictions;
    use tower_api_keys::scope::Scope;
    use tower_api_keys::store::MemoryStore;
    use tower_api_keys::{ApiKeyLayer, KeyVerifier};

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let verifier = Counting::new(store.clone());
    let cache = CachedVerifier::new(verifier.clone());
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let create = |request: NewKey| {
        let manager = manager.clone();
        async move {
            manager
                .create_for_account("acct_1", Environment::LIVE, request)
                .await
                .unwrap()
        }
    };
    let admin = create(NewKey::named("admin").scopes(Scope::Admin)).await;
    let reader = create(NewKey::named("reader").scopes(Scope::Read)).await;
    let restricted = create(
        NewKey::named("restricted")
            .scopes(Scope::Admin)
            .restrictions(Restrictions::none().ips(["203.0.113.0/24".parse().unwrap()])),
    )
    .await;
    let past_due = create(NewKey::named("past due").scopes(Scope::Admin)).await;
    let app = routes()
        .nest("/v1/account", manage::router(manager.clone()))
        .layer(ApiKeyLayer::new(format.clone(), cache.clone()))
        .with_state(());

    let mut secrets = vec![
        admin.key.expose_secret().to_owned(),
        reader.key.expose_secret().to_owned(),
    ];
    secrets.push(restricted.key.expose_secret().to_owned());
    secrets.push(past_due.key.expose_secret().to_owned());
    let call = |method: &str, uri: &str, key: &str, body: &str| {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let app = app.clone();
        async move {
            let response = send(&app, request).await;
            let status = response.status().as_u16();
            (status, body_json(response).await.to_string())
        }
    };
    let mut bodies = Vec::new();
    let mut shown_once = Vec::new();

    let (status, body) = call(
        "POST",
        "/v1/account/api-keys",
        admin.key.expose_secret(),
        r#"{"name": "new"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new_id = created["id"].as_str().unwrap().to_owned();
    secrets.push(created["key"].as_str().unwrap().to_owned());
    shown_once.push(body);
    let (status, body) = call(
        "POST",
        &format!("/v1/account/api-keys/{new_id}/rotate"),
        admin.key.expose_secret(),
        r#"{"overlap_seconds": 60}"#,
    )
    .await;
    assert_eq!(status, 201);
    let rotated: serde_json::Value = serde_json::from_str(&body).unwrap();
    secrets.push(rotated["key"].as_str().unwrap().to_owned());
    shown_once.push(body);

    let admin_key = admin.key.expose_secret();
    // Each path answers as it should, so none silently stopped running.
    let code = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for (method, uri, key, body, expected) in [
        (
            "GET",
            "/v1/account/api-keys".to_owned(),
            admin_key,
            "",
            (200, ""),
        ),
        (
            "GET",
            format!("/v1/account/api-keys/{new_id}"),
            admin_key,
            "",
            (200, ""),
        ),
        (
            "PATCH",
            format!("/v1/account/api-keys/{new_id}"),
            admin_key,
            r#"{"name": "renamed"}"#,
            (200, ""),
        ),
        (
            "DELETE",
            format!("/v1/account/api-keys/{new_id}"),
            admin_key,
            "",
            (204, ""),
        ),
        (
            "POST",
            "/v1/account/api-keys".to_owned(),
            admin_key,
            "{broken",
            (400, "invalid_json"),
        ),
        (
            "POST",
            "/v1/account/api-keys".to_owned(),
            reader.key.expose_secret(),
            r#"{"name": "x"}"#,
            (403, "insufficient_scope"),
        ),
        (
            "GET",
            "/whoami".to_owned(),
            restricted.key.expose_secret(),
            "",
            (403, "ip_not_allowed"),
        ),
        (
            "GET",
            "/whoami".to_owned(),
            "sk_live_notakey",
            "",
            (401, "invalid_api_key"),
        ),
        (
            "GET",
            "/whoami".to_owned(),
            &secrets[4],
            "",
            (401, "api_key_revoked"),
        ),
    ] {
        let (status, body) = call(method, &uri, key, body).await;
        assert_eq!((status, code(&body).as_str()), expected, "{method} {uri}");
        bodies.push(body);
    }
    manager
        .set_standing(
            "acct_1",
            AccountStanding::past_due(time::OffsetDateTime::UNIX_EPOCH),
        )
        .await
        .unwrap();
    let (status, body) = call("GET", "/whoami", past_due.key.expose_secret(), "").await;
    assert_eq!((status, code(&body).as_str()), (402, "payment_required"));
    bodies.push(body);
    manager
        .set_standing("acct_1", AccountStanding::good())
        .await
        .unwrap();
    verifier.fail(true);
    cache.invalidate_all();
    let (status, body) = call("GET", "/whoami", admin_key, "").await;
    assert_eq!((status, code(&body).as_str()), (503, "auth_unavailable"));
    bodies.push(body);

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(output.contains("api_key_auth"));
    let debug = format!(
        "{admin:?} {:?} {:?}",
        verifier.verify(&admin.key.hash()).await,
        cache
    );
    for secret in &secrets {
        let hash = tower_api_keys::key::KeyHash::of(secret).to_hex();
        assert!(!output.contains(&secret[8..]), "a key in the trace output");
        assert!(!output.contains(&hash), "a hash in the trace output");
        assert!(!debug.contains(&secret[8..]), "a key in Debug output");
        for body in &bodies {
            assert!(
                !body.contains(&secret[8..]) && !body.contains(&hash),
                "a key or hash in {body}"
            );
        }
        for body in &shown_once {
            assert!(!body.contains(&hash), "a hash in {body}");
        }
    }
    // Each shown-once body holds exactly its own key.
    assert!(shown_once[0].contains(&secrets[4]) && !shown_once[0].contains(&secrets[5]));
    assert!(shown_once[1].contains(&secrets[5]));
}
