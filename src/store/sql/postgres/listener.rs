//! Changes that reach every instance.
//!
//! On one instance, [`KeyManager`](crate::manage::KeyManager) invalidates the local
//! cache at once after every change. Across instances sharing a PostgreSQL database,
//! [`PostgresStore`](super::PostgresStore) publishes each change that affects
//! verification with `NOTIFY`, in the transaction that makes it: the key id for a
//! revocation, a rotation or reissue (the old key, ending now or at the end of its
//! overlap), an update of name, restrictions, scopes or expiry; the account id for a
//! change of billing standing. Each instance's [`RevocationListener`] drops that key
//! (or every cached key of that account) from its cache, so the next request is
//! verified against the store; a key whose overlap ends is then cached with its new
//! expiry and stops working when it ends, on every instance.
//!
//! If the listener's connection drops, notifications sent meanwhile are lost; so on
//! every reconnect the listener clears its whole cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use crate::key::KeyId;
use crate::verify::Invalidate;

/// What a notification names: one key, or every key of an account. The payload is the
/// bare key id (as earlier versions send and read it, so instances of both versions
/// understand each other during a rolling upgrade) or `account <id>`; `key <id>` is read
/// too. Generated key ids hold no space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    Key(KeyId),
    Account(String),
}

impl Notice {
    pub(crate) fn payload(&self) -> String {
        match self {
            Notice::Key(id) => id.to_string(),
            Notice::Account(account) => format!("account {account}"),
        }
    }

    pub(crate) fn parse(payload: &str) -> Self {
        match payload.split_once(' ') {
            Some(("account", account)) => Notice::Account(account.to_owned()),
            Some(("key", id)) => Notice::Key(KeyId::new(id)),
            _ => Notice::Key(KeyId::new(payload)),
        }
    }
}

/// A background task that LISTENs for changes (revocations, rotations, updates,
/// standing) and invalidates a cache. The task
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
    pub fn spawn(pool: PgPool, channel: String, cache: impl Invalidate) -> Self {
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

async fn run(pool: PgPool, channel: String, cache: impl Invalidate, connections: Arc<AtomicU64>) {
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
                Ok(Some(notification)) => match Notice::parse(notification.payload()) {
                    Notice::Key(id) => cache.invalidate_key_id(&id),
                    Notice::Account(account) => cache.invalidate_account(&account),
                },
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

#[cfg(test)]
mod tests {
    use super::Notice;
    use crate::key::KeyId;

    #[test]
    fn notices_round_trip_and_bare_payloads_are_key_ids() {
        for notice in [
            Notice::Key(KeyId::new("ak_1")),
            Notice::Key(KeyId::new("key_1")),
            Notice::Account("acct 1".into()),
        ] {
            assert_eq!(Notice::parse(&notice.payload()), notice);
        }
        assert_eq!(Notice::Key(KeyId::new("ak_old")).payload(), "ak_old");
        assert_eq!(Notice::parse("key ak_2"), Notice::Key(KeyId::new("ak_2")));
    }
}
