use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::sql::{
    AFTER_KEY_COLUMNS, KEY_COLUMNS, KeyColumns, MIGRATIONS_TABLE, RETURNING_COLUMNS, backend,
    grace_days, restrictions_json,
};
use super::{DEFAULT_ACTIVE_KEY_LIMIT, KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey};
use crate::key::{KeyHash, KeyId};
use crate::record::{AccountStanding, KeyRecord};
use crate::scope::Scopes;
use crate::verify::{KeyVerifier, VerifyError};

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/sqlite/0001_init.sql"))];

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
/// [`PostgresStore`](super::PostgresStore).
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

fn opt_from_ms(ms: Option<i64>) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    ms.map(from_ms).transpose()
}

fn key_columns(row: &SqliteRow) -> Result<KeyColumns, sqlx::Error> {
    Ok(KeyColumns {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        project_id: row.try_get(2)?,
        name: row.try_get(3)?,
        hint: row.try_get(4)?,
        prefix: row.try_get(5)?,
        environment: row.try_get(6)?,
        scopes: row.try_get(7)?,
        created_at: from_ms(row.try_get(8)?)?,
        last_used_at: opt_from_ms(row.try_get(9)?)?,
        expires_at: opt_from_ms(row.try_get(10)?)?,
        revoked_at: opt_from_ms(row.try_get(11)?)?,
        restrictions: row.try_get(12)?,
    })
}

fn key_info(row: &SqliteRow) -> Result<KeyInfo, StoreError> {
    key_columns(row).map_err(backend)?.into_info()
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
        sqlx::query("INSERT INTO accounts (id) VALUES (?) ON CONFLICT (id) DO NOTHING")
            .bind(&key.key.account_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // The old key first: a rotation of a key that is not active is NotFound,
        // whatever the count. (An error rolls the whole transaction back.)
        if let Some(replacement) = &key.replaces {
            let ended = if replacement.ends_at <= OffsetDateTime::now_utc() {
                sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND account_id = ? AND revoked_at IS NULL")
                    .bind(to_ms(replacement.ends_at))
            } else {
                sqlx::query(
                    "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?), ?) \
                     WHERE id = ? AND account_id = ? AND revoked_at IS NULL",
                )
                .bind(to_ms(replacement.ends_at))
                .bind(to_ms(replacement.ends_at))
            }
            .bind(replacement.id.as_str())
            .bind(&key.key.account_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if ended.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        let replaced = key.replaces.as_ref().map_or("", |r| r.id.as_str());
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE account_id = ? AND environment = ? \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) AND id <> ?",
        )
        .bind(&key.key.account_id)
        .bind(key.key.environment.as_str())
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(replaced)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if active >= self.limit as i64 {
            return Err(StoreError::LimitReached { limit: self.limit });
        }
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, project_id, name, key_hash, hint, prefix, environment, scopes, created_at, expires_at, restrictions) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.id.as_str())
        .bind(&key.key.account_id)
        .bind(&key.key.project_id)
        .bind(&key.key.name)
        .bind(&key.hash.as_bytes()[..])
        .bind(&key.hint)
        .bind(&key.prefix)
        .bind(key.key.environment.as_str())
        .bind(key.key.scopes.to_space_separated())
        .bind(to_ms(key.created_at))
        .bind(key.key.expires_at.map(to_ms))
        .bind(restrictions_json(&key.key.restrictions))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(key.info())
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.account_id = ? AND k.revoked_at IS NULL ORDER BY k.created_at, k.id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(key_info).collect()
    }

    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ? AND k.account_id = ?"
        ))
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
        let rows = sqlx::query(&format!(
            "UPDATE api_keys SET name = COALESCE(?, name), restrictions = COALESCE(?, restrictions), \
             scopes = COALESCE(?, scopes), expires_at = CASE WHEN ? THEN ? ELSE expires_at END \
             WHERE id = ? AND account_id = ? AND revoked_at IS NULL RETURNING {RETURNING_COLUMNS}"
        ))
        .bind(changes.name.as_deref())
        .bind(changes.restrictions.as_ref().map(restrictions_json))
        .bind(changes.scopes.as_ref().map(Scopes::to_space_separated))
        .bind(changes.expires_at.is_some())
        .bind(changes.expires_at.flatten().map(to_ms))
        .bind(id.as_str())
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        key_info(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        // Stepped to completion (see `update`): the revocation is committed on return.
        let rows = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) \
             WHERE id = ? AND account_id = ? RETURNING {RETURNING_COLUMNS}"
        ))
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(id.as_str())
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        key_info(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, a.past_due_since, a.grace_days FROM api_keys k \
             JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = ?"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .into_iter()
        .next();
        let Some(row) = row else { return Ok(None) };
        let standing = AccountStanding {
            past_due_since: opt_from_ms(row.try_get(AFTER_KEY_COLUMNS).map_err(backend)?)
                .map_err(backend)?,
            grace_days: grace_days(row.try_get(AFTER_KEY_COLUMNS + 1).map_err(backend)?),
        };
        Ok(Some(key_info(&row)?.to_record().with_standing(standing)))
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
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?"
        ))
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .into_iter()
        .next();
        row.as_ref().map(key_info).transpose()
    }

    async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError> {
        let row = sqlx::query("SELECT past_due_since, grace_days FROM accounts WHERE id = ?")
            .bind(account_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
            .into_iter()
            .next();
        let Some(row) = row else {
            return Ok(AccountStanding::default());
        };
        Ok(AccountStanding {
            past_due_since: opt_from_ms(row.try_get(0).map_err(backend)?).map_err(backend)?,
            grace_days: grace_days(row.try_get(1).map_err(backend)?),
        })
    }

    async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, past_due_since, grace_days) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET past_due_since = excluded.past_due_since, grace_days = excluded.grace_days",
        )
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
        self.find_by_hash(hash).await.map_err(VerifyError::backend)
    }
}
