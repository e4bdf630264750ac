//! The embedded dialect: SQLite, times as milliseconds since the epoch.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

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
use crate::verify::{KeyVerifier, VerifyError};

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../../migrations/sqlite/0001_init.sql"))];

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
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
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
                "INSERT INTO {MIGRATIONS_TABLE} (version, applied_at) VALUES (?, ?)"
            ))
            .bind(version)
            .bind(to_ms(OffsetDateTime::now_utc()))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
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
    async fn insert(&self, key: StoredKey) -> Result<KeyInfo, StoreError> {
        let mut tx = self.write_transaction().await?;
        sqlx::query(ENSURE_ACCOUNT)
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
                later = end_replaced_key_later_sql::<SqliteDialect>();
                &later
            };
            let ended = sqlx::query(sql)
                .bind(to_ms(replacement.ends_at))
                .bind(replacement.id.as_str())
                .bind(&key.account_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if ended.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        let replaced = key.replaces.as_ref().map_or("", |r| r.id.as_str());
        let active: i64 = sqlx::query_scalar(COUNT_ACTIVE_KEYS)
            .bind(&key.account_id)
            .bind(key.environment.as_str())
            .bind(to_ms(OffsetDateTime::now_utc()))
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
        let insert = insert_key_sql::<SqliteDialect>();
        bind_new_key::<SqliteDialect>(sqlx::query(&insert), &key, &scopes, &restrictions)
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
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
            .into_iter()
            .next()
            .ok_or(StoreError::NotFound)?;
        key_info(&row)
    }

    async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<KeyInfo, StoreError> {
        // `fetch_all` everywhere, never `fetch_optional`: a statement not stepped to
        // completion keeps its transaction open on the pooled connection, so an
        // `UPDATE … RETURNING` would not be committed yet when this returns, and a
        // `SELECT` would keep a read snapshot that later queries on that connection
        // share (the soak test caught revoked keys accepted for milliseconds).
        let update = update_key_sql::<SqliteDialect>();
        let rows = sqlx::query(&update)
            .bind(id.as_str())
            .bind(account_id)
            .bind(changes.name.as_deref())
            .bind(changes.restrictions.as_ref().map(restrictions_json))
            .bind(changes.scopes.as_ref().map(Scopes::to_space_separated))
            .bind(changes.expires_at.is_some())
            .bind(changes.expires_at.flatten().map(to_ms))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        key_info(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        // Stepped to completion (see `update`): the revocation is committed on return.
        let rows = sqlx::query(REVOKE_KEY)
            .bind(id.as_str())
            .bind(account_id)
            .bind(to_ms(OffsetDateTime::now_utc()))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        key_info(rows.first().ok_or(StoreError::NotFound)?)
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
        let row = sqlx::query(FIND_KEY_BY_ID)
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
            .into_iter()
            .next();
        row.as_ref().map(key_info).transpose()
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

    async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), StoreError> {
        sqlx::query(SET_STANDING)
            .bind(account_id)
            .bind(standing.past_due_since.map(to_ms))
            .bind(i64::from(standing.grace_days))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
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
        let info = key_info(&row).map_err(VerifyError::backend)?;
        Ok(Some(info.to_record().with_standing(standing)))
    }
}
