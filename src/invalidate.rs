//! Revocation that reaches every instance.
//!
//! On one instance, [`KeyManager::revoke`](crate::manage::KeyManager::revoke)
//! invalidates the local cache at once. Across instances sharing a PostgreSQL
//! database, [`PostgresStore::revoke`](crate::store::PostgresStore) publishes the key id
//! with `NOTIFY` in the revoking transaction, and each instance's
//! [`RevocationListener`] drops that key from its cache.
//!
//! If the listener's connection drops, notifications sent meanwhile are lost; so on
//! every reconnect the listener clears its whole cache.

#[cfg(feature = "postgres")]
pub use self::postgres::RevocationListener;

#[cfg(feature = "postgres")]
mod postgres {
    use std::fmt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use sqlx::postgres::{PgListener, PgPool};

    use crate::cache::CachedVerifier;
    use crate::key::KeyId;
    use crate::verify::KeyVerifier;

    /// A background task that LISTENs for revocations and invalidates a cache. The task
    /// stops when this handle is dropped.
    pub struct RevocationListener {
        task: tokio::task::JoinHandle<()>,
        connections: Arc<AtomicU64>,
    }

    impl fmt::Debug for RevocationListener {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RevocationListener")
                .field("connections", &self.connections())
                .finish_non_exhaustive()
        }
    }

    impl Drop for RevocationListener {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl RevocationListener {
        /// Listens on `channel` through `pool` (needs a Tokio runtime).
        pub fn spawn<V: KeyVerifier>(
            pool: PgPool,
            channel: String,
            cache: CachedVerifier<V>,
        ) -> Self {
            let connections = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(run(pool, channel, cache, Arc::clone(&connections)));
            RevocationListener { task, connections }
        }

        /// How many times the listener has (re)connected and subscribed: 1 after the
        /// first start, more after reconnects.
        #[must_use]
        pub fn connections(&self) -> u64 {
            self.connections.load(Ordering::Acquire)
        }
    }

    async fn run<V: KeyVerifier>(
        pool: PgPool,
        channel: String,
        cache: CachedVerifier<V>,
        connections: Arc<AtomicU64>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = match subscribe(&pool, &channel).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "revocation listener cannot connect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // Revocations may have been missed while not subscribed (also before the
            // first subscription: requests may have filled the cache meanwhile).
            cache.invalidate_all();
            if connections.fetch_add(1, Ordering::AcqRel) > 0 {
                tracing::info!("revocation listener reconnected; cache cleared");
            }
            let subscribed_at = tokio::time::Instant::now();
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        cache.invalidate_key_id(&KeyId::new(notification.payload()));
                    }
                    Ok(None) => {
                        tracing::warn!("revocation listener lost its connection");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "revocation listener failed");
                        break;
                    }
                }
            }
            // A connection that keeps dying at once must not spin.
            if subscribed_at.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }

    async fn subscribe(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        Ok(listener)
    }
}
