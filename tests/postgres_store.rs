//! `PostgresStore`: the store contract, the active-key race, and revocation across
//! instances through LISTEN/NOTIFY. Skipped (with a note) without `DATABASE_URL`.
#![cfg(feature = "postgres")]

mod support;

use std::time::{Duration, Instant};

use support::create::{NewKey, StoreForTests as _};
use support::postgres::{pool_in, schema_pool, url};
use support::{app, bearer, code_of, get_with, send};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::KeyManager;
use tower_api_keys::store::{KeyStore, PostgresStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

async fn store(test: &str) -> Option<(PostgresStore, String)> {
    let (pool, schema) = schema_pool(test).await?;
    let store = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    store.migrate().await.unwrap();
    Some((store, schema))
}

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let Some((store, _)) = store("contract").await else {
        return;
    };
    support::store_contract::basics(store).await;
}

#[tokio::test]
async fn postgres_rotates_atomically() {
    let Some((store, _)) = store("replacement").await else {
        return;
    };
    support::store_contract::replacement(store).await;
}

#[tokio::test]
async fn postgres_provenance() {
    let Some((store, _)) = store("provenance").await else {
        return;
    };
    support::store_contract::provenance(store).await;
}

#[tokio::test]
async fn postgres_limits_per_environment() {
    let Some((store, _)) = store("envs").await else {
        return;
    };
    support::store_contract::limit_per_environment(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_holds_the_limit_under_a_race() {
    let Some((store, _)) = store("race").await else {
        return;
    };
    support::store_contract::race_to_the_limit(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() {
    // A fresh schema, not migrated yet: both instances race to create the tables.
    let Some((pool, schema)) = schema_pool("migrate").await else {
        return;
    };
    let store = PostgresStore::from_pool(pool);
    let other = PostgresStore::from_pool(pool_in(&url(), &schema).await);
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&schema)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing migrated before the race");
    let (a, b) = tokio::join!(store.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM tower_api_keys_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(applied, vec![1, 2, 3, 4, 5], "each migration applied once");
    // And again: nothing to do.
    store.migrate().await.unwrap();
    support::store_contract::basics(other).await;
}

/// Two instances: each its own pool, cache and layer, one database.
struct Instance {
    store: PostgresStore,
    cache: CachedVerifier<PostgresStore>,
    app: axum::Router,
}

fn instance(store: PostgresStore) -> Instance {
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let app = app(ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone()));
    Instance { store, cache, app }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_instance_is_refused_by_another_within_a_second() {
    let Some((store, schema)) = store("revocation").await else {
        return;
    };
    let a = instance(store);
    let b = instance(
        PostgresStore::from_pool(pool_in(&url(), &schema).await).with_revocation_channel(&schema),
    );
    let listener = b.store.listen_for_revocations(b.cache.clone());
    wait_until("listener start", Duration::from_secs(5), async || {
        listener.connections() == 1
    })
    .await;

    let format = KeyFormat::new("sk");
    let key = a
        .store
        .create(&format, NewKey::new("acct", "shared", Environment::LIVE))
        .await
        .unwrap();
    let auth = bearer(&key.key);
    // Both instances have the key cached (for 10 minutes).
    for instance in [&a, &b] {
        assert_eq!(
            send(&instance.app, get_with("/whoami", Some(&auth)))
                .await
                .status(),
            200
        );
    }

    let manager = KeyManager::new(a.store.clone(), a.cache.clone(), format);
    manager.revoke("acct", &key.info.id).await.unwrap();
    // Same instance: at once.
    let response = send(&a.app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(code_of(response).await, "api_key_revoked");
    // Other instance: through NOTIFY.
    let took = wait_until(
        "revocation on instance B",
        Duration::from_secs(1),
        async || {
            let response = send(&b.app, get_with("/whoami", Some(&auth))).await;
            response.status() == 401 && code_of(response).await == "api_key_revoked"
        },
    )
    .await;
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("cross-instance revocation took {took:?}\n"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_and_clears_its_cache() {
    let Some((store, schema)) = store("reconnect").await else {
        return;
    };
    let a = instance(store);
    let listener = a.store.listen_for_revocations(a.cache.clone());
    wait_until("listener start", Duration::from_secs(5), async || {
        listener.connections() == 1
    })
    .await;

    let format = KeyFormat::new("sk");
    let key = a
        .store
        .create(&format, NewKey::new("acct", "k", Environment::LIVE))
        .await
        .unwrap();
    let auth = bearer(&key.key);
    assert_eq!(
        send(&a.app, get_with("/whoami", Some(&auth)))
            .await
            .status(),
        200
    );
    assert!(a.cache.is_cached(&key.key.hash()));

    // Kill the listener's connection from outside.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&schema)
    .fetch_all(a.store.pool())
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);

    wait_until("reconnect", Duration::from_secs(10), async || {
        listener.connections() == 2
    })
    .await;
    assert!(
        !a.cache.is_cached(&key.key.hash()),
        "the cache was cleared on reconnect"
    );

    // And it still hears revocations made elsewhere (here: directly in the store).
    assert_eq!(
        send(&a.app, get_with("/whoami", Some(&auth)))
            .await
            .status(),
        200
    );
    a.store.revoke("acct", &key.info.id).await.unwrap();
    wait_until(
        "revocation after reconnect",
        Duration::from_secs(1),
        async || !a.cache.is_cached(&key.key.hash()),
    )
    .await;
}
