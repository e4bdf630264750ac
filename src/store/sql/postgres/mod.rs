//! The dialect for many instances: PostgreSQL, with `NOTIFY` in the transaction of
//! every change that affects verification, and the [`RevocationListener`] that hears
//! it on each instance.

mod listener;

pub use listener::RevocationListener;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use self::listener::Notice;
use super::{
    AFTER_KEY_COLUMNS, Dialect, FIND_KEY_BY_HASH, GET_ACCOUNT_LIMITS, GET_STANDING, Query,
    SET_STANDING, append_event, backend, fetch_key, fetch_keys, find_key_by_id, get_key, list_keys,
    lock_account, read_account_limits, read_key, read_standing,
};
use crate::audit::{Audit, AuditEvent, AuditPage, AuditQuery};
use crate::key::{KeyHash, KeyId};
use crate::limit::credits::{CreditError, CreditGrant, CreditStore, CreditSubject};
use crate::record::{AccountLimits, AccountStanding, KeyLimits, KeyRecord};
use crate::store::{
    DEFAULT_ACTIVE_KEY_LIMIT, ImportOutcome, KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey,
    check_importable, standing_event,
};
use crate::verify::{Invalidate, KeyVerifier, VerifyError};

/// The schema, as versioned migrations.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../../migrations/postgres/0002_provenance.sql"),
    ),
    (
        3,
        include_str!("../../../../migrations/postgres/0003_limits.sql"),
    ),
    (
        4,
        include_str!("../../../../migrations/postgres/0004_audit.sql"),
    ),
    (
        5,
        include_str!("../../../../migrations/postgres/0005_usage.sql"),
    ),
];

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
    const CREATE_MIGRATIONS_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS tower_api_keys_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
    const LOCK_MIGRATIONS: Option<&'static str> =
        // The key is "zpikeys" in ASCII (0x7a_70_69_6b_65_79_73).
        Some("SELECT pg_advisory_xact_lock(34463545234389363)");
    const LOCK_ACCOUNT: Option<&'static str> =
        Some("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE");

    const LOCK_ROW: &'static str = " FOR UPDATE";

    fn bind_opt_int<'q>(query: Query<'q, Postgres>, value: Option<i64>) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn opt_int(row: &PgRow, index: usize) -> Result<Option<i64>, sqlx::Error> {
        row.try_get(index)
    }

    fn bind_int<'q>(query: Query<'q, Postgres>, value: i64) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn bind_bool<'q>(query: Query<'q, Postgres>, value: bool) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

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
        // `COUNT(*)` is a BIGINT, `grace_days` an INTEGER.
        row.try_get::<i64, _>(index)
            .or_else(|_| row.try_get::<i32, _>(index).map(i64::from))
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
        super::migrate::<PostgresDialect>(&mut tx, MIGRATIONS).await?;
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_audited(&self, key: StoredKey, audit: &Audit) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let info =
            super::insert_audited::<PostgresDialect>(&mut tx, &key, self.limit, audit).await?;
        if let Some(replacement) = &key.replaces {
            self.notify(&mut tx, &Notice::Key(replacement.id.clone()))
                .await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(info)
    }

    async fn import_audited(
        &self,
        keys: Vec<StoredKey>,
        audit: &Audit,
    ) -> Result<ImportOutcome, StoreError> {
        check_importable(&keys)?;
        // No NOTIFY: a new key has nothing cached to drop on other instances but
        // negative answers, which end with their (short) TTL.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let outcome = super::import_audited::<PostgresDialect>(&mut tx, &keys, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        fetch_keys::<PostgresDialect, _>(&self.pool, list_keys::<PostgresDialect>(account_id)).await
    }

    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        fetch_key::<PostgresDialect, _>(&self.pool, get_key::<PostgresDialect>(account_id, id))
            .await
    }

    async fn update_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let key = super::update_audited::<PostgresDialect>(&mut tx, account_id, id, changes, audit)
            .await?;
        self.notify(&mut tx, &Notice::Key(id.clone())).await?;
        tx.commit().await.map_err(backend)?;
        Ok(key)
    }

    async fn revoke_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let (key, _) =
            super::revoke_audited::<PostgresDialect>(&mut tx, account_id, id, audit).await?;
        self.notify(&mut tx, &Notice::Key(id.clone())).await?;
        tx.commit().await.map_err(backend)?;
        Ok(key)
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
        let query = find_key_by_id::<PostgresDialect>(id);
        Ok(fetch_keys::<PostgresDialect, _>(&self.pool, query)
            .await?
            .into_iter()
            .next())
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

    async fn set_standing_audited(
        &self,
        account_id: &str,
        standing: AccountStanding,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        lock_account::<PostgresDialect>(&mut tx, account_id).await?;
        let row = sqlx::query(GET_STANDING)
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let before = match row {
            Some(row) => read_standing::<PostgresDialect>(&row, 0)?,
            None => AccountStanding::default(),
        };
        sqlx::query(SET_STANDING)
            .bind(account_id)
            .bind(standing.past_due_since)
            .bind(i32::from(standing.grace_days))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let event = standing_event(audit, account_id, before, standing);
        append_event::<PostgresDialect>(&mut tx, event).await?;
        self.notify(&mut tx, &Notice::Account(account_id.to_owned()))
            .await?;
        tx.commit().await.map_err(backend)
    }

    async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, StoreError> {
        let row = sqlx::query(GET_ACCOUNT_LIMITS)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(row) => read_account_limits::<PostgresDialect>(&row, 0),
            None => Ok(AccountLimits::none()),
        }
    }

    async fn set_account_limits_audited(
        &self,
        account_id: &str,
        limits: &AccountLimits,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        super::set_account_limits_audited::<PostgresDialect>(&mut tx, account_id, limits, audit)
            .await?;
        self.notify(&mut tx, &Notice::Account(account_id.to_owned()))
            .await?;
        tx.commit().await.map_err(backend)
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        super::audit_events::<PostgresDialect, _>(&self.pool, query).await
    }

    async fn audit_trail(&self, account_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        super::audit_trail::<PostgresDialect, _>(&self.pool, account_id).await
    }

    async fn audited_accounts(&self) -> Result<Vec<String>, StoreError> {
        super::audited_accounts::<PostgresDialect, _>(&self.pool).await
    }

    async fn record_usage(&self, buckets: &[crate::store::UsageBucket]) -> Result<(), StoreError> {
        if buckets.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        super::record_usage::<PostgresDialect>(&mut tx, buckets).await?;
        tx.commit().await.map_err(backend)
    }

    async fn usage(
        &self,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<crate::store::UsageBucket>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        super::usage::<PostgresDialect>(&mut conn, id, from, to).await
    }

    async fn usage_totals(
        &self,
        account_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        super::usage_totals::<PostgresDialect, _>(&self.pool, account_id, since).await
    }
}

#[async_trait]
impl CreditStore for PostgresStore {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let grant = super::take_credits::<PostgresDialect>(&mut tx, subject, want, now).await?;
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
        super::return_credits::<PostgresDialect, _>(&self.pool, subject, units, epoch, until)
            .await?;
        Ok(())
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
        let account = read_account_limits::<PostgresDialect>(&row, AFTER_KEY_COLUMNS + 2)
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
