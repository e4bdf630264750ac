//! Every row of the response table, through `oneshot` on an axum `Router`.

mod support;

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, StatusCode};
use support::*;
use tower_api_keys::error::ErrorBody;
use tower_api_keys::guard::ScopeGuardLayer;
use tower_api_keys::scope::Admin;
use tower_api_keys::{ApiKeyLayer, AuthError, CachedVerifier};

async fn expect(
    app: &axum::Router,
    request: Request<Body>,
    status: StatusCode,
    code: &str,
    challenge: Option<&str>,
) {
    let response = send(app, request).await;
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap()),
        challenge
    );
    assert_eq!(code_of(response).await, code);
}

#[tokio::test]
async fn accepted_keys_reach_the_handler_with_their_principal() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.read)))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let principal = body_json(response).await;
    assert_eq!(principal["key_name"], "read");
    assert_eq!(principal["account_id"], "acct_1");
    assert_eq!(principal["scopes"], serde_json::json!(["read"]));
    assert_eq!(principal["environment"], "live");
    assert!(principal["key_id"].as_str().unwrap().starts_with("ak_"));
}

#[tokio::test]
async fn every_rejection_has_its_status_code_and_challenge() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let invalid_token = Some(r#"Bearer realm="api", error="invalid_token""#);
    let invalid_request = Some(r#"Bearer realm="api", error="invalid_request""#);

    expect(
        &app,
        get_with("/whoami", None),
        StatusCode::UNAUTHORIZED,
        "missing_api_key",
        Some(r#"Bearer realm="api""#),
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some("Basic dXNlcjpwYXNz")),
        StatusCode::UNAUTHORIZED,
        "missing_api_key",
        Some(r#"Bearer realm="api""#),
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some("Bearer ")),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        invalid_request,
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some("Bearer a b")),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        invalid_request,
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some("Bearer sk_live_nope")),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        invalid_token,
    )
    .await;
    // Well-formed, valid checksum, but unknown to the store.
    let unknown = keys
        .format
        .generate(&tower_api_keys::key::Environment::LIVE);
    expect(
        &app,
        get_with("/whoami", Some(&bearer(&unknown))),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        invalid_token,
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some(&bearer(&keys.revoked))),
        StatusCode::UNAUTHORIZED,
        "api_key_revoked",
        invalid_token,
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some(&bearer(&keys.expired))),
        StatusCode::UNAUTHORIZED,
        "api_key_expired",
        invalid_token,
    )
    .await;
    expect(
        &app,
        get_with("/whoami", Some(&bearer(&keys.test_env))),
        StatusCode::UNAUTHORIZED,
        "environment_mismatch",
        invalid_token,
    )
    .await;

    let post = Request::post("/items")
        .header(AUTHORIZATION, bearer(&keys.read))
        .body(Body::empty())
        .unwrap();
    expect(
        &app,
        post,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="write""#),
    )
    .await;
}

#[tokio::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let request = Request::get("/whoami")
        .header(AUTHORIZATION, bearer(&keys.read))
        .header(AUTHORIZATION, bearer(&keys.admin))
        .body(Body::empty())
        .unwrap();
    let response = send(&app, request).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code_of(response).await, "invalid_request");
}

#[tokio::test]
async fn the_environment_rule_works_both_ways() {
    let keys = keys().await;
    let test_deployment = app(ApiKeyLayer::new(
        keys.format.clone(),
        CachedVerifier::new(keys.store.clone()),
    )
    .environment(tower_api_keys::key::Environment::TEST));
    let response = send(
        &test_deployment,
        get_with("/whoami", Some(&bearer(&keys.read))),
    )
    .await;
    assert_eq!(code_of(response).await, "environment_mismatch");
    let response = send(
        &test_deployment,
        get_with("/whoami", Some(&bearer(&keys.test_env))),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // No deployment environment: both are accepted.
    let any = app(ApiKeyLayer::new(
        keys.format.clone(),
        CachedVerifier::new(keys.store.clone()),
    ));
    for key in [&keys.read, &keys.test_env] {
        assert_eq!(
            send(&any, get_with("/whoami", Some(&bearer(key))))
                .await
                .status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn scopes_nest_in_the_extractors() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let post = |key| {
        Request::post("/items")
            .header(AUTHORIZATION, bearer(key))
            .body(Body::empty())
            .unwrap()
    };
    for key in [&keys.read, &keys.write, &keys.admin] {
        assert_eq!(
            send(&app, get_with("/items", Some(&bearer(key))))
                .await
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, post(&keys.read)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&app, post(&keys.write)).await.status(), StatusCode::OK);
    assert_eq!(send(&app, post(&keys.admin)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn backend_failure_is_503_with_retry_after_and_no_backend_text() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    verifier.fail(true);
    let app = app(live_layer(&keys, CachedVerifier::new(verifier.clone())));
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.read)))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "5");
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    let body = body_json(response).await.to_string();
    assert!(body.contains("auth_unavailable"));
    assert!(!body.contains("5432"), "backend error text leaked: {body}");

    // The failure was not cached: once the backend is back, the key works.
    verifier.fail(false);
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.read)))).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn optional_mode_lets_anonymous_requests_through_but_not_bad_keys() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())).optional());
    let response = send(&app, get_with("/maybe", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await, "anonymous");

    let response = send(&app, get_with("/maybe", Some(&bearer(&keys.read)))).await;
    assert!(
        body_json(response)
            .await
            .as_str()
            .unwrap()
            .starts_with("ak_")
    );

    let response = send(&app, get_with("/maybe", Some("Bearer sk_live_bad"))).await;
    assert_eq!(code_of(response).await, "invalid_api_key");

    // A handler that needs a principal answers 401 to the anonymous caller.
    let response = send(&app, get_with("/whoami", None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(response).await, "missing_api_key");
}

#[tokio::test]
async fn without_the_layer_extractors_answer_500_naming_the_layer() {
    let app = routes().with_state(());
    for uri in ["/whoami", "/maybe", "/items"] {
        let response = send(&app, get_with(uri, None)).await;
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{uri}"
        );
        assert!(
            body_json(response)
                .await
                .as_str()
                .unwrap()
                .contains("ApiKeyLayer")
        );
    }
}

#[tokio::test]
async fn custom_realm_and_body_format_apply_to_layer_and_extractor_rejections() {
    let keys = keys().await;
    let layer = live_layer(&keys, CachedVerifier::new(keys.store.clone()))
        .realm("bytestack")
        .error_format(|error: &AuthError| {
            let body = serde_json::json!({"success": false, "error": error.code()});
            ErrorBody::json(Bytes::from(body.to_string()))
        });
    let app = app(layer);

    let response = send(&app, get_with("/whoami", None)).await;
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="bytestack""#
    );
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"success": false, "error": "missing_api_key"})
    );

    let post = Request::post("/items")
        .header(AUTHORIZATION, bearer(&keys.read))
        .body(Body::empty())
        .unwrap();
    let response = send(&app, post).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="bytestack", error="insufficient_scope", scope="write""#
    );
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"success": false, "error": "insufficient_scope"})
    );
}

#[tokio::test]
async fn the_route_guard_checks_scopes_for_whole_routes() {
    let keys = keys().await;
    let app = axum::Router::new()
        .route("/admin", axum::routing::get(|| async { "admin" }))
        .route_layer(ScopeGuardLayer::require::<Admin>())
        .layer(live_layer(&keys, CachedVerifier::new(keys.store.clone())))
        .with_state(());
    let response = send(&app, get_with("/admin", Some(&bearer(&keys.write)))).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="insufficient_scope", scope="admin""#
    );
    assert_eq!(code_of(response).await, "insufficient_scope");
    let response = send(&app, get_with("/admin", Some(&bearer(&keys.admin)))).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn header_edge_cases_never_panic_and_answer_per_the_table() {
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let secret = keys.read.expose_secret();
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (format!("bearer {secret}").into_bytes(), StatusCode::OK, ""),
        (
            format!("BEARER   {secret}  ").into_bytes(),
            StatusCode::OK,
            "",
        ),
        (
            b"Basic dXNlcjpwYXNz".to_vec(),
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
        (
            b"Bearer".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            b"Bearer \xc3\xa9\xff\xfe".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("Bearer sk_live_{}", "a".repeat(8 * 1024)).into_bytes(),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            format!("Bearer {}", "A".repeat(8 * 1024)).into_bytes(),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
    ];
    for (raw, status, code) in cases {
        let mut request = get_with("/whoami", None);
        request
            .headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_bytes(&raw).unwrap());
        let response = send(&app, request).await;
        assert_eq!(
            response.status(),
            status,
            "{:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(40)])
        );
        if !code.is_empty() {
            assert_eq!(code_of(response).await, code);
        }
    }
}

/// `pass_foreign_tokens`: a token without the key prefix goes on without a principal (the
/// service checks it); a key-shaped one is still a key; a route that needs the principal
/// answers 401 `invalid_api_key` to a foreign token.
#[tokio::test]
async fn foreign_tokens_are_handed_on_and_keys_are_still_keys() {
    use axum::routing::get;
    use tower_api_keys::Principal;
    let keys = keys().await;
    let layer = ApiKeyLayer::new(keys.format.clone(), CachedVerifier::new(keys.store.clone()))
        .pass_foreign_tokens();
    let app = axum::Router::new()
        .route(
            "/either",
            get(|principal: Option<Principal>| async move {
                match principal {
                    Some(principal) => principal.account_id().to_owned(),
                    None => "someone else checks this token".to_owned(),
                }
            }),
        )
        .route("/key-only", get(|_: Principal| async { "key" }))
        .layer(layer);
    let body = |response: http::Response<Body>| async move {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let jwt = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3IifQ.c2lnbmF0dXJl";
    let foreign = send(&app, get_with("/either", Some(jwt))).await;
    assert_eq!(foreign.status(), StatusCode::OK);
    assert_eq!(body(foreign).await, "someone else checks this token");
    let key = send(&app, get_with("/either", Some(&bearer(&keys.read)))).await;
    assert_eq!(body(key).await, "acct_1");
    // Key-shaped but wrong: refused by the layer, never handed on.
    expect(
        &app,
        get_with("/either", Some("Bearer sk_live_typo")),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        Some(r#"Bearer realm="api", error="invalid_token""#),
    )
    .await;
    let revoked = send(&app, get_with("/either", Some(&bearer(&keys.revoked)))).await;
    assert_eq!(code_of(revoked).await, "api_key_revoked");
    // A route that needs a key does not take the foreign token.
    expect(
        &app,
        get_with("/key-only", Some(jwt)),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        Some(r#"Bearer realm="api", error="invalid_token""#),
    )
    .await;
    // No header at all is still 401 missing_api_key.
    expect(
        &app,
        get_with("/either", None),
        StatusCode::UNAUTHORIZED,
        "missing_api_key",
        Some(r#"Bearer realm="api""#),
    )
    .await;
}
