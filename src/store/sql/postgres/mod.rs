//! The dialect for many instances: PostgreSQL, with `NOTIFY` in the transaction of
//! every change that affects verification, and the [`RevocationListener`] that hears
//! it on each instance.

mod listener;

pub use listener::RevocationListener;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use self::listener::Notice;
use super::{
    AFTER_KEY_COLUMNS, COUNT_ACTIVE_KEYS, Dialect, END_REPLACED_KEY_NOW, ENSURE_ACCOUNT,
    FIND_KEY_BY_HASH, FIND_KEY_BY_ID, GET_KEY, GET_STANDING, LIST_KEYS, MIGRATIONS_TABLE, Query,
    REVOKE_KEY, SET_STANDING, backend, bind_new_key, end_replaced_key_later_sql, insert_key_sql,
    read_key, read_standing, restrictions_json, update_key_sql,
};
use crate::key::{KeyHash, KeyId};
use crate::record::{AccountStanding, KeyRecord};
use crate::scope::Scopes;
use crate::store::{
    DEFAULT_ACTIVE_KEY_LIMIT, KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey,
};
use crate::verify::{Invalidate, KeyVerifier, VerifyError};

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    include_str!("../../../../migrations/postgres/0001_init.sql"),
)];
/// Serialises concurrent `migrate` calls from several instances.
const MIGRATION_LOCK: i64 = 0x7a_70_69_6b_65_79_73;
/// The default LISTEN/NOTIFY channel for revocations.
pub const DEFAULT_REVOCATION_CHANNEL: &str = "tower_api_keys_revoked";

/// The store for many instances: PostgreSQL. Every change that affects verification is
/// published on a LISTEN/NOTIFY channel in the same transaction (revocation, rotation
/// and reissue, updates of name, restrictions, scopes or expiry: by key id; billing
/// standing: by account), and every instance running a [`RevocationListener`] drops
/// the key (or the account's keys) from its cache. Cheap to clone (a pool handle).
///
/// ```no_run
/// use tower_api_keys::{CachedVerifier, store::PostgresStore};
/// # async fn run() -> Result<(), tower_api_keys::store::StoreError> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// let cache = CachedVerifier::new(store.clone());
/// let _listener = store.listen_for_revocations(cache.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    limit: usize,
    channel: Arc<str>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("limit", &self.limit)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// PostgreSQL: `TIMESTAMPTZ`, `JSONB`.
pub(crate) struct PostgresDialect;

impl Dialect for PostgresDialect {
    type Db = Postgres;
    const JSON_PARAM: &'static str = "$n::jsonb";
    const LEAST: &'static str = "LEAST";

    fn bind_text<'q>(query: Query<'q, Postgres>, value: Option<&'q str>) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn bind_bytes<'q>(query: Query<'q, Postgres>, value: &'q [u8]) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn bind_time<'q>(
        query: Query<'q, Postgres>,
        value: Option<OffsetDateTime>,
    ) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn text(row: &PgRow, index: usize) -> Result<Option<String>, sqlx::Error> {
        row.try_get(index)
    }

    fn time(row: &PgRow, index: usize) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        row.try_get(index)
    }

    fn int(row: &PgRow, index: usize) -> Result<i64, sqlx::Error> {
        row.try_get::<i32, _>(index).map(i64::from)
    }
}

fn key_info(row: &PgRow) -> Result<KeyInfo, StoreError> {
    read_key::<PostgresDialect>(row)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`). Call [`migrate`](Self::migrate) before use.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await
            .map_err(backend)?;
        Ok(Self::from_pool(pool))
    }

    /// A store on an existing pool.
    #[must_use]
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore {
            pool,
            limit: DEFAULT_ACTIVE_KEY_LIMIT,
            channel: DEFAULT_REVOCATION_CHANNEL.into(),
        }
    }

    /// Sets the most active keys per account and environment (default 50).
    #[must_use]
    pub fn with_active_key_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Sets the LISTEN/NOTIFY channel for revocations (default
    /// `tower_api_keys_revoked`); all instances sharing keys must use the same one.
    #[must_use]
    pub fn with_revocation_channel(mut self, channel: &str) -> Self {
        self.channel = channel.into();
        self
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The revocation channel.
    #[must_use]
    pub fn revocation_channel(&self) -> &str {
        &self.channel
    }

    /// Starts a background task that drops revoked keys from `cache` as other instances
    /// (or this one) revoke them. See [`RevocationListener`].
    pub fn listen_for_revocations(&self, cache: impl Invalidate) -> RevocationListener {
        RevocationListener::spawn(self.pool.clone(), self.channel.to_string(), cache)
    }

    /// Publishes `notice` on the channel; delivered to every listener when (and only
    /// if) `tx` commits.
    async fn notify(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        notice: &Notice,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&*self.channel)
            .bind(notice.payload())
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Creates or upgrades the tables. Safe to call on every start, from many
    /// instances at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let applied: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {MIGRATIONS_TABLE}"))
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query(&format!(
                "INSERT INTO {MIGRATIONS_TABLE} (version) VALUES ($1)"
            ))
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert(&self, key: StoredKey) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The account row is the lock: concurrent creates for one account queue here.
        sqlx::query(ENSURE_ACCOUNT)
            .bind(&key.account_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(&key.account_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // The old key first: a rotation of a key that is not active is NotFound,
        // whatever the count. (An error rolls the whole transaction back.)
        if let Some(replacement) = &key.replaces {
            let later;
            let sql = if replacement.ends_at <= OffsetDateTime::now_utc() {
                END_REPLACED_KEY_NOW
            } else {
                later = end_replaced_key_later_sql::<PostgresDialect>();
                &later
            };
            let ended = sqlx::query(sql)
                .bind(replacement.ends_at)
                .bind(replacement.id.as_str())
                .bind(&key.account_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if ended.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            self.notify(&mut tx, &Notice::Key(replacement.id.clone()))
                .await?;
        }
        let replaced = key.replaces.as_ref().map_or("", |r| r.id.as_str());
        let active: i64 = sqlx::query_scalar(COUNT_ACTIVE_KEYS)
            .bind(&key.account_id)
            .bind(key.environment.as_str())
            .bind(OffsetDateTime::now_utc())
            .bind(replaced)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if active >= self.limit as i64 {
            return Err(StoreError::LimitReached { limit: self.limit });
        }
        let (scopes, restrictions) = (
            key.scopes.to_space_separated(),
            restrictions_json(&key.restrictions),
        );
        let insert = insert_key_sql::<PostgresDialect>();
        bind_new_key::<PostgresDialect>(sqlx::query(&insert), &key, &scopes, &restrictions)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(key.info())
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(LIST_KEYS)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(key_info).collect()
    }

    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        let row = sqlx::query(GET_KEY)
            .bind(id.as_str())
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        key_info(&row)
    }

    async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let update = update_key_sql::<PostgresDialect>();
        let row = sqlx::query(&update)
            .bind(id.as_str())
            .bind(account_id)
            .bind(changes.name.as_deref())
            .bind(changes.restrictions.as_ref().map(restrictions_json))
            .bind(changes.scopes.as_ref().map(Scopes::to_space_separated))
            .bind(changes.expires_at.is_some())
            .bind(changes.expires_at.flatten())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        self.notify(&mut tx, &Notice::Key(id.clone())).await?;
        tx.commit().await.map_err(backend)?;
        key_info(&row)
    }

    async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query(REVOKE_KEY)
            .bind(id.as_str())
            .bind(account_id)
            .bind(crate::store::now_in_millis())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        self.notify(&mut tx, &Notice::Key(id.clone())).await?;
        tx.commit().await.map_err(backend)?;
        key_info(&row)
    }

    async fn touch(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = used.iter().map(|(id, _)| id.to_string()).collect();
        let times: Vec<OffsetDateTime> = used.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.at) \
             FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
        )
        .bind(ids)
        .bind(times)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let row = sqlx::query(FIND_KEY_BY_ID)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(key_info).transpose()
    }

    async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError> {
        let row = sqlx::query(GET_STANDING)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(row) => read_standing::<PostgresDialect>(&row, 0),
            None => Ok(AccountStanding::default()),
        }
    }

    async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(SET_STANDING)
            .bind(account_id)
            .bind(standing.past_due_since)
            .bind(i32::from(standing.grace_days))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        self.notify(&mut tx, &Notice::Account(account_id.to_owned()))
            .await?;
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl KeyVerifier for PostgresStore {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        let row = sqlx::query(FIND_KEY_BY_HASH)
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(VerifyError::backend)?;
        let Some(row) = row else { return Ok(None) };
        let standing = read_standing::<PostgresDialect>(&row, AFTER_KEY_COLUMNS)
            .map_err(VerifyError::backend)?;
        let info = key_info(&row).map_err(VerifyError::backend)?;
        Ok(Some(info.to_record().with_standing(standing)))
    }
}
