//! The embedded dialect: SQLite, times as milliseconds since the epoch.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{
    AFTER_KEY_COLUMNS, Dialect, FIND_KEY_BY_HASH, GET_ACCOUNT_LIMITS, GET_STANDING, Query,
    SET_STANDING, append_event, backend, fetch_key, fetch_keys, find_key_by_id, get_key, list_keys,
    read_account_limits, read_key, read_standing,
};
use crate::audit::{Audit, AuditEvent, AuditPage, AuditQuery};
use crate::key::{KeyHash, KeyId};
use crate::limit::credits::{CreditError, CreditGrant, CreditStore, CreditSubject};
use crate::record::{AccountLimits, AccountStanding, KeyLimits, KeyRecord};
use crate::store::{
    DEFAULT_ACTIVE_KEY_LIMIT, ImportOutcome, KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey,
    check_importable, standing_event,
};
use crate::verify::{KeyVerifier, VerifyError};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_provenance.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_limits.sql"),
    ),
    (4, include_str!("../../../migrations/sqlite/0004_audit.sql")),
    (5, include_str!("../../../migrations/sqlite/0005_usage.sql")),
];

/// The embedded store: one SQLite file (WAL mode), for one process. Keys survive
/// restarts. Cheap to clone (a pool handle).
///
/// ```no_run
/// use tower_api_keys::store::SqliteStore;
/// # async fn run() -> Result<(), tower_api_keys::store::StoreError> {
/// let store = SqliteStore::open("apikeys.db").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// For many instances sharing keys (and revocations), use
/// [`PostgresStore`](crate::store::PostgresStore).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    limit: usize,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn to_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// SQLite: times in milliseconds, JSON as text.
pub(crate) struct SqliteDialect;

impl Dialect for SqliteDialect {
    type Db = Sqlite;
    const JSON_PARAM: &'static str = "$n";
    const LEAST: &'static str = "MIN";
    const CREATE_MIGRATIONS_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS tower_api_keys_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)";
    const LOCK_MIGRATIONS: Option<&'static str> = None;
    const LOCK_ACCOUNT: Option<&'static str> = None;

    const LOCK_ROW: &'static str = "";

    fn bind_int<'q>(query: Query<'q, Sqlite>, value: i64) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn bind_opt_int<'q>(query: Query<'q, Sqlite>, value: Option<i64>) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn opt_int(row: &SqliteRow, index: usize) -> Result<Option<i64>, sqlx::Error> {
        row.try_get(index)
    }

    fn bind_bool<'q>(query: Query<'q, Sqlite>, value: bool) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn bind_text<'q>(query: Query<'q, Sqlite>, value: Option<&'q str>) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn bind_bytes<'q>(query: Query<'q, Sqlite>, value: &'q [u8]) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn bind_time<'q>(query: Query<'q, Sqlite>, value: Option<OffsetDateTime>) -> Query<'q, Sqlite> {
        query.bind(value.map(to_ms))
    }

    fn text(row: &SqliteRow, index: usize) -> Result<Option<String>, sqlx::Error> {
        row.try_get(index)
    }

    fn time(row: &SqliteRow, index: usize) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        row.try_get::<Option<i64>, _>(index)?
            .map(from_ms)
            .transpose()
    }

    fn int(row: &SqliteRow, index: usize) -> Result<i64, sqlx::Error> {
        row.try_get(index)
    }
}

fn key_info(row: &SqliteRow) -> Result<KeyInfo, StoreError> {
    read_key::<SqliteDialect>(row)
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`, a file path or a
    /// `sqlite:` URL. Call [`migrate`](Self::migrate) before use.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let options = if path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path).map_err(backend)?
        } else {
            SqliteConnectOptions::new().filename(path)
        };
        let in_memory = path.contains(":memory:") || path.contains("mode=memory");
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let mut pool = SqlitePoolOptions::new().max_connections(4);
        if in_memory {
            // Every connection to `:memory:` is a database of its own, gone when closed:
            // keep exactly one, forever.
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await.map_err(backend)?;
        Ok(Self::from_pool(pool))
    }

    /// A store on an existing pool.
    #[must_use]
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            limit: DEFAULT_ACTIVE_KEY_LIMIT,
        }
    }

    /// Sets the most active keys per account and environment (default 50).
    #[must_use]
    pub fn with_active_key_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the tables. Safe to call on every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        super::migrate::<SqliteDialect>(&mut tx, MIGRATIONS).await?;
        tx.commit().await.map_err(backend)
    }

    /// A transaction holding SQLite's write lock from its first statement, so that a
    /// read followed by a write (count, then insert) cannot interleave with another.
    async fn write_transaction(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_audited(&self, key: StoredKey, audit: &Audit) -> Result<KeyInfo, StoreError> {
        let mut tx = self.write_transaction().await?;
        let info = super::insert_audited::<SqliteDialect>(&mut tx, &key, self.limit, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(info)
    }

    async fn import_audited(
        &self,
        keys: Vec<StoredKey>,
        audit: &Audit,
    ) -> Result<ImportOutcome, StoreError> {
        check_importable(&keys)?;
        let mut tx = self.write_transaction().await?;
        let outcome = super::import_audited::<SqliteDialect>(&mut tx, &keys, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        fetch_keys::<SqliteDialect, _>(&self.pool, list_keys::<SqliteDialect>(account_id)).await
    }

    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        fetch_key::<SqliteDialect, _>(&self.pool, get_key::<SqliteDialect>(account_id, id)).await
    }

    async fn update_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        // Every statement is stepped to completion (`fetch_all`, never
        // `fetch_optional`): one that is not keeps its transaction open on the pooled
        // connection, so an `UPDATE … RETURNING` would not be committed yet when this
        // returns, and a `SELECT` would keep a read snapshot that later queries on that
        // connection share (the soak test caught revoked keys accepted for
        // milliseconds).
        let mut tx = self.write_transaction().await?;
        let key =
            super::update_audited::<SqliteDialect>(&mut tx, account_id, id, changes, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(key)
    }

    async fn revoke_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        let mut tx = self.write_transaction().await?;
        let (key, _) =
            super::revoke_audited::<SqliteDialect>(&mut tx, account_id, id, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(key)
    }

    async fn touch(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let batch: Vec<(&str, i64)> = used
            .iter()
            .map(|(id, at)| (id.as_str(), to_ms(*at)))
            .collect();
        let batch = serde_json::to_string(&batch).map_err(|e| StoreError::Backend(Box::new(e)))?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), u.value ->> '$[1]') \
             FROM json_each(?) AS u WHERE api_keys.id = u.value ->> '$[0]'",
        )
        .bind(batch)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let keys = fetch_keys::<SqliteDialect, _>(&self.pool, find_key_by_id::<SqliteDialect>(id));
        Ok(keys.await?.into_iter().next())
    }

    async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError> {
        let row = sqlx::query(GET_STANDING)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
            .into_iter()
            .next();
        match row {
            Some(row) => read_standing::<SqliteDialect>(&row, 0),
            None => Ok(AccountStanding::default()),
        }
    }

    async fn set_standing_audited(
        &self,
        account_id: &str,
        standing: AccountStanding,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        let rows = sqlx::query(GET_STANDING)
            .bind(account_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let before = match rows.first() {
            Some(row) => read_standing::<SqliteDialect>(row, 0)?,
            None => AccountStanding::default(),
        };
        sqlx::query(SET_STANDING)
            .bind(account_id)
            .bind(standing.past_due_since.map(to_ms))
            .bind(i64::from(standing.grace_days))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let event = standing_event(audit, account_id, before, standing);
        append_event::<SqliteDialect>(&mut tx, event).await?;
        tx.commit().await.map_err(backend)
    }

    async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, StoreError> {
        let rows = sqlx::query(GET_ACCOUNT_LIMITS)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        match rows.first() {
            Some(row) => read_account_limits::<SqliteDialect>(row, 0),
            None => Ok(AccountLimits::none()),
        }
    }

    async fn set_account_limits_audited(
        &self,
        account_id: &str,
        limits: &AccountLimits,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        super::set_account_limits_audited::<SqliteDialect>(&mut tx, account_id, limits, audit)
            .await?;
        tx.commit().await.map_err(backend)
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        super::audit_events::<SqliteDialect, _>(&self.pool, query).await
    }

    async fn audit_trail(&self, account_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        super::audit_trail::<SqliteDialect, _>(&self.pool, account_id).await
    }

    async fn audited_accounts(&self) -> Result<Vec<String>, StoreError> {
        super::audited_accounts::<SqliteDialect, _>(&self.pool).await
    }

    async fn record_usage(&self, buckets: &[crate::store::UsageBucket]) -> Result<(), StoreError> {
        if buckets.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        super::record_usage::<SqliteDialect>(&mut tx, buckets).await?;
        tx.commit().await.map_err(backend)
    }

    async fn usage(
        &self,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<crate::store::UsageBucket>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        super::usage::<SqliteDialect>(&mut conn, id, from, to).await
    }

    async fn usage_totals(
        &self,
        account_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        super::usage_totals::<SqliteDialect, _>(&self.pool, account_id, since).await
    }
}

#[async_trait]
impl CreditStore for SqliteStore {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        let mut tx = self.write_transaction().await?;
        let grant = super::take_credits::<SqliteDialect>(&mut tx, subject, want, now).await?;
        tx.commit().await.map_err(backend)?;
        Ok(grant)
    }

    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError> {
        if until.is_some_and(|until| OffsetDateTime::now_utc() >= until) {
            return Ok(());
        }
        super::return_credits::<SqliteDialect, _>(&self.pool, subject, units, epoch, until).await?;
        Ok(())
    }
}

#[async_trait]
impl KeyVerifier for SqliteStore {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        // `fetch_all`: see `update`.
        let row = sqlx::query(FIND_KEY_BY_HASH)
            .bind(&hash.as_bytes()[..])
            .fetch_all(&self.pool)
            .await
            .map_err(VerifyError::backend)?
            .into_iter()
            .next();
        let Some(row) = row else { return Ok(None) };
        let standing = read_standing::<SqliteDialect>(&row, AFTER_KEY_COLUMNS)
            .map_err(VerifyError::backend)?;
        let account = read_account_limits::<SqliteDialect>(&row, AFTER_KEY_COLUMNS + 2)
            .map_err(VerifyError::backend)?;
        let info = key_info(&row).map_err(VerifyError::backend)?;
        let limits = KeyLimits::new(info.ratelimits.clone(), info.credits, account);
        Ok(Some(
            info.to_record().with_standing(standing).with_limits(limits),
        ))
    }

    fn credit_store(&self) -> Option<Arc<dyn CreditStore>> {
        Some(Arc::new(self.clone()))
    }
}
