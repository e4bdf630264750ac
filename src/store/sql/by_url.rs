use async_trait::async_trait;
use time::OffsetDateTime;

use crate::key::{KeyHash, KeyId};
use crate::limit::credits::{CreditError, CreditGrant, CreditStore, CreditSubject};
use crate::record::{AccountLimits, AccountStanding, KeyRecord};
use crate::store::{KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey};
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
    Sqlite(super::sqlite::SqliteStore),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(super::postgres::PostgresStore),
}

impl SqlStore {
    /// Connects to `url`: PostgreSQL for `postgres://` / `postgresql://`, SQLite for
    /// anything else. Call [`migrate`](Self::migrate) before use.
    ///
    /// A failure names where it tried to connect without credentials or parameters
    /// (`could not connect to the database at db.internal:5432/app: …`), so that the
    /// error can be logged or printed.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url).await.map_err(|error| {
            StoreError::Backend(
                format!(
                    "could not connect to the database at {}: {}",
                    location(url),
                    match &error {
                        StoreError::Backend(cause) => scrub(&cause.to_string(), url),
                        other => scrub(&other.to_string(), url),
                    }
                )
                .into(),
            )
        })
    }

    async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(SqlStore::Postgres(
                super::postgres::PostgresStore::connect(url).await?,
            ));
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::Backend(
                "a postgres:// URL needs the `postgres` feature of tower-api-keys".into(),
            ));
        }
        #[cfg(feature = "sqlite")]
        return Ok(SqlStore::Sqlite(
            super::sqlite::SqliteStore::open(url).await?,
        ));
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

    /// With PostgreSQL, starts the [`RevocationListener`](super::postgres::RevocationListener)
    /// for `cache`; with SQLite (one instance) there is nothing to listen to.
    #[cfg(feature = "postgres")]
    pub fn listen_for_revocations(
        &self,
        cache: impl crate::verify::Invalidate,
    ) -> Option<super::postgres::RevocationListener> {
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

    fn credit_store(&self) -> Option<std::sync::Arc<dyn CreditStore>> {
        self.inner().credit_store()
    }
}

#[async_trait]
impl CreditStore for SqlStore {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        self.inner().take_credits(subject, want, now).await
    }

    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError> {
        self.inner()
            .return_credits(subject, units, epoch, until)
            .await
    }
}

/// Where `url` points, without user, password, query or fragment: `host:port/db` for
/// `postgres://user:secret@host:port/db?sslmode=…`, the path for SQLite. A password
/// typed without percent-encoding may hold `/`, `?` or `#`: the user part ends at the
/// last `@`.
pub(crate) fn location(url: &str) -> &str {
    let rest = ["postgres://", "postgresql://", "sqlite://", "sqlite:"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .unwrap_or(url);
    let rest = match (url.starts_with("postgres"), rest.rfind('@')) {
        (true, Some(at)) => &rest[at + 1..],
        _ => rest,
    };
    rest.split(['?', '#']).next().unwrap_or_default()
}

/// `message` with the user part of `url` (everything before its last `@`) and the
/// password in it (as written, and percent-decoded) replaced.
fn scrub(message: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let Some((userinfo, _)) = rest.rsplit_once('@') else {
        return message.to_owned();
    };
    let mut scrubbed = message.to_owned();
    for secret in [
        Some(userinfo),
        userinfo.split_once(':').map(|(_, password)| password),
    ]
    .into_iter()
    .flatten()
    .filter(|secret| !secret.is_empty())
    {
        scrubbed = scrubbed.replace(secret, "***");
        if let Some(decoded) = crate::percent::decode(secret) {
            scrubbed = scrubbed.replace(&*decoded, "***");
        }
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_carry_no_credentials() {
        assert_eq!(
            location("postgres://app:s3cr%40t@db.internal:5432/keys?sslmode=require&password=x"),
            "db.internal:5432/keys"
        );
        assert_eq!(location("postgresql://u@[::1]:5432/k"), "[::1]:5432/k");
        assert_eq!(location("postgres://db/k"), "db/k");
        // Unencoded `/`, `?`, `#` in a password.
        assert_eq!(
            location("postgres://app:p/ss?x#y@db:5432/k?a=b"),
            "db:5432/k"
        );
        assert_eq!(location("sqlite://apikeys.db?mode=rwc"), "apikeys.db");
        assert_eq!(location("apikeys.db"), "apikeys.db");
    }

    #[test]
    fn passwords_are_scrubbed_from_messages() {
        let url = "postgres://app:s3cr%40t@db:5432/k";
        assert_eq!(
            scrub("auth failed for app:s3cr%40t and s3cr@t", url),
            "auth failed for *** and ***"
        );
        assert_eq!(scrub("no secret here", "postgres://db/k"), "no secret here");
        assert_eq!(
            scrub("bad p/ss?x#y", "postgres://app:p/ss?x#y@db/k"),
            "bad ***"
        );
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_failed_connection_names_the_place_not_the_password() {
        // A port that does not parse: refused at once, before any connection.
        let url = "postgres://app:hunter2@127.0.0.1:99999/keys?password=hunter2";
        let error = SqlStore::open(url).await.unwrap_err().to_string();
        assert!(
            error.contains("could not connect to the database at 127.0.0.1:99999/keys"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
}
