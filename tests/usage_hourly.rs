//! Usage per key and hour (SQLite, real HTTP): requests by outcome and client address
//! after known traffic, the last 24 h per key in the listing, the 20 most frequent
//! addresses kept by name, and 10,000 requests making a handful of writes.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use serde_json::json;
use support::raw_http::{Client, serve_with_peer};
use support::temp_db::TempDb;
use time::OffsetDateTime;
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, SqliteStore, UsageBucket};
use tower_api_keys::usage::UsageRecorder;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_buckets_by_outcome_and_address_after_known_traffic() {
    let db = TempDb::new("usage-hourly");
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let admin = manager
        .create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("admin").scopes(Scope::Admin),
        )
        .await
        .unwrap();
    let limited = manager
        .create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("limited")
                .scopes(Scope::Read)
                .ratelimits(vec![
                    RateLimit::new("requests", 5, Duration::from_secs(3_600)).unwrap(),
                ]),
        )
        .await
        .unwrap();
    let usage = UsageRecorder::new();
    let app = axum::Router::new()
        .route("/v1/ping", axum::routing::get(|| async { "pong" }))
        .nest("/v1/account", manage::router(manager.clone()))
        .layer(ApiKeyLayer::new(format, cache).record_usage(usage.clone()));
    let addr = serve_with_peer(app).await;
    let client = Client::new(addr, limited.key.expose_secret());
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(client.send("GET", "/v1/ping", "").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    usage.flush(&store).await.unwrap();

    let admin = Client::new(addr, admin.key.expose_secret());
    let id = &limited.info.id;
    let reply = admin
        .send("GET", &format!("/v1/account/api-keys/{id}/usage"), "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let buckets = reply.json()["data"].as_array().unwrap().clone();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let bucket = &buckets[0];
    assert_eq!(bucket["requests"], 7);
    assert_eq!(
        bucket["outcomes"],
        json!({"accepted": 5, "rate_limited": 2})
    );
    assert_eq!(bucket["ips"], json!([{"ip": "127.0.0.1", "count": 7}]));
    let hour = OffsetDateTime::parse(
        bucket["hour"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((hour.minute(), hour.second()), (0, 0));
    // Outside the window asked for: nothing.
    let old = admin
        .send(
            "GET",
            &format!(
                "/v1/account/api-keys/{id}/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"
            ),
            "",
        )
        .await;
    assert_eq!(old.json()["data"], json!([]));
    let bad = admin
        .send(
            "GET",
            &format!("/v1/account/api-keys/{id}/usage?from=soon"),
            "",
        )
        .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_query".to_owned()));

    // The listing, with the last 24 hours per key (the admin's own requests so far are
    // counted at the next flush).
    usage.flush(&store).await.unwrap();
    let listed = admin
        .send("GET", "/v1/account/api-keys?include=usage_24h", "")
        .await;
    let items = listed.json()["data"].as_array().unwrap().clone();
    let of =
        |name: &str| items.iter().find(|item| item["name"] == name).unwrap()["usage_24h"].clone();
    assert_eq!(of("limited"), 5);
    assert_eq!(of("admin"), 3);
    let plain = admin.send("GET", "/v1/account/api-keys", "").await;
    assert!(plain.json()["data"][0].get("usage_24h").is_none());

    // Another account's key is not found.
    let theirs = manager
        .create_for_account("acct_2", Environment::LIVE, NewKey::named("theirs"))
        .await
        .unwrap();
    let reply = admin
        .send(
            "GET",
            &format!("/v1/account/api-keys/{}/usage", theirs.info.id),
            "",
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn the_twenty_most_frequent_addresses_are_kept_by_name() {
    let db = TempDb::new("usage-ips");
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let id = KeyId::new("ak_many");
    let now = OffsetDateTime::now_utc();
    let bucket = |range: std::ops::Range<u64>| {
        let mut bucket = UsageBucket::new(id.clone(), now);
        bucket
            .outcomes
            .insert("accepted".into(), range.clone().sum());
        bucket.ips = range.map(|n| (format!("10.0.0.{n}"), n)).collect();
        bucket
    };
    // Two flushes, 30 addresses in all, each counted as often as its last number.
    store.record_usage(&[bucket(1..16)]).await.unwrap();
    store.record_usage(&[bucket(16..31)]).await.unwrap();
    let buckets = store
        .usage(
            &id,
            now - time::Duration::hours(2),
            now + time::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(buckets.len(), 1);
    let ips = &buckets[0].ips;
    assert_eq!(ips.len(), 21, "{ips:?}");
    assert_eq!(ips[0], ("10.0.0.30".to_owned(), 30));
    assert_eq!(ips[19], ("10.0.0.11".to_owned(), 11));
    assert_eq!(ips[20], ("other".to_owned(), (1..11).sum()));
    assert_eq!(buckets[0].outcomes["accepted"], (1..31).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_make_a_handful_of_usage_writes() {
    let db = TempDb::new("usage-writes");
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let key = manager
        .create_for_account("acct", Environment::LIVE, NewKey::named("busy"))
        .await
        .unwrap();
    let usage = UsageRecorder::new();
    let flusher = usage.spawn_flusher(store.clone(), Duration::from_millis(500));
    let app = support::app(ApiKeyLayer::new(format, cache).record_usage(usage.clone()));
    let auth = support::bearer(&key.key);
    for _ in 0..10_000 {
        let response = support::send(&app, support::get_with("/whoami", Some(&auth))).await;
        assert_eq!(response.status(), 200);
    }
    flusher.abort();
    usage.flush(&store).await.unwrap();
    let writes = usage.writes();
    eprintln!("10,000 requests: {writes} usage writes");
    assert!(writes <= 12, "{writes} writes");
    let now = OffsetDateTime::now_utc();
    let buckets = store
        .usage(
            &key.info.id,
            now - time::Duration::hours(2),
            now + time::Duration::hours(1),
        )
        .await
        .unwrap();
    let total: u64 = buckets.iter().map(|b| b.outcomes["accepted"]).sum();
    assert_eq!(total, 10_000, "every request counted once");
}
