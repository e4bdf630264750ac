//! A bounded soak over loopback (ignored by default; `cargo test --all-features --test
//! soak -- --ignored --nocapture`, `SOAK_SECONDS` to change its 60 s): 64 keep-alive
//! connections mix valid, revoked, unknown and malformed keys while an admin creates and
//! revokes keys through the management API. Asserts: only the expected statuses, no key
//! accepted after its revocation returned, memory flat after warm-up.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::raw_http::{KeepAlive, serve};
use support::temp_db::TempDb;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::SqliteStore;
use tower_api_keys::usage::UsageRecorder;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 60 s soak; run it on purpose"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let db = TempDb::new("soak");
    let store = SqliteStore::open(db.path())
        .await
        .unwrap()
        .with_active_key_limit(10_000);
    store.migrate().await.unwrap();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let usage = UsageRecorder::new();
    let _flusher = usage.spawn_flusher(store.clone(), Duration::from_secs(2));
    let make = |name: String| {
        let manager = manager.clone();
        async move {
            let created = manager
                .create_for_account(
                    "acct_soak",
                    Environment::LIVE,
                    NewKey::named(name).scopes(Scope::Admin),
                )
                .await
                .unwrap();
            (
                created.info.id.to_string(),
                created.key.expose_secret().to_owned(),
            )
        }
    };
    let admin = make("admin".into()).await.1;
    let mut valid = Vec::new();
    for i in 0..16 {
        valid.push(make(format!("valid {i}")).await.1);
    }
    let (revoked_id, revoked) = make("revoked".into()).await;
    manager
        .revoke("acct_soak", &tower_api_keys::key::KeyId::new(revoked_id))
        .await
        .unwrap();
    let unknown: Vec<String> = (0..16)
        .map(|_| {
            format
                .generate(&Environment::LIVE)
                .expose_secret()
                .to_owned()
        })
        .collect();
    let malformed: Vec<String> = valid
        .iter()
        .map(|k| format!("{}x", &k[..k.len() - 1]))
        .collect();

    let app = axum::Router::new()
        .route(
            "/whoami",
            axum::routing::get(|p: tower_api_keys::Principal| async move { axum::Json(p) }),
        )
        .nest("/v1/account", manage::router(manager.clone()))
        .layer(ApiKeyLayer::new(format.clone(), cache.clone()).record_usage(usage.clone()));
    let addr = serve(app).await;

    // Keys revoked during the soak, with the instant their DELETE returned.
    let revoked_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let churn: Arc<Mutex<Vec<String>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);

    // The admin: create a key, use it, revoke it, over and over.
    let admin_task = {
        let (revoked_at, churn, violations, admin) = (
            revoked_at.clone(),
            churn.clone(),
            violations.clone(),
            admin.clone(),
        );
        tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await;
            let auth = format!("Bearer {admin}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let (status, body) = conn
                    .send(
                        "POST",
                        "/v1/account/api-keys",
                        &auth,
                        &format!(r#"{{"name": "churn {n}"}}"#),
                    )
                    .await
                    .unwrap();
                if status != 201 {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("create: {status} {body}"));
                    continue;
                }
                let created: serde_json::Value = serde_json::from_str(&body).unwrap();
                let (id, key) = (
                    created["id"].as_str().unwrap().to_owned(),
                    created["key"].as_str().unwrap().to_owned(),
                );
                churn.lock().unwrap().push(key.clone());
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (status, _) = conn
                    .send("DELETE", &format!("/v1/account/api-keys/{id}"), &auth, "")
                    .await
                    .unwrap();
                if status != 204 {
                    violations.lock().unwrap().push(format!("revoke: {status}"));
                }
                revoked_at.lock().unwrap().insert(key, Instant::now());
            }
            n
        })
    };

    let clients: Vec<_> = (0..64)
        .map(|client| {
            let (valid, unknown, malformed, revoked) = (
                valid.clone(),
                unknown.clone(),
                malformed.clone(),
                revoked.clone(),
            );
            let (revoked_at, churn, violations, requests) = (
                revoked_at.clone(),
                churn.clone(),
                violations.clone(),
                requests.clone(),
            );
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(addr).await;
                let mut i = client as usize;
                while Instant::now() < deadline {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407)
                        >> 1;
                    let (key, expect): (String, &[u16]) = match i % 5 {
                        0 => (valid[i % valid.len()].clone(), &[200]),
                        1 => (unknown[i % unknown.len()].clone(), &[401]),
                        2 => (malformed[i % malformed.len()].clone(), &[401]),
                        3 => (revoked.clone(), &[401]),
                        _ => {
                            let churned = churn.lock().unwrap().last().cloned();
                            match churned {
                                Some(key) => (key, &[200, 401]),
                                None => continue,
                            }
                        }
                    };
                    let sent_at = Instant::now();
                    let (status, body) = conn
                        .send("GET", "/whoami", &format!("Bearer {key}"), "")
                        .await
                        .unwrap();
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !expect.contains(&status) {
                        violations.lock().unwrap().push(format!("{status} {body}"));
                    }
                    if status == 200 {
                        if let Some(at) = revoked_at.lock().unwrap().get(&key) {
                            if *at < sent_at {
                                violations.lock().unwrap().push(format!(
                                    "a revoked key was accepted {:?} after its revocation returned: {body}",
                                    sent_at - *at
                                ));
                            }
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(seconds.min(10))).await;
    let warm = support::rss_mib();
    for client in clients {
        client.await.unwrap();
    }
    let churned = admin_task.await.unwrap();
    let end = support::rss_mib();
    let violations = violations.lock().unwrap().clone();
    let total = requests.load(Ordering::Relaxed);
    println!(
        "soak: {seconds} s, {total} requests ({:.0}/s), {churned} keys created and revoked, RSS {warm:.1} MiB after warm-up -> {end:.1} MiB at the end, {} violations",
        total as f64 / seconds as f64,
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(5)]
    );
    assert!(
        end - warm < 32.0,
        "memory grew {:.1} MiB after warm-up",
        end - warm
    );
}
