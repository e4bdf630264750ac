use async_trait::async_trait;
use time::OffsetDateTime;

use super::{KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey};
use crate::key::{KeyHash, KeyId};
use crate::record::{AccountStanding, KeyRecord};
use crate::verify::{KeyVerifier, VerifyError};

/// A SQL store chosen at run time by URL: `postgres://…` (feature `postgres`) or a
/// SQLite path or `sqlite:` URL (feature `sqlite`). What the examples and the `apikeys`
/// CLI use to honour `DATABASE_URL`.
///
/// ```no_run
/// use tower_api_keys::store::SqlStore;
/// # async fn run() -> Result<(), tower_api_keys::store::StoreError> {
/// let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "apikeys.db".into());
/// let store = SqlStore::open(&url).await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SqlStore {
    /// An embedded SQLite file.
    #[cfg(feature = "sqlite")]
    Sqlite(super::SqliteStore),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(super::PostgresStore),
}

impl SqlStore {
    /// Connects to `url`: PostgreSQL for `postgres://` / `postgresql://`, SQLite for
    /// anything else. Call [`migrate`](Self::migrate) before use.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(SqlStore::Postgres(
                super::PostgresStore::connect(url).await?,
            ));
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::Backend(
                "a postgres:// URL needs the `postgres` feature of tower-api-keys".into(),
            ));
        }
        #[cfg(feature = "sqlite")]
        return Ok(SqlStore::Sqlite(super::SqliteStore::open(url).await?));
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::Backend(
            "a SQLite path needs the `sqlite` feature of tower-api-keys".into(),
        ));
    }

    /// Creates or upgrades the tables.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            SqlStore::Sqlite(store) => store.migrate().await,
            #[cfg(feature = "postgres")]
            SqlStore::Postgres(store) => store.migrate().await,
        }
    }

    /// With PostgreSQL, starts the [`RevocationListener`](crate::invalidate::RevocationListener)
    /// for `cache`; with SQLite (one instance) there is nothing to listen to.
    #[cfg(feature = "postgres")]
    pub fn listen_for_revocations<V: KeyVerifier>(
        &self,
        cache: crate::CachedVerifier<V>,
    ) -> Option<crate::invalidate::RevocationListener> {
        match self {
            #[cfg(feature = "sqlite")]
            SqlStore::Sqlite(_) => None,
            SqlStore::Postgres(store) => Some(store.listen_for_revocations(cache)),
        }
    }

    fn inner(&self) -> &dyn KeyStore {
        match self {
            #[cfg(feature = "sqlite")]
            SqlStore::Sqlite(store) => store,
            #[cfg(feature = "postgres")]
            SqlStore::Postgres(store) => store,
        }
    }
}

forward_key_store!([impl KeyStore for SqlStore] |this| this.inner());

#[async_trait]
impl KeyVerifier for SqlStore {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        self.inner().verify(hash).await
    }
}
