//! When the verifier's backend fails or is slow: 503 for unknown-to-cache keys, stale
//! serving for recently verified ones, stale-while-revalidate, immediate revocation.

mod support;

use std::time::Duration;

use http::StatusCode;
use http::header::RETRY_AFTER;
use support::create::StoreForTests as _;
use support::*;
use tower_api_keys::store::KeyStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

fn short_cache(
    verifier: Counting<tower_api_keys::store::MemoryStore>,
    stale: Duration,
) -> CachedVerifier<Counting<tower_api_keys::store::MemoryStore>> {
    CachedVerifier::builder(verifier)
        .positive_ttl(Duration::from_millis(100))
        .stale_window(stale)
        .build()
}

#[tokio::test]
async fn a_slow_backend_times_out_into_503() {
    let keys = keys().await;
    let mut verifier = Counting::new(keys.store.clone());
    verifier.delay = Duration::from_secs(5);
    let cache = CachedVerifier::builder(verifier)
        .verify_timeout(Some(Duration::from_millis(100)))
        .build();
    let app = app(live_layer(&keys, cache));
    let started = std::time::Instant::now();
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.read)))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(RETRY_AFTER));
    assert_eq!(code_of(response).await, "auth_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the slow backend"
    );
}

#[tokio::test]
async fn recently_verified_keys_keep_working_through_an_outage_within_the_stale_window() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    // Fresh for 100 ms, then served stale until 1,100 ms: the sleeps below may only
    // overshoot, and the stale check has a second of margin.
    let cache = short_cache(verifier.clone(), Duration::from_millis(1_000));
    let app = app(live_layer(&keys, cache.clone()));
    let whoami = |key| get_with("/whoami", Some(&bearer(key)));
    assert_eq!(
        send(&app, whoami(&keys.read)).await.status(),
        StatusCode::OK
    );

    verifier.fail(true);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Past the fresh TTL, backend down: served from the stale entry.
    assert_eq!(
        send(&app, whoami(&keys.read)).await.status(),
        StatusCode::OK
    );
    assert!(cache.stats().stale_hits >= 1);
    // A key never verified gets 503, never 401 or 500.
    let response = send(&app, whoami(&keys.write)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Past the stale window: 503 too.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let response = send(&app, whoami(&keys.read)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Backend back: verified again.
    verifier.fail(false);
    assert_eq!(
        send(&app, whoami(&keys.read)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn revocation_stays_immediate_during_an_outage() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = short_cache(verifier.clone(), Duration::from_secs(60));
    let app = app(live_layer(&keys, cache.clone()));
    assert_eq!(
        send(&app, get_with("/whoami", Some(&bearer(&keys.admin))))
            .await
            .status(),
        StatusCode::OK
    );
    verifier.fail(true);
    let id = keys
        .store
        .find_by_hash(&keys.admin.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    cache.invalidate_key_id(&id);
    // Not served from any stale copy: the backend must answer, and it cannot.
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.admin)))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_is_served_at_once_and_refreshed_by_one_background_task() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = CachedVerifier::builder(verifier.clone())
        .positive_ttl(Duration::from_secs(1))
        .build();
    let app = app(live_layer(&keys, cache.clone()));
    let auth = bearer(&keys.read);
    assert_eq!(
        send(&app, get_with("/whoami", Some(&auth))).await.status(),
        StatusCode::OK
    );
    assert_eq!(verifier.calls(), 1);
    // Past the fresh TTL (a sleep that may only overshoot), with the verifier held: the
    // refresh cannot finish, so every request answered was served without waiting.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let held = verifier.hold().await;
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (app, auth) = (app.clone(), auth.clone());
            tokio::spawn(async move { send(&app, get_with("/whoami", Some(&auth))).await.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert!(cache.stats().stale_hits >= 100);
    eventually("the refresh starts", Duration::from_secs(10), async || {
        verifier.calls() >= 2
    })
    .await;
    assert_eq!(
        verifier.calls(),
        2,
        "one background refresh for 100 stale hits"
    );
    drop(held);
    // Once the refresh lands, the key is fresh again (for a second: on a loaded machine
    // a later request may find it stale again and refresh once more, which is fine).
    eventually("the refresh", Duration::from_secs(10), async || {
        let stale_before = cache.stats().stale_hits;
        assert_eq!(
            send(&app, get_with("/whoami", Some(&auth))).await.status(),
            StatusCode::OK
        );
        cache.stats().stale_hits == stale_before
    })
    .await;
}

#[tokio::test]
async fn a_refresh_that_finds_the_key_revoked_removes_it() {
    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = short_cache(verifier.clone(), Duration::from_secs(60));
    let app = app(live_layer(&keys, cache.clone()));
    let auth = bearer(&keys.admin);
    assert_eq!(
        send(&app, get_with("/whoami", Some(&auth))).await.status(),
        StatusCode::OK
    );
    // Revoked in the store only: no invalidation reaches this cache (another process).
    let id = keys
        .store
        .find_by_hash(&keys.admin.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    keys.store.revoke("acct_1", &id).await.unwrap();
    // Past the fresh TTL (100 ms), with the verifier held: the stale entry is served
    // once more while the refresh waits...
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = verifier.hold().await;
    assert_eq!(
        send(&app, get_with("/whoami", Some(&auth))).await.status(),
        StatusCode::OK
    );
    eventually("the refresh starts", Duration::from_secs(10), async || {
        verifier.calls() == 2
    })
    .await;
    drop(held);
    // ...and once it lands, the revocation is seen.
    eventually("the revocation", Duration::from_secs(10), async || {
        let response = send(&app, get_with("/whoami", Some(&auth))).await;
        response.status() == StatusCode::UNAUTHORIZED
            && code_of(response).await == "api_key_revoked"
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_pool_pointed_at_a_closed_port_answers_503() {
    use sqlx::postgres::PgPoolOptions;
    use tower_api_keys::key::{Environment, KeyFormat};
    use tower_api_keys::store::PostgresStore;
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    let format = KeyFormat::new("sk");
    let app = app(ApiKeyLayer::new(format.clone(), CachedVerifier::new(store)));
    let key = format.generate(&Environment::LIVE);
    let response = send(&app, get_with("/whoami", Some(&bearer(&key)))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(RETRY_AFTER));
    let body = body_json(response).await.to_string();
    assert!(
        body.contains("auth_unavailable") && !body.contains("127.0.0.1"),
        "{body}"
    );
}
