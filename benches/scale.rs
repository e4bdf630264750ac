//! Behaviour at scale, printed (never asserted as timings): `cargo bench --bench scale`.
//!
//! - stampede: 1,000 concurrent first requests on one uncached key → verifier calls;
//! - flood: 10,000 distinct malformed keys → verifier calls;
//! - memory: resident-set growth per cached key at 1M keys, record included;
//! - invalidation: one key id invalidated in a cache of 1,000,000 keys against one of
//!   1,000 (same run), and the hits of other keys while one thread floods
//!   invalidations (what a loop of `DELETE` on a revoked key triggers) against no flood.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::ServiceExt;
use tower_api_keys::key::KeyId;
use tower_api_keys::key::{Environment, KeyFormat, KeyHash};
use tower_api_keys::manage::NewKey;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyRecord, KeyVerifier, VerifyError};
use tower_api_keys::{KeyManager, MemoryStore};

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
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = runtime
        .block_on(manager.create_for_account("acct", Environment::LIVE, NewKey::named("k")))
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

    invalidation(&single, &hashes, &cache);
}

/// The id the cache holds for `hash`.
fn id_of<V: KeyVerifier>(cache: &CachedVerifier<V>, hash: &KeyHash) -> KeyId {
    assert!(cache.is_cached(hash), "not cached");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match runtime.block_on(cache.lookup(hash)) {
        Ok(Some(record)) => record.id.clone(),
        _ => panic!("not cached"),
    }
}

/// Median time of `invalidate_key_id` over 1,000 distinct keys of `cache`.
fn median_invalidation<V: KeyVerifier>(cache: &CachedVerifier<V>, hashes: &[KeyHash]) -> Duration {
    let step = hashes.len() / 1_000;
    let ids: Vec<KeyId> = (0..1_000)
        .map(|i| id_of(cache, &hashes[i * step]))
        .collect();
    let mut times: Vec<Duration> = ids
        .iter()
        .map(|id| {
            let started = Instant::now();
            cache.invalidate_key_id(id);
            started.elapsed()
        })
        .collect();
    times.sort();
    for i in 0..1_000 {
        assert!(!cache.is_cached(&hashes[i * step]), "invalidated");
    }
    times[times.len() / 2]
}

/// Hits per second of `hot` keys on one thread for 1 s, with another thread calling
/// `invalidate_key_id` in a loop on `flood` (if given). Returns (hits/s, misses, invalidations).
fn hits_during<V: KeyVerifier>(
    cache: &CachedVerifier<V>,
    hot: &[KeyHash],
    flood: Option<&[KeyId]>,
) -> (f64, u64, u64) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flooder = flood.map(|ids| {
            let stop = &stop;
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    cache.invalidate_key_id(&ids[n as usize % ids.len()]);
                    n += 1;
                }
                n
            })
        });
        let started = Instant::now();
        let (mut hits, mut misses) = (0u64, 0u64);
        while started.elapsed() < Duration::from_secs(1) {
            for hash in hot {
                if cache.is_cached(hash) {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
        }
        let rate = hits as f64 / started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let invalidations = flooder.map_or(0, |f| f.join().unwrap());
        (rate, misses, invalidations)
    })
}

fn invalidation(
    runtime: &tokio::runtime::Runtime,
    hashes: &[KeyHash],
    big: &CachedVerifier<support::KnowsEveryKey>,
) {
    let small_hashes = support::hashes(2_000);
    let small = support::filled_cache(runtime, &small_hashes);
    // Alternate small and big, 5 rounds each, on fresh keys every round.
    let (mut at_1k, mut at_1m) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let refill = |cache: &CachedVerifier<support::KnowsEveryKey>, keys: &[KeyHash]| {
            runtime.block_on(async {
                for hash in keys {
                    cache.lookup(hash).await.unwrap();
                }
            });
        };
        refill(&small, &small_hashes[..1_000]);
        at_1k.push(median_invalidation(&small, &small_hashes[..1_000]));
        let chunk = &hashes[round * 100_000..(round + 1) * 100_000];
        at_1m.push(median_invalidation(big, chunk));
    }
    at_1k.sort();
    at_1m.sort();
    let (k, m) = (at_1k[2], at_1m[2]);
    println!(
        "invalidation by key id: median {m:?} with 1,000,000 keys cached, {k:?} with 1,000: ratio {:.2}",
        m.as_secs_f64() / k.as_secs_f64()
    );

    // Other keys' hits while a thread floods invalidations of keys no longer cached
    // (a DELETE loop on a revoked key), and of cached keys, against no flood.
    let hot = &hashes[600_000..601_000];
    for hash in hot {
        assert!(big.is_cached(hash));
    }
    let revoked: Vec<KeyId> = (0..100)
        .map(|i| KeyId::new(format!("ak_revoked_{i}")))
        .collect();
    let cached: Vec<KeyId> = hashes[700_000..800_000]
        .iter()
        .map(|hash| id_of(big, hash))
        .collect();
    let (mut quiet, mut revoked_flood, mut cached_flood) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut flooded) = (0, 0);
    for _ in 0..3 {
        quiet.push(hits_during(big, hot, None).0);
        let (rate, misses, n) = hits_during(big, hot, Some(&revoked));
        revoked_flood.push(rate);
        lost += misses;
        flooded += n;
        let (rate, misses, n) = hits_during(big, hot, Some(&cached));
        cached_flood.push(rate);
        lost += misses;
        flooded += n;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (q, r, c) = (
        median(&mut quiet),
        median(&mut revoked_flood),
        median(&mut cached_flood),
    );
    println!(
        "hits of 1,000 other keys during an invalidation flood ({flooded} invalidations in 6 s): \
         {lost} misses; hit rate vs no flood: {:.2} (revoked ids), {:.2} (cached keys); \
         no flood {:.1} M hits/s",
        r / q,
        c / q,
        q / 1e6
    );
}
