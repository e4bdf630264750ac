//! Every change that affects verification reaches every instance within a second:
//! two instances (each its own pool, cache with a 10-minute TTL, listener and layer) on
//! one PostgreSQL schema; a change made through instance A is seen by instance B
//! through LISTEN/NOTIFY, for each kind of change. Skipped (with a note) without
//! `DATABASE_URL`.
#![cfg(feature = "postgres")]

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use support::postgres::{pool_in, schema_pool, url};
use support::{app, bearer, body_json, get_with, send};
use time::OffsetDateTime;
use tower_api_keys::key::{ApiKey, Environment, KeyFormat, KeyId};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::Credits;
use tower_api_keys::manage::{KeyManager, NewKey};
use tower_api_keys::record::{AccountLimits, AccountStanding};
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::RevocationListener;
use tower_api_keys::store::{KeyChanges, PostgresStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

struct Instance {
    cache: CachedVerifier<PostgresStore>,
    manager: KeyManager<PostgresStore, PostgresStore>,
    app: axum::Router,
    _listener: RevocationListener,
}

async fn instance(store: PostgresStore) -> Instance {
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let format = KeyFormat::new("sk");
    let listener = store.listen_for_revocations(cache.clone());
    let started = Instant::now();
    while listener.connections() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "listener start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instance {
        manager: KeyManager::new(store, cache.clone(), format.clone()),
        app: app(ApiKeyLayer::new(format, cache.clone())),
        cache,
        _listener: listener,
    }
}

/// Instances A and B on one fresh schema.
async fn pair(test: &str) -> Option<(Instance, Instance)> {
    let (pool, schema) = schema_pool(test).await?;
    let store = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    store.migrate().await.unwrap();
    let other =
        PostgresStore::from_pool(pool_in(&url(), &schema).await).with_revocation_channel(&schema);
    Some((instance(store).await, instance(other).await))
}

/// Status and error code (or `key_name` of a served `/whoami`) of `request` on `app`.
async fn outcome(app: &axum::Router, request: Request<Body>) -> (u16, String) {
    let response = send(app, request).await;
    let status = response.status().as_u16();
    let body = body_json(response).await;
    let detail = body["error"]["code"]
        .as_str()
        .or_else(|| body["key_name"].as_str())
        .unwrap_or_default()
        .to_owned();
    (status, detail)
}

async fn whoami(app: &axum::Router, key: &ApiKey) -> (u16, String) {
    outcome(app, get_with("/whoami", Some(&bearer(key)))).await
}

/// Polls `app` until `/whoami` with `key` answers `expected`; panics after 1 s. Returns
/// how long it took.
async fn seen_within_a_second(
    what: &str,
    app: &axum::Router,
    key: &ApiKey,
    expected: (u16, &str),
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, detail) = whoami(app, key).await;
        if (status, detail.as_str()) == expected {
            let took = started.elapsed();
            eprintln!("{what}: seen by the other instance after {took:?}");
            return took;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: instance B still answers {status} {detail}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key of `acct` made through A, served (and so cached) by both instances.
async fn cached_on_both(a: &Instance, b: &Instance, request: NewKey) -> (ApiKey, KeyId) {
    let created = a
        .manager
        .create_for_account("acct", Environment::LIVE, request)
        .await
        .unwrap();
    for instance in [a, b] {
        assert_eq!(whoami(&instance.app, &created.key).await.0, 200);
        assert!(instance.cache.is_cached(&created.key.hash()));
    }
    (created.key, created.info.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_without_overlap_ends_the_old_key_everywhere() {
    let Some((a, b)) = pair("prop_rotate").await else {
        return;
    };
    let (old, id) = cached_on_both(&a, &b, NewKey::named("k")).await;
    let new = a.manager.rotate("acct", &id, Duration::ZERO).await.unwrap();
    assert_eq!(whoami(&a.app, &old).await, (401, "api_key_revoked".into()));
    seen_within_a_second("rotation", &b.app, &old, (401, "api_key_revoked")).await;
    assert_eq!(whoami(&b.app, &new.key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_overlap_ends_stops_on_every_instance_when_it_ends() {
    let Some((a, b)) = pair("prop_overlap").await else {
        return;
    };
    let (old, id) = cached_on_both(&a, &b, NewKey::named("k")).await;
    let overlap = Duration::from_millis(1500);
    let rotated_at = Instant::now();
    a.manager.rotate("acct", &id, overlap).await.unwrap();
    // B drops its record (which had no expiry) when told, and serves the old key with
    // its new expiry until the overlap ends.
    let started = Instant::now();
    while b.cache.is_cached(&old.hash()) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B still caches the old record"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        whoami(&b.app, &old).await.0,
        200,
        "still within the overlap"
    );
    let deadline = rotated_at + overlap;
    tokio::time::sleep_until(deadline.into()).await;
    // From the end of the overlap on, refused on both, straight from their caches' own
    // knowledge of the expiry.
    for instance in [&a, &b] {
        let started = Instant::now();
        loop {
            let answer = whoami(&instance.app, &old).await;
            if answer == (401, "api_key_expired".into()) {
                break;
            }
            // Only the time between the store's clock and ours may pass here.
            assert!(
                started.elapsed() < Duration::from_millis(200),
                "served after the overlap: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_credential_ends_the_previous_one_everywhere() {
    let Some((a, b)) = pair("prop_reissue").await else {
        return;
    };
    let first = a
        .manager
        .reissue("acct", Environment::LIVE, NewKey::named("BOOT"))
        .await
        .unwrap();
    for instance in [&a, &b] {
        assert_eq!(whoami(&instance.app, &first.key).await.0, 200);
    }
    let second = a
        .manager
        .reissue("acct", Environment::LIVE, NewKey::named("BOOT"))
        .await
        .unwrap();
    seen_within_a_second("reissue", &b.app, &first.key, (401, "api_key_revoked")).await;
    assert_eq!(whoami(&b.app, &second.key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_and_restrictions_reach_every_instance() {
    let Some((a, b)) = pair("prop_patch").await else {
        return;
    };
    let (key, id) = cached_on_both(&a, &b, NewKey::named("before").scopes(Scope::Read)).await;
    a.manager
        .update("acct", &id, KeyChanges::name("after"))
        .await
        .unwrap();
    seen_within_a_second("rename", &b.app, &key, (200, "after")).await;

    let fence = Restrictions::none().endpoints(["GET /items".parse().unwrap()]);
    a.manager
        .update("acct", &id, KeyChanges::default().restrictions(fence))
        .await
        .unwrap();
    seen_within_a_second("restriction", &b.app, &key, (403, "endpoint_not_allowed")).await;
    assert_eq!(
        outcome(&b.app, get_with("/items", Some(&bearer(&key)))).await,
        (200, String::new())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_expiry_changes_reach_every_instance() {
    let Some((a, b)) = pair("prop_scopes").await else {
        return;
    };
    let (key, id) = cached_on_both(&a, &b, NewKey::named("k").scopes(Scope::Write)).await;
    let post_items = || {
        Request::post("/items")
            .header("authorization", bearer(&key))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(outcome(&b.app, post_items()).await.0, 200);
    a.manager
        .update("acct", &id, KeyChanges::default().scopes(Scope::Read))
        .await
        .unwrap();
    let started = Instant::now();
    while outcome(&b.app, post_items()).await != (403, "insufficient_scope".into()) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B still lets the key write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "scopes: seen by the other instance after {:?}",
        started.elapsed()
    );

    let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    a.manager
        .update("acct", &id, KeyChanges::default().expires_at(Some(past)))
        .await
        .unwrap();
    seen_within_a_second("expiry", &b.app, &key, (401, "api_key_expired")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_standing_reaches_every_instance() {
    let Some((a, b)) = pair("prop_standing").await else {
        return;
    };
    let (key, _) = cached_on_both(&a, &b, NewKey::named("k")).await;
    let (other_account, _) = {
        let created = a
            .manager
            .create_for_account("acct_other", Environment::LIVE, NewKey::named("k"))
            .await
            .unwrap();
        assert_eq!(whoami(&b.app, &created.key).await.0, 200);
        (created.key, ())
    };
    let past_due = AccountStanding::past_due(OffsetDateTime::now_utc() - time::Duration::days(10));
    a.manager.set_standing("acct", past_due).await.unwrap();
    seen_within_a_second("standing", &b.app, &key, (402, "payment_required")).await;
    assert!(
        b.cache.is_cached(&other_account.hash()),
        "another account's keys stay cached"
    );
    a.manager
        .set_standing("acct", AccountStanding::default())
        .await
        .unwrap();
    seen_within_a_second("standing restored", &b.app, &key, (200, "k")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_credits_reach_every_instance() {
    let Some((a, b)) = pair("prop_limits").await else {
        return;
    };
    let (key, id) = cached_on_both(&a, &b, NewKey::named("k")).await;
    let hourly = RateLimit::new("requests", 1, Duration::from_secs(3_600)).unwrap();
    a.manager
        .update("acct", &id, KeyChanges::default().ratelimits(vec![hourly]))
        .await
        .unwrap();
    seen_within_a_second("a rate limit", &b.app, &key, (429, "rate_limited")).await;
    a.manager
        .update(
            "acct",
            &id,
            KeyChanges::default()
                .ratelimits(Vec::new())
                .credits(Some(Credits::new(0))),
        )
        .await
        .unwrap();
    seen_within_a_second("a balance", &b.app, &key, (402, "credits_exhausted")).await;
    a.manager
        .update("acct", &id, KeyChanges::default().credits(None))
        .await
        .unwrap();
    seen_within_a_second("no balance", &b.app, &key, (200, "k")).await;

    // An account's limits, set by the operator through A.
    a.manager
        .set_account_limits("acct", AccountLimits::none().credits(Credits::new(0)))
        .await
        .unwrap();
    seen_within_a_second(
        "an account balance",
        &b.app,
        &key,
        (402, "credits_exhausted"),
    )
    .await;
    a.manager
        .set_account_limits("acct", AccountLimits::none())
        .await
        .unwrap();
    seen_within_a_second("no account balance", &b.app, &key, (200, "k")).await;
}

/// A balance set by hand replaces what instances hold in leases of the old one: B
/// leased some of 100 credits; A sets the balance to 3; B then passes exactly 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_set_by_hand_ends_the_leases_of_the_old_one() {
    let Some((a, b)) = pair("prop_epoch").await else {
        return;
    };
    let (key, id) = cached_on_both(&a, &b, NewKey::named("k").credits(Credits::new(100))).await;
    assert_eq!(whoami(&b.app, &key).await.0, 200, "B holds a lease now");
    a.manager
        .update(
            "acct",
            &id,
            KeyChanges::default().credits(Some(Credits::new(3))),
        )
        .await
        .unwrap();
    let started = Instant::now();
    while b.cache.is_cached(&key.hash()) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B dropped the key"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut passed = 0;
    loop {
        match whoami(&b.app, &key).await {
            (200, _) => passed += 1,
            (402, code) if code == "credits_exhausted" => break,
            other => panic!("{other:?}"),
        }
        assert!(passed <= 3, "more than the new balance passed");
    }
    assert_eq!(passed, 3);
}
