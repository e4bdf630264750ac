//! Over real HTTP on 127.0.0.1, with a raw client that can send what a library would
//! refuse to (two Authorization headers, bytes outside ASCII).

mod support;

use support::raw_http::{raw_get, serve};
use tower_api_keys::CachedVerifier;

#[tokio::test]
async fn over_real_http() {
    let keys = support::keys().await;
    let addr = serve(support::app(support::live_layer(
        &keys,
        CachedVerifier::new(keys.store.clone()),
    )))
    .await;
    let auth = format!("Authorization: {}", support::bearer(&keys.read));

    let ok = raw_get(addr, "/whoami", &[auth.as_bytes()]).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("\"key_name\":\"read\""));

    let missing = raw_get(addr, "/whoami", &[]).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing
            .head
            .contains("www-authenticate: bearer realm=\"api\"")
    );
    assert!(missing.body.contains("missing_api_key"));

    let twice = raw_get(addr, "/whoami", &[auth.as_bytes(), auth.as_bytes()]).await;
    assert_eq!(twice.status, 400);
    assert!(twice.body.contains("invalid_request"));

    let non_ascii = raw_get(
        addr,
        "/whoami",
        &[b"Authorization: Bearer sk_live_\xc3\xa9\xff"],
    )
    .await;
    assert_eq!(non_ascii.status, 400);
    assert!(non_ascii.body.contains("invalid_request"));

    let huge = format!("Authorization: Bearer sk_live_{}", "a".repeat(8 * 1024));
    let huge = raw_get(addr, "/whoami", &[huge.as_bytes()]).await;
    assert_eq!(huge.status, 401);
    assert!(huge.body.contains("invalid_api_key"));

    let lowercase = format!("authorization: bearer   {}", keys.read.expose_secret());
    assert_eq!(
        raw_get(addr, "/whoami", &[lowercase.as_bytes()])
            .await
            .status,
        200
    );

    let revoked = format!("Authorization: {}", support::bearer(&keys.revoked));
    let revoked = raw_get(addr, "/whoami", &[revoked.as_bytes()]).await;
    assert_eq!(revoked.status, 401);
    assert!(revoked.body.contains("api_key_revoked"));
}
