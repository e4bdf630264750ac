//! A soak across instances (ignored by default; `DATABASE_URL=postgres://… cargo test
//! --all-features --test soak_instances -- --ignored --nocapture`, `SOAK_SECONDS` to
//! change its 60 s): two instances (each its own pool, cache, listener and server on
//! loopback) on one PostgreSQL schema. 32 keep-alive clients per instance send requests
//! with recently changed keys while a churn task per instance creates keys through one
//! instance and rotates, restricts and revokes them through the other. Asserts: no key
//! is accepted by either instance more than 1 s after the change that ended it was
//! committed, no request gets a 5xx, memory stays flat after warm-up. Prints its
//! figures (BENCHMARKS.md reports them).
#![cfg(all(feature = "axum", feature = "postgres"))]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::postgres::{pool_in, schema_pool, url};
use support::raw_http::{KeepAlive, serve};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{self, KeyManager, NewKey};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::PostgresStore;
use tower_api_keys::store::RevocationListener;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

/// A key handed to the clients, and when the change that ended it committed.
struct Churned {
    key: String,
    ended_at: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    churned: Mutex<Vec<Churned>>,
    violations: Mutex<Vec<String>>,
    requests: AtomicU64,
    changes: AtomicU64,
    /// The longest time (µs) a key was still accepted after the change that ended it.
    latest_acceptance_us: AtomicU64,
    /// Requests accepted with a key not (yet) ended, and refused with an ended one.
    served_live: AtomicU64,
    refused_ended: AtomicU64,
}

impl Shared {
    fn hand_out(&self, key: &str) {
        let mut churned = self.churned.lock().unwrap();
        churned.push(Churned {
            key: key.to_owned(),
            ended_at: None,
        });
        // The last 256 (several seconds of changes): clients keep trying keys for well
        // past the 1 s a change has to reach every instance.
        if churned.len() > 256 {
            churned.remove(0);
        }
    }

    /// `key` was ended by a change sent at `sent` (stamped before sending: stricter
    /// than the commit, which came later).
    fn ended(&self, key: &str, sent: Instant) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        let now = sent;
        if let Some(entry) = self
            .churned
            .lock()
            .unwrap()
            .iter_mut()
            .find(|c| c.key == key)
        {
            entry.ended_at = Some(now);
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

async fn instance(store: PostgresStore) -> (SocketAddr, RevocationListener) {
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::builder(store.clone())
        .positive_ttl(Duration::from_secs(600))
        .build();
    let listener = store.listen_for_revocations(cache.clone());
    support::eventually("listener start", Duration::from_secs(10), async || {
        listener.connections() >= 1
    })
    .await;
    let manager = KeyManager::new(store, cache.clone(), format.clone());
    let app = axum::Router::new()
        .route(
            "/whoami",
            axum::routing::get(|p: tower_api_keys::Principal| async move { axum::Json(p) }),
        )
        .nest("/v1/account", manage::router(manager))
        .layer(ApiKeyLayer::new(format, cache));
    (serve(app).await, listener)
}

/// Creates through `here`, rotates through `there`, restricts the new key through
/// `here`, creates another through `there` and revokes it through `here`; over and over.
async fn churn(
    here: SocketAddr,
    there: SocketAddr,
    admin: String,
    shared: Arc<Shared>,
    until: Instant,
) {
    let auth = format!("Bearer {admin}");
    let mut here = KeepAlive::connect(here).await;
    let mut there = KeepAlive::connect(there).await;
    let pause = Duration::from_millis(20);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let create = |n: u64| format!(r#"{{"name": "churn {n}", "scopes": ["read"]}}"#);
        let (status, body) = here
            .send("POST", "/v1/account/api-keys", &auth, &create(n))
            .await
            .unwrap();
        if status != 201 {
            shared.violation(format!("create: {status} {body}"));
            continue;
        }
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (id, old) = (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        );
        shared.hand_out(&old);
        tokio::time::sleep(pause).await;

        let sent = Instant::now();
        let (status, body) = there
            .send(
                "POST",
                &format!("/v1/account/api-keys/{id}/rotate"),
                &auth,
                "",
            )
            .await
            .unwrap();
        if status != 201 {
            shared.violation(format!("rotate: {status} {body}"));
            continue;
        }
        shared.ended(&old, sent);
        let rotated: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (new_id, new) = (
            rotated["id"].as_str().unwrap().to_owned(),
            rotated["key"].as_str().unwrap().to_owned(),
        );
        shared.hand_out(&new);
        tokio::time::sleep(pause).await;

        // Restricted to an endpoint that is not /whoami: ended for the clients.
        let sent = Instant::now();
        let (status, body) = here
            .send(
                "PATCH",
                &format!("/v1/account/api-keys/{new_id}"),
                &auth,
                r#"{"restrictions": {"allowed_endpoints": ["GET /v1/nothing"]}}"#,
            )
            .await
            .unwrap();
        if status != 200 {
            shared.violation(format!("restrict: {status} {body}"));
        } else {
            shared.ended(&new, sent);
        }

        let (status, body) = there
            .send(
                "POST",
                "/v1/account/api-keys",
                &auth,
                &create(n + 1_000_000),
            )
            .await
            .unwrap();
        if status != 201 {
            shared.violation(format!("create: {status} {body}"));
            continue;
        }
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (id, key) = (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        );
        shared.hand_out(&key);
        tokio::time::sleep(pause).await;
        let sent = Instant::now();
        let (status, _) = here
            .send("DELETE", &format!("/v1/account/api-keys/{id}"), &auth, "")
            .await
            .unwrap();
        if status != 204 {
            shared.violation(format!("revoke: {status}"));
        } else {
            shared.ended(&key, sent);
        }
        // Rotated-then-restricted keys stay active: keep the account under its limit.
        let (status, _) = there
            .send(
                "DELETE",
                &format!("/v1/account/api-keys/{new_id}"),
                &auth,
                "",
            )
            .await
            .unwrap();
        if status != 204 {
            shared.violation(format!("cleanup: {status}"));
        }
    }
}

async fn client(addr: SocketAddr, seed: u64, shared: Arc<Shared>, until: Instant) {
    let mut conn = KeepAlive::connect(addr).await;
    let mut i = seed;
    while Instant::now() < until {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let picked = {
            let churned = shared.churned.lock().unwrap();
            if churned.is_empty() {
                None
            } else {
                let at = (i >> 33) as usize % churned.len();
                Some(churned[at].key.clone())
            }
        };
        let Some(key) = picked else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let sent_at = Instant::now();
        let (status, body) = conn
            .send("GET", "/whoami", &format!("Bearer {key}"), "")
            .await
            .unwrap();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 || !matches!(status, 200 | 401 | 403) {
            shared.violation(format!("{status} {body}"));
        }
        let ended_at = shared
            .churned
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.key == key)
            .and_then(|c| c.ended_at)
            .filter(|at| *at < sent_at);
        match (status, ended_at) {
            (200, None) => {
                shared.served_live.fetch_add(1, Ordering::Relaxed);
            }
            (401 | 403, Some(_)) => {
                shared.refused_ended.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if status == 200 {
            if let Some(ended_at) = ended_at {
                let late = sent_at - ended_at;
                shared
                    .latest_acceptance_us
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                if late > Duration::from_secs(1) {
                    shared.violation(format!("a key was accepted {late:?} after its change"));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 60 s soak across two instances; run it on purpose"]
async fn soak_across_instances() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let Some((pool, schema)) = schema_pool("soak_instances").await else {
        return;
    };
    let a = PostgresStore::from_pool(pool)
        .with_revocation_channel(&schema)
        .with_active_key_limit(100_000);
    a.migrate().await.unwrap();
    let b = PostgresStore::from_pool(pool_in(&url(), &schema).await)
        .with_revocation_channel(&schema)
        .with_active_key_limit(100_000);
    let admin = KeyManager::new(
        a.clone(),
        CachedVerifier::new(a.clone()),
        KeyFormat::new("sk"),
    )
    .create_for_account(
        "acct_soak",
        Environment::LIVE,
        NewKey::named("admin").scopes(Scope::Admin),
    )
    .await
    .unwrap()
    .key
    .expose_secret()
    .to_owned();
    let (addr_a, _listener_a) = instance(a).await;
    let (addr_b, _listener_b) = instance(b).await;

    let shared = Arc::new(Shared::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = vec![
        tokio::spawn(churn(addr_a, addr_b, admin.clone(), shared.clone(), until)),
        tokio::spawn(churn(addr_b, addr_a, admin.clone(), shared.clone(), until)),
    ];
    for n in 0..64u64 {
        let addr = if n % 2 == 0 { addr_a } else { addr_b };
        tasks.push(tokio::spawn(client(addr, n + 1, shared.clone(), until)));
    }
    tokio::time::sleep(Duration::from_secs(seconds.min(10))).await;
    let warm = support::rss_mib();
    for task in tasks {
        task.await.unwrap();
    }
    let end = support::rss_mib();
    let violations = shared.violations.lock().unwrap().clone();
    let total = shared.requests.load(Ordering::Relaxed);
    println!(
        "soak across instances: {seconds} s, {total} requests ({:.0}/s), {} changes that end a key, \
         latest acceptance after such a change {:.1} ms, RSS {warm:.1} MiB after warm-up -> {end:.1} MiB, {} violations",
        total as f64 / seconds as f64,
        shared.changes.load(Ordering::Relaxed),
        shared.latest_acceptance_us.load(Ordering::Relaxed) as f64 / 1000.0,
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(5)]
    );
    // It did exercise both sides: live keys served, ended keys refused.
    let (served, refused) = (
        shared.served_live.load(Ordering::Relaxed),
        shared.refused_ended.load(Ordering::Relaxed),
    );
    println!("{served} requests served with live keys, {refused} refused with ended ones");
    assert!(served > 0 && refused > 0 && shared.changes.load(Ordering::Relaxed) > 0);
    assert!(
        end - warm < 32.0,
        "memory grew {:.1} MiB after warm-up",
        end - warm
    );
}
