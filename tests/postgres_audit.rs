//! The audit trail on PostgreSQL: two instances changing one account at once still
//! write one unbroken chain (the account row is locked while an event is appended),
//! every kind of change writes its event, and an edited row breaks the chain there.
//! Skipped (with a note) without `DATABASE_URL`.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use support::postgres::{pool_in, schema_pool, url};
use tower_api_keys::CachedVerifier;
use tower_api_keys::audit::verify_chain;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::limit::credits::Credits;
use tower_api_keys::manage::{KeyManager, NewKey};
use tower_api_keys::record::{AccountLimits, AccountStanding};
use tower_api_keys::store::{KeyChanges, KeyStore, PostgresStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_write_one_chain() {
    let Some((pool, schema)) = schema_pool("audit_chain").await else {
        return;
    };
    let a = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    a.migrate().await.unwrap();
    let b =
        PostgresStore::from_pool(pool_in(&url(), &schema).await).with_revocation_channel(&schema);
    let manager = |store: &PostgresStore| {
        KeyManager::new(
            store.clone(),
            CachedVerifier::new(store.clone()),
            KeyFormat::new("sk"),
        )
    };
    let (ma, mb) = (manager(&a), manager(&b));
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let manager = if n % 2 == 0 { ma.clone() } else { mb.clone() };
            tokio::spawn(async move {
                let created = manager
                    .create_for_account("acct", Environment::LIVE, NewKey::named(format!("k{n}")))
                    .await
                    .unwrap();
                manager
                    .update(
                        "acct",
                        &created.info.id,
                        KeyChanges::name(format!("renamed {n}")),
                    )
                    .await
                    .unwrap();
                created.info.id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ma.revoke("acct", &ids[0]).await.unwrap();
    mb.rotate("acct", &ids[1], Duration::ZERO).await.unwrap();
    ma.set_standing("acct", AccountStanding::default().with_grace_days(2))
        .await
        .unwrap();
    mb.set_account_limits("acct", AccountLimits::none().credits(Credits::new(1)))
        .await
        .unwrap();
    let trail = a.audit_trail("acct").await.unwrap();
    assert_eq!(
        trail.len(),
        44,
        "20 creations, 20 renames, a revocation, a rotation, standing, limits"
    );
    assert_eq!(verify_chain(&trail), Ok(()));
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "key.created",
        "key.updated",
        "key.revoked",
        "key.rotated",
        "account.standing_changed",
        "account.limits_changed",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert_eq!(b.audited_accounts().await.unwrap(), ["acct"]);

    sqlx::query("UPDATE audit_events SET changes = '{}'::jsonb WHERE id = $1")
        .bind(&trail[7].id)
        .execute(a.pool())
        .await
        .unwrap();
    let edited = a.audit_trail("acct").await.unwrap();
    assert_eq!(verify_chain(&edited), Err(trail[7].id.clone()));
}

/// Hourly usage on PostgreSQL: a batch holding two buckets of one key and hour (a key
/// whose cached record was reloaded between flushes) is one row per outcome, summed.
#[tokio::test]
async fn usage_batches_with_repeated_buckets_add_up() {
    let Some((pool, schema)) = schema_pool("usage_repeat").await else {
        return;
    };
    let store = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    store.migrate().await.unwrap();
    let id = tower_api_keys::key::KeyId::new("ak_repeat");
    let now = time::OffsetDateTime::now_utc();
    let bucket = |n: u64, ip: &str| {
        let mut bucket = tower_api_keys::store::UsageBucket::new(id.clone(), now);
        bucket.outcomes.insert("accepted".into(), n);
        bucket.ips = vec![(ip.to_owned(), n)];
        bucket
    };
    store
        .record_usage(&[
            bucket(2, "10.0.0.1"),
            bucket(3, "10.0.0.1"),
            bucket(4, "10.0.0.2"),
        ])
        .await
        .unwrap();
    store.record_usage(&[bucket(1, "10.0.0.2")]).await.unwrap();
    let buckets = store
        .usage(
            &id,
            now - time::Duration::hours(2),
            now + time::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0].outcomes["accepted"], 10);
    assert_eq!(
        buckets[0].ips,
        [("10.0.0.1".to_owned(), 5), ("10.0.0.2".to_owned(), 5)]
    );
}

/// Events keep the exact JSON their hash covers: numbers PostgreSQL's jsonb would
/// rewrite (1e16, -0.0) do not break the chain.
#[tokio::test]
async fn numbers_in_changes_survive_the_round_trip() {
    let Some((pool, schema)) = schema_pool("audit_numbers").await else {
        return;
    };
    let store = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    store.migrate().await.unwrap();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        KeyFormat::new("sk"),
    );
    let mut metadata = tower_api_keys::record::Metadata::new();
    metadata.insert("big".into(), serde_json::json!(1e16));
    metadata.insert("negative_zero".into(), serde_json::json!(-0.0));
    metadata.insert("text".into(), serde_json::json!("é \u{1F600} \"quoted\""));
    manager
        .create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("k").metadata(metadata),
        )
        .await
        .unwrap();
    let trail = store.audit_trail("acct").await.unwrap();
    assert_eq!(verify_chain(&trail), Ok(()));
}
