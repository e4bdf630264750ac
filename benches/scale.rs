//! Behaviour at scale, printed (never asserted as timings): `cargo bench --bench scale`.
//!
//! - stampede: 1,000 concurrent first requests on one uncached key → verifier calls;
//! - flood: 10,000 distinct malformed keys → verifier calls;
//! - memory: resident-set growth per cached key at 1M keys, record included.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::ServiceExt;
use tower_api_keys::key::{Environment, KeyFormat, KeyHash};
use tower_api_keys::store::{KeyStore, MemoryStore, NewKey};
use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyRecord, KeyVerifier, VerifyError};

struct SlowCounting {
    inner: MemoryStore,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl KeyVerifier for SlowCounting {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.verify(hash).await
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let key = runtime
        .block_on(store.create(&format, NewKey::new("acct", "k", Environment::LIVE)))
        .unwrap()
        .key;
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CachedVerifier::new(SlowCounting {
        inner: store,
        calls: Arc::clone(&calls),
    });
    let app = support::router()
        .layer(ApiKeyLayer::new(format.clone(), cache))
        .with_state(());

    let auth = http::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).unwrap();
    let statuses = runtime.block_on(async {
        let requests: Vec<_> = (0..1_000)
            .map(|_| {
                let (app, auth) = (app.clone(), auth.clone());
                tokio::spawn(
                    async move { app.oneshot(support::request(&auth)).await.unwrap().status() },
                )
            })
            .collect();
        let mut ok = 0;
        for request in requests {
            ok += usize::from(request.await.unwrap() == 200);
        }
        ok
    });
    println!(
        "stampede: 1,000 concurrent first requests, {statuses} answered 200, verifier calls: {}",
        calls.load(Ordering::SeqCst)
    );

    let before = calls.load(Ordering::SeqCst);
    let rejected = runtime.block_on(async {
        let mut rejected = 0;
        for i in 0..10_000u32 {
            let mut bytes = format
                .generate(&Environment::LIVE)
                .expose_secret()
                .as_bytes()
                .to_vec();
            let at = 8 + (i as usize % 43);
            bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
            let auth =
                http::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &bytes].concat()).unwrap();
            rejected += usize::from(
                app.clone()
                    .oneshot(support::request(&auth))
                    .await
                    .unwrap()
                    .status()
                    == 401,
            );
        }
        rejected
    });
    println!(
        "flood: 10,000 distinct malformed keys, {rejected} answered 401, verifier calls: {}",
        calls.load(Ordering::SeqCst) - before
    );

    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 1_000_000;
    let hashes = support::hashes(n);
    let base = rss_bytes();
    let cache = support::filled_cache(&single, &hashes);
    let grown = rss_bytes().saturating_sub(base);
    println!(
        "memory: {} entries cached, resident set grew {:.1} MiB: {} bytes per cached key (record included)",
        cache.stats().entries,
        grown as f64 / (1024.0 * 1024.0),
        grown / n as u64
    );
}
