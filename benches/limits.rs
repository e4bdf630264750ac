//! What usage limits cost where they leave the process: the Redis check's added
//! latency over loopback (p50/p99 against the same layer limiting in process, measured
//! in alternation), credits on one key per second on SQLite and PostgreSQL (default
//! lease against a lease of 1, which writes the store per request), and the overshoot
//! of one Redis-shared limit driven by two instances at once.
//!
//! `cargo bench --bench limits` (needs Redis at `REDIS_URL` and PostgreSQL at
//! `DATABASE_URL`; a part whose server is missing is skipped with a note).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::Credits;
use tower_api_keys::limit::redis::RedisLimiter;
use tower_api_keys::manage::NewKey;
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, PostgresStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyManager, KeyVerifier, MemoryStore};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p) as usize]
}

async fn one<V: KeyVerifier>(
    layer: &ApiKeyLayer<V>,
    router: &axum::Router,
    auth: &HeaderValue,
) -> StatusCode {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(router.clone());
    service
        .oneshot(support::request(auth))
        .await
        .unwrap()
        .status()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        tower_api_keys::key::KeyId::generate_with_prefix("")
    )
}

async fn redis_latency(url: &str) {
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = manager
        .create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("k").scopes(Scope::Read),
        )
        .await
        .unwrap()
        .key;
    let auth = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).unwrap();
    let limit = RateLimit::new("requests", u32::MAX, Duration::from_secs(1)).unwrap();
    let local = ApiKeyLayer::new(format.clone(), CachedVerifier::new(store.clone()))
        .rate_limit(limit.clone());
    let redis = RedisLimiter::new(url).unwrap().prefix(&unique("bench"));
    let shared = ApiKeyLayer::new(format, CachedVerifier::new(store))
        .rate_limit(limit)
        .shared_limits(redis.clone());
    let router = support::router().with_state(());
    for _ in 0..200 {
        one(&local, &router, &auth).await;
        one(&shared, &router, &auth).await;
    }
    assert!(!redis.is_down(), "Redis answered");
    let (mut locals, mut shareds) = (Vec::new(), Vec::new());
    for _ in 0..5_000 {
        let start = Instant::now();
        assert_eq!(one(&local, &router, &auth).await, StatusCode::OK);
        locals.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(one(&shared, &router, &auth).await, StatusCode::OK);
        shareds.push(start.elapsed());
    }
    for p in [0.5, 0.99] {
        let (l, s) = (percentile(&mut locals, p), percentile(&mut shareds, p));
        println!(
            "| Redis check, p{:.0} | {:.1} µs in process | {:.1} µs through Redis | +{:.1} µs |",
            p * 100.0,
            l.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            (s.as_secs_f64() - l.as_secs_f64()) * 1e6
        );
    }
}

/// Requests per second on one key with a balance, 32 at a time, until `total` passed.
async fn credits_per_second<S: KeyStore + Clone>(store: S, lease: u64, total: u64) -> f64 {
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = manager
        .create_for_account(
            &unique("acct"),
            Environment::LIVE,
            NewKey::named("k")
                .scopes(Scope::Read)
                .credits(Credits::new(total)),
        )
        .await
        .unwrap()
        .key;
    let auth = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).unwrap();
    let layer = ApiKeyLayer::new(format, CachedVerifier::new(store)).credit_lease(lease);
    let router = support::router().with_state(());
    let (passed, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (layer, router, auth) = (layer.clone(), router.clone(), auth.clone());
            let (passed, refused) = (passed.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    match one(&layer, &router, &auth).await {
                        StatusCode::OK => passed.fetch_add(1, Ordering::Relaxed),
                        StatusCode::PAYMENT_REQUIRED => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        other => panic!("{other}"),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(passed.load(Ordering::Relaxed), total, "exact");
    total as f64 / elapsed.as_secs_f64()
}

async fn overshoot(url: &str) {
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = manager
        .create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("k").scopes(Scope::Read),
        )
        .await
        .unwrap()
        .key;
    let auth = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).unwrap();
    let prefix = unique("overshoot");
    let limit = RateLimit::new("requests", 1_000, Duration::from_secs(3_600)).unwrap();
    let instance = || {
        ApiKeyLayer::new(format.clone(), CachedVerifier::new(store.clone()))
            .rate_limit(limit.clone())
            .shared_limits(RedisLimiter::new(url).unwrap().prefix(&prefix))
    };
    let (a, b) = (instance(), instance());
    let router = support::router().with_state(());
    let passed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..3_000)
        .map(|i| {
            let layer = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (router, auth, passed) = (router.clone(), auth.clone(), passed.clone());
            tokio::spawn(async move {
                if one(&layer, &router, &auth).await == StatusCode::OK {
                    passed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let passed = passed.load(Ordering::Relaxed);
    println!(
        "| overshoot, two instances, limit 1,000/h, 3,000 requests | {passed} passed | {:+.2} % |",
        (passed as f64 - 1_000.0) / 10.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("| measurement | | | |");
        println!("|---|---|---|---|");
        match std::env::var("REDIS_URL") {
            Ok(url) => {
                redis_latency(&url).await;
                overshoot(&url).await;
            }
            Err(_) => eprintln!("REDIS_URL not set: the Redis parts are skipped"),
        }
        let db = std::env::temp_dir().join(format!("{}.db", unique("bench_credits")));
        let sqlite = SqliteStore::open(db.to_str().unwrap()).await.unwrap();
        sqlite.migrate().await.unwrap();
        for lease in [100, 1] {
            let rate = credits_per_second(sqlite.clone(), lease, 20_000).await;
            println!("| credits on SQLite, lease {lease} | {rate:.0} req/s | | |");
        }
        let _ = std::fs::remove_file(&db);
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => {
                let pg = PostgresStore::connect(&url).await.unwrap();
                pg.migrate().await.unwrap();
                for lease in [100, 1] {
                    let rate = credits_per_second(pg.clone(), lease, 20_000).await;
                    println!("| credits on PostgreSQL, lease {lease} | {rate:.0} req/s | | |");
                }
            }
            _ => eprintln!("DATABASE_URL is not PostgreSQL: that part is skipped"),
        }
    });
}
