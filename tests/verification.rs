//! What reaches the verifier: single-flight, malformed keys, negative caching.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::create::StoreForTests as _;
use support::*;
use tower_api_keys::CachedVerifier;
use tower_api_keys::key::Environment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_first_requests_make_one_verifier_call() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = CachedVerifier::new(verifier.clone());
    let app = app(live_layer(&keys, cache.clone()));
    let auth = bearer(&keys.read);
    // The one call is held until all 100 requests have missed the cache: none of them
    // can be served from an answer that landed early.
    let held = verifier.hold().await;
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (app, auth) = (app.clone(), auth.clone());
            tokio::spawn(async move { send(&app, get_with("/whoami", Some(&auth))).await.status() })
        })
        .collect();
    eventually("100 misses", Duration::from_secs(10), async || {
        cache.stats().misses >= 100
    })
    .await;
    drop(held);
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(verifier.calls(), 1);
}

#[tokio::test]
async fn a_thousand_malformed_keys_make_no_verifier_call() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = CachedVerifier::new(verifier.clone());
    let app = app(live_layer(&keys, cache.clone()));
    let valid = keys.read.expose_secret().to_owned();
    for i in 0..1000 {
        // A real key with one character changed: right shape, wrong checksum.
        let mut bytes = valid.clone().into_bytes();
        let at = 8 + i % 43;
        bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
        let key = String::from_utf8(bytes).unwrap();
        let response = send(&app, get_with("/whoami", Some(&format!("Bearer {key}")))).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(code_of(response).await, "invalid_api_key");
    }
    assert_eq!(verifier.calls(), 0);
    assert_eq!(
        cache.stats().misses,
        0,
        "malformed keys never reach the cache"
    );
}

#[tokio::test]
async fn an_unknown_key_asked_twice_within_the_negative_ttl_makes_one_call() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let app = app(live_layer(&keys, CachedVerifier::new(verifier.clone())));
    let unknown = bearer(&keys.format.generate(&Environment::LIVE));
    for _ in 0..2 {
        let response = send(&app, get_with("/whoami", Some(&unknown))).await;
        assert_eq!(code_of(response).await, "invalid_api_key");
    }
    assert_eq!(verifier.calls(), 1);
}

#[tokio::test]
async fn known_keys_are_served_from_the_cache_until_invalidated() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = CachedVerifier::new(verifier.clone());
    let app = app(live_layer(&keys, cache.clone()));
    for _ in 0..10 {
        assert_eq!(
            send(&app, get_with("/whoami", Some(&bearer(&keys.admin))))
                .await
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(verifier.calls(), 1);
    assert_eq!(cache.stats().hits, 9);

    // Revoke in the store, invalidate the cache: the next request is refused.
    use tower_api_keys::store::KeyStore;
    let id = keys
        .store
        .find_by_hash(&keys.admin.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    keys.store.revoke("acct_1", &id).await.unwrap();
    cache.invalidate_key_id(&id);
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.admin)))).await;
    assert_eq!(code_of(response).await, "api_key_revoked");
}
