//! What every `KeyStore` must do, run against each implementation.

use super::create::{NewKey, StoreForTests as _};
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::record::AccountStanding;
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyChanges, KeyStore, Replacement, StoreError, StoredKey};

fn format() -> KeyFormat {
    KeyFormat::new("sk")
}

/// 100 concurrent creates for an account holding 49 active keys (and one revoked):
/// exactly one succeeds, 99 get `LimitReached`, and 50 keys are active.
pub async fn race_to_the_limit<S: KeyStore + Clone>(store: S) {
    let account = "acct_race";
    let revoked = store
        .create(&format(), NewKey::new(account, "old", Environment::LIVE))
        .await
        .unwrap();
    store.revoke(account, &revoked.info.id).await.unwrap();
    for i in 0..49 {
        store
            .create(
                &format(),
                NewKey::new(account, format!("k{i}"), Environment::LIVE),
            )
            .await
            .unwrap();
    }
    let attempts: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create(
                        &format(),
                        NewKey::new(account, format!("race{i}"), Environment::LIVE),
                    )
                    .await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::LimitReached { limit: 50 }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((created, refused), (1, 99));
    assert_eq!(store.list(account).await.unwrap().len(), 50);
}

/// Create, find, list, rename, revoke, touch, standing, account isolation.
pub async fn basics<S: KeyStore + Clone>(store: S) {
    let created = store
        .create(
            &format(),
            NewKey::new("acct_a", "ci", Environment::TEST)
                .scopes([Scope::Write, Scope::custom("reports:export")])
                .project("proj_1"),
        )
        .await
        .unwrap();
    let id = created.info.id.clone();
    assert!(created.key.expose_secret().starts_with("sk_test_"));
    assert_eq!(created.info.prefix, "sk_test");

    let record = store
        .find_by_hash(&created.key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, id);
    assert_eq!(record.account_id, "acct_a");
    assert_eq!(record.project_id.as_deref(), Some("proj_1"));
    assert_eq!(record.environment, Environment::TEST);
    assert!(record.scopes.allows(&Scope::custom("reports:export")));
    assert!(record.scopes.allows(&Scope::Read));
    assert_eq!(record.created_at, created.info.created_at);
    assert_eq!(record.standing, AccountStanding::default());
    let unknown = format().generate(&Environment::TEST);
    assert!(store.find_by_hash(&unknown.hash()).await.unwrap().is_none());

    let listed = store.list("acct_a").await.unwrap();
    assert_eq!(listed, vec![created.info.clone()]);
    assert_eq!(store.get("acct_a", &id).await.unwrap(), created.info);

    // Another account sees nothing and can change nothing.
    assert!(store.list("acct_b").await.unwrap().is_empty());
    assert!(matches!(
        store.get("acct_b", &id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.rename("acct_b", &id, "x").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.revoke("acct_b", &id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get("acct_a", &KeyId::new("ak_missing")).await,
        Err(StoreError::NotFound)
    ));

    assert_eq!(
        store.rename("acct_a", &id, "renamed").await.unwrap().name,
        "renamed"
    );
    assert_eq!(
        store.find_by_id(&id).await.unwrap().unwrap().name,
        "renamed"
    );

    let used_at = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let earlier = used_at - time::Duration::hours(1);
    store.touch(&[(id.clone(), used_at)]).await.unwrap();
    store.touch(&[(id.clone(), earlier)]).await.unwrap();
    assert_eq!(
        store.get("acct_a", &id).await.unwrap().last_used_at,
        Some(used_at),
        "never goes back"
    );

    let since = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let standing = AccountStanding::past_due(since).with_grace_days(3);
    store.set_standing("acct_a", standing).await.unwrap();
    assert_eq!(store.standing("acct_a").await.unwrap(), standing);
    assert_eq!(
        store
            .find_by_hash(&created.key.hash())
            .await
            .unwrap()
            .unwrap()
            .standing,
        standing
    );
    store
        .set_standing("acct_a", AccountStanding::good())
        .await
        .unwrap();
    assert_eq!(
        store.standing("acct_a").await.unwrap(),
        AccountStanding::good()
    );

    let restrictions: Restrictions = serde_json::from_str(
        r#"{"allowed_ips": ["2001:db8::/32"], "allowed_endpoints": ["GET /v1/users/*"]}"#,
    )
    .unwrap();
    let updated = store
        .update(
            "acct_a",
            &id,
            &KeyChanges::default().restrictions(restrictions.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), &updated.restrictions),
        ("renamed", &restrictions)
    );
    assert_eq!(
        store
            .find_by_hash(&created.key.hash())
            .await
            .unwrap()
            .unwrap()
            .restrictions,
        restrictions
    );

    // Scopes and expiry change too, and reach the record verification reads.
    let at = time::OffsetDateTime::from_unix_timestamp(4_000_000_000).unwrap();
    let updated = store
        .update(
            "acct_a",
            &id,
            &KeyChanges::default()
                .scopes([Scope::Read])
                .expires_at(Some(at)),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.scopes.clone(), updated.expires_at),
        (Scope::Read.into(), Some(at))
    );
    let record = store
        .find_by_hash(&created.key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.scopes, record.expires_at),
        (Scope::Read.into(), Some(at))
    );
    assert_eq!(record.restrictions, restrictions, "untouched fields stay");
    let updated = store
        .update("acct_a", &id, &KeyChanges::default().expires_at(None))
        .await
        .unwrap();
    assert_eq!(
        (updated.expires_at, updated.name.as_str()),
        (None, "renamed")
    );

    let first = store
        .revoke("acct_a", &id)
        .await
        .unwrap()
        .revoked_at
        .unwrap();
    let again = store
        .revoke("acct_a", &id)
        .await
        .unwrap()
        .revoked_at
        .unwrap();
    assert_eq!(first, again, "revoking twice keeps the first time");
    assert!(
        matches!(
            store.update("acct_a", &id, &KeyChanges::name("late")).await,
            Err(StoreError::NotFound)
        ),
        "a revoked key is not changed"
    );
    assert!(store.list("acct_a").await.unwrap().is_empty());
    assert!(
        store
            .find_by_hash(&created.key.hash())
            .await
            .unwrap()
            .unwrap()
            .is_revoked()
    );
}

/// Rotation: the new key takes the old one's slot (works at the limit), the old one
/// ends as asked, atomically; an inactive old key is `NotFound` and nothing is written.
pub async fn replacement<S: KeyStore + Clone>(store: S) {
    let account = "acct_rotate";
    let mut old = Vec::new();
    for i in 0..50 {
        old.push(
            store
                .create(
                    &format(),
                    NewKey::new(account, format!("k{i}"), Environment::LIVE),
                )
                .await
                .unwrap(),
        );
    }
    let rotate = |id: &KeyId, ends_at| {
        let key = format().generate(&Environment::LIVE);
        let mut stored = StoredKey::new(&format(), &key, account, Environment::LIVE, "k0");
        stored.replaces = Some(Replacement::new(id.clone(), ends_at));
        stored
    };
    let now = time::OffsetDateTime::now_utc();
    // At the limit, without overlap: the old key is revoked at once.
    store.insert(rotate(&old[1].info.id, now)).await.unwrap();
    assert!(
        store
            .get(account, &old[1].info.id)
            .await
            .unwrap()
            .revoked_at
            .is_some()
    );
    // At the limit, with an overlap: both work for now, the old one expires later.
    let later = now + time::Duration::hours(1);
    store.insert(rotate(&old[0].info.id, later)).await.unwrap();
    let ended = store.get(account, &old[0].info.id).await.unwrap();
    assert_eq!(
        (
            ended.revoked_at,
            ended.expires_at.map(|t| t.unix_timestamp())
        ),
        (None, Some(later.unix_timestamp()))
    );
    // While it overlaps, the old key is active: 51 keys work, and no slot is free.
    assert_eq!(store.list(account).await.unwrap().len(), 51);
    // Rotating a revoked key fails and writes nothing.
    let before = store.list(account).await.unwrap().len();
    assert!(matches!(
        store.insert(rotate(&old[1].info.id, later)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list(account).await.unwrap().len(), before);
    // The limit still holds for plain creates.
    assert!(matches!(
        store
            .create(&format(), NewKey::new(account, "extra", Environment::LIVE))
            .await,
        Err(StoreError::LimitReached { .. })
    ));
}

/// The active-key limit (50) counts per account *and environment*, and keys past their
/// expiry do not count.
pub async fn limit_per_environment<S: KeyStore + Clone>(store: S) {
    let account = "acct_envs";
    let format = format();
    let create = |name: String, environment: Environment| {
        store.create(&format, NewKey::new(account, name, environment))
    };
    for i in 0..50 {
        create(format!("t{i}"), Environment::TEST).await.unwrap();
    }
    assert!(matches!(
        create("t50".into(), Environment::TEST).await,
        Err(StoreError::LimitReached { limit: 50 })
    ));
    // The live side is its own world.
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    store
        .create(
            &format,
            NewKey::new(account, "expired", Environment::LIVE).expires_at(past),
        )
        .await
        .unwrap();
    for i in 0..50 {
        create(format!("l{i}"), Environment::LIVE)
            .await
            .unwrap_or_else(|e| panic!("live key {i}: {e}"));
    }
    assert!(matches!(
        create("l50".into(), Environment::LIVE).await,
        Err(StoreError::LimitReached { limit: 50 })
    ));
}

/// Who created a key, its end user and its metadata are kept, returned by the
/// verifier, and changed by `update`.
pub async fn provenance<S: KeyStore + Clone>(store: S) {
    use tower_api_keys::manage::{KeyOwner, NewKey as Request};
    use tower_api_keys::{CachedVerifier, KeyManager};
    let manager = KeyManager::new(store.clone(), CachedVerifier::new(store.clone()), format());
    let owner = KeyOwner::new("acct_prov", Environment::LIVE).user("usr_ada");
    let mut metadata = serde_json::Map::new();
    metadata.insert("plan".into(), "pro".into());
    let created = manager
        .create_for_owner(
            &owner,
            Request::named("k").owner("end_1").metadata(metadata),
        )
        .await
        .unwrap();
    let stored = store.get("acct_prov", &created.info.id).await.unwrap();
    assert_eq!(stored.created_by.as_deref(), Some("usr_ada"));
    assert_eq!(stored.owner_id.as_deref(), Some("end_1"));
    assert_eq!(stored.metadata["plan"], "pro");
    let record = store
        .find_by_hash(&created.key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.created_by.as_deref(), record.owner_id.as_deref()),
        (Some("usr_ada"), Some("end_1"))
    );
    let changed = store
        .update(
            "acct_prov",
            &created.info.id,
            &KeyChanges::default()
                .owner_id(None)
                .metadata(serde_json::Map::new()),
        )
        .await
        .unwrap();
    assert_eq!(changed.owner_id, None);
    assert!(changed.metadata.is_empty());
    assert_eq!(changed.created_by.as_deref(), Some("usr_ada"));
    // Rotation keeps who made the key and what it carries.
    let rotated = manager
        .rotate("acct_prov", &created.info.id, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rotated.info.created_by.as_deref(), Some("usr_ada"));
}
