//! Under concurrent lookups, a key is never served unrevoked once its invalidation has
//! returned: not from the hot table, not from moka, not from a flight that started
//! before it. (This test caught moka's lazy predicate invalidation serving revoked keys
//! for a moment.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod support;

use support::create::{NewKey, StoreForTests as _};
use tower_api_keys::CachedVerifier;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::store::{KeyStore, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_is_served_unrevoked_after_its_invalidation_returned() {
    let store = MemoryStore::new().with_active_key_limit(1_000);
    let cache = CachedVerifier::new(store.clone());
    let format = KeyFormat::new("sk");
    let violations = Arc::new(AtomicUsize::new(0));
    let lookups = Arc::new(AtomicUsize::new(0));
    for round in 0..150u64 {
        let created = store
            .create(&format, NewKey::new("acct", "k", Environment::LIVE))
            .await
            .unwrap();
        let hash = created.key.hash();
        let revoked = Arc::new(AtomicBool::new(false));
        let stop = Instant::now() + Duration::from_millis(20);
        let readers: Vec<_> = (0..6)
            .map(|_| {
                let (cache, revoked) = (cache.clone(), revoked.clone());
                let (violations, lookups) = (violations.clone(), lookups.clone());
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let after_revocation = revoked.load(Ordering::SeqCst);
                        // What the layer does: the cache, else the verifier.
                        let found = cache.lookup(&hash).await.unwrap();
                        lookups.fetch_add(1, Ordering::Relaxed);
                        if let Some(record) = found {
                            if after_revocation && !record.is_revoked() {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(round % 8)).await;
        store.revoke("acct", &created.info.id).await.unwrap();
        if round % 3 == 0 {
            cache.invalidate(&hash);
        } else if round % 3 == 1 {
            cache.invalidate_key_id(&created.info.id);
        } else {
            cache.invalidate_account("acct");
        }
        revoked.store(true, Ordering::SeqCst);
        for reader in readers {
            reader.await.unwrap();
        }
    }
    assert!(lookups.load(Ordering::Relaxed) > 10_000);
    assert_eq!(violations.load(Ordering::SeqCst), 0);
}
