//! The SQL stores: [`SqliteStore`](sqlite::SqliteStore) (embedded, the default),
//! [`PostgresStore`](postgres::PostgresStore) (many instances, with a
//! [`RevocationListener`](postgres::RevocationListener)) and [`SqlStore`] (either, by
//! URL).
//!
//! What they share is written here once: the statements (with `$n` parameters, which
//! both SQLite and PostgreSQL read), row decoding and the binding of a new key. A
//! [`Dialect`] holds only what differs: how times are kept (milliseconds in a SQLite
//! `INTEGER`, a PostgreSQL `TIMESTAMPTZ`), the JSON column type, `MIN` or `LEAST`. The
//! dialect files keep their own transactions (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
//! row lock and `NOTIFY`) and the one statement that differs entirely, `touch`.

mod by_url;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub use by_url::SqlStore;

use sqlx::Database;
use time::OffsetDateTime;

use super::{KeyInfo, StoreError, StoredKey};
use crate::audit::{Audit, AuditEvent, AuditPage, AuditQuery, Draft};
use crate::key::{Environment, KeyId};
use crate::limit::RateLimit;
use crate::limit::credits::{CreditGrant, CreditSubject, Credits, take_from};
use crate::record::{AccountLimits, AccountStanding, Metadata};
use crate::restriction::Restrictions;
use crate::store::{ImportOutcome, UsageBucket, key_event, top_ips};

/// The columns of `api_keys` that make a [`KeyInfo`], in the order [`read_key`] reads
/// them (`$alias` is the table alias with its dot, or nothing).
macro_rules! key_columns {
    ($($alias:literal)?) => {
        concat!(
            $($alias,)? "id, ", $($alias,)? "account_id, ", $($alias,)? "project_id, ",
            $($alias,)? "name, ", $($alias,)? "hint, ", $($alias,)? "prefix, ",
            $($alias,)? "environment, ", $($alias,)? "scopes, ", $($alias,)? "created_at, ",
            $($alias,)? "last_used_at, ", $($alias,)? "expires_at, ", $($alias,)? "revoked_at, ",
            "CAST(", $($alias,)? "restrictions AS TEXT), ",
            $($alias,)? "created_by, ", $($alias,)? "owner_id, ",
            "CAST(", $($alias,)? "metadata AS TEXT), ",
            "CAST(", $($alias,)? "ratelimits AS TEXT), ", $($alias,)? "credits, ",
            "CAST(", $($alias,)? "refill AS TEXT), ", $($alias,)? "refilled_at, ",
            $($alias,)? "credits_epoch"
        )
    };
}

/// The number of columns [`read_key`] reads; what a statement selects after them
/// starts at this index.
pub(crate) const AFTER_KEY_COLUMNS: usize = 21;

/// The balance columns of `api_keys` and `accounts`, as [`read_credits`] reads them.
const CREDIT_COLUMNS: &str = "credits, CAST(refill AS TEXT), refilled_at, credits_epoch";

/// The name of the migrations bookkeeping table.
macro_rules! migrations_table {
    () => {
        "tower_api_keys_migrations"
    };
}

/// The account's active keys, oldest first: `$1` account.
pub(crate) const LIST_KEYS: &str = concat!(
    "SELECT ",
    key_columns!("k."),
    " FROM api_keys k WHERE k.account_id = $1 AND k.revoked_at IS NULL ORDER BY k.created_at, k.id"
);

/// One key of an account: `$1` id, `$2` account.
pub(crate) const GET_KEY: &str = concat!(
    "SELECT ",
    key_columns!("k."),
    " FROM api_keys k WHERE k.id = $1 AND k.account_id = $2"
);

/// A key by id alone: `$1` id.
pub(crate) const FIND_KEY_BY_ID: &str = concat!(
    "SELECT ",
    key_columns!("k."),
    " FROM api_keys k WHERE k.id = $1"
);

/// A key and its account's standing by hash: `$1` hash.
pub(crate) const FIND_KEY_BY_HASH: &str = concat!(
    "SELECT ",
    key_columns!("k."),
    ", a.past_due_since, a.grace_days, CAST(a.ratelimits AS TEXT), a.credits, \
     CAST(a.refill AS TEXT), a.refilled_at, a.credits_epoch FROM api_keys k \
     JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = $1"
);

/// Revokes a key, keeping the first revocation: `$1` id, `$2` account, `$3` now.
pub(crate) const REVOKE_KEY: &str = concat!(
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
     WHERE id = $1 AND account_id = $2 RETURNING ",
    key_columns!()
);

/// Creates the account row if needed: `$1` account.
pub(crate) const ENSURE_ACCOUNT: &str =
    "INSERT INTO accounts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";

/// The account's active keys in an environment, but one: `$1` account, `$2`
/// environment, `$3` now, `$4` the id not to count.
pub(crate) const COUNT_ACTIVE_KEYS: &str = "SELECT COUNT(*) FROM api_keys \
     WHERE account_id = $1 AND environment = $2 \
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3) AND id <> $4";

/// Revokes a replaced key now: `$1` when, `$2` id, `$3` account.
pub(crate) const END_REPLACED_KEY_NOW: &str = "UPDATE api_keys SET revoked_at = $1 \
     WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL";

/// An account's standing: `$1` account.
pub(crate) const GET_STANDING: &str =
    "SELECT past_due_since, grace_days FROM accounts WHERE id = $1";

/// Sets an account's standing: `$1` account, `$2` past due since, `$3` grace days.
pub(crate) const SET_STANDING: &str = "INSERT INTO accounts (id, past_due_since, grace_days) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET past_due_since = excluded.past_due_since, \
     grace_days = excluded.grace_days";

/// A statement with its arguments, as sqlx builds it.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// What differs between the SQL dialects the stores speak.
pub(crate) trait Dialect {
    /// The sqlx database.
    type Db: Database;
    /// The parameter of a JSON column, with its cast (`$n` is replaced).
    const JSON_PARAM: &'static str;
    /// The function of the smaller of two values.
    const LEAST: &'static str;
    /// A statement locking the account row (`$1`) for the rest of the transaction, so
    /// that concurrent creates for one account queue (SQLite's write transaction locks
    /// the whole database already).
    const LOCK_ACCOUNT: Option<&'static str>;

    /// Binds text (NULL for `None`).
    fn bind_text<'q>(query: Query<'q, Self::Db>, value: Option<&'q str>) -> Query<'q, Self::Db>;
    /// The migrations bookkeeping table, created if missing.
    const CREATE_MIGRATIONS_TABLE: &'static str;
    /// A statement that serialises concurrent migrations from several instances until
    /// the transaction ends, if the dialect needs one.
    const LOCK_MIGRATIONS: Option<&'static str>;
    /// Binds an integer.
    fn bind_int<'q>(query: Query<'q, Self::Db>, value: i64) -> Query<'q, Self::Db>;
    /// Binds an integer or NULL.
    fn bind_opt_int<'q>(query: Query<'q, Self::Db>, value: Option<i64>) -> Query<'q, Self::Db>;
    /// Binds a boolean.
    fn bind_bool<'q>(query: Query<'q, Self::Db>, value: bool) -> Query<'q, Self::Db>;
    /// Binds bytes.
    fn bind_bytes<'q>(query: Query<'q, Self::Db>, value: &'q [u8]) -> Query<'q, Self::Db>;
    /// Binds a time (NULL for `None`).
    fn bind_time<'q>(
        query: Query<'q, Self::Db>,
        value: Option<OffsetDateTime>,
    ) -> Query<'q, Self::Db>;
    /// Reads a text column.
    fn text(row: &<Self::Db as Database>::Row, index: usize)
    -> Result<Option<String>, sqlx::Error>;
    /// Reads a time column.
    fn time(
        row: &<Self::Db as Database>::Row,
        index: usize,
    ) -> Result<Option<OffsetDateTime>, sqlx::Error>;
    /// The rows a statement changed.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;
    /// Reads an integer column.
    fn int(row: &<Self::Db as Database>::Row, index: usize) -> Result<i64, sqlx::Error>;
    /// Reads an integer column that may be NULL.
    fn opt_int(row: &<Self::Db as Database>::Row, index: usize)
    -> Result<Option<i64>, sqlx::Error>;
    /// What ends a `SELECT` that locks its row until the transaction ends (SQLite's
    /// write transaction holds the whole database already).
    const LOCK_ROW: &'static str;
}

/// Inserts a new key: `$1`…`$18` bound by [`bind_new_key`].
pub(crate) fn insert_key_sql<D: Dialect>() -> String {
    format!(
        "INSERT INTO api_keys (id, account_id, project_id, name, key_hash, hint, prefix, \
         environment, scopes, created_at, expires_at, restrictions, created_by, owner_id, \
         metadata, ratelimits, credits, refill, refilled_at) VALUES ($1, $2, $3, $4, $5, $6, \
         $7, $8, $9, $10, $11, {}, $13, $14, {}, {}, $17, {}, $10)",
        D::JSON_PARAM.replace("$n", "$12"),
        D::JSON_PARAM.replace("$n", "$15"),
        D::JSON_PARAM.replace("$n", "$16"),
        D::JSON_PARAM.replace("$n", "$18")
    )
}

/// A new key's columns that are stored as text built from Rust values.
pub(crate) struct NewKeyText {
    scopes: String,
    restrictions: String,
    metadata: String,
    ratelimits: String,
    refill: Option<String>,
}

impl NewKeyText {
    pub(crate) fn of(key: &StoredKey) -> Self {
        NewKeyText {
            scopes: key.scopes.to_space_separated(),
            restrictions: restrictions_json(&key.restrictions),
            metadata: serde_json::Value::Object(key.metadata.clone()).to_string(),
            ratelimits: ratelimits_json(&key.ratelimits),
            refill: refill_json(key.credits.as_ref()),
        }
    }
}

/// Rate limits as stored (a JSON array).
pub(crate) fn ratelimits_json(limits: &[RateLimit]) -> String {
    serde_json::to_string(limits).expect("rate limits serialize")
}

/// A balance's refill as stored (JSON, or NULL).
fn refill_json(credits: Option<&Credits>) -> Option<String> {
    credits
        .and_then(|credits| credits.refill.as_ref())
        .map(|refill| serde_json::to_string(refill).expect("a refill serializes"))
}

/// A balance as stored: `remaining` as an integer column.
fn credits_int(credits: Option<&Credits>) -> Option<i64> {
    credits.map(|credits| i64::try_from(credits.remaining).unwrap_or(i64::MAX))
}

/// Binds a new key to [`insert_key_sql`].
pub(crate) fn bind_new_key<'q, D: Dialect>(
    query: Query<'q, D::Db>,
    key: &'q StoredKey,
    text: &'q NewKeyText,
) -> Query<'q, D::Db> {
    let query = D::bind_text(query, Some(key.id.as_str()));
    let query = D::bind_text(query, Some(&key.account_id));
    let query = D::bind_text(query, key.project_id.as_deref());
    let query = D::bind_text(query, Some(&key.name));
    let query = D::bind_bytes(query, &key.hash.as_bytes()[..]);
    let query = D::bind_text(query, Some(&key.hint));
    let query = D::bind_text(query, Some(&key.prefix));
    let query = D::bind_text(query, Some(key.environment.as_str()));
    let query = D::bind_text(query, Some(&text.scopes));
    let query = D::bind_time(query, Some(key.created_at));
    let query = D::bind_time(query, key.expires_at);
    let query = D::bind_text(query, Some(&text.restrictions));
    let query = D::bind_text(query, key.created_by.as_deref());
    let query = D::bind_text(query, key.owner_id.as_deref());
    let query = D::bind_text(query, Some(&text.metadata));
    let query = D::bind_text(query, Some(&text.ratelimits));
    let query = D::bind_opt_int(query, credits_int(key.credits.as_ref()));
    D::bind_text(query, text.refill.as_deref())
}

/// Changes a key (each `NULL` parameter leaves its column): `$1` id, `$2` account, `$3`
/// name, `$4` restrictions, `$5` scopes, `$6` whether to set the expiry, `$7` expiry,
/// `$8` whether to set the owner, `$9` owner, `$10` metadata, `$11` rate limits, `$12`
/// whether to set the balance, `$13` credits, `$14` refill, `$15` now. A balance set
/// moves its epoch on and restarts its refill schedule.
pub(crate) fn update_key_sql<D: Dialect>() -> String {
    format!(
        "UPDATE api_keys SET name = COALESCE($3, name), \
         restrictions = COALESCE({}, restrictions), scopes = COALESCE($5, scopes), \
         expires_at = CASE WHEN $6 THEN $7 ELSE expires_at END, \
         owner_id = CASE WHEN $8 THEN $9 ELSE owner_id END, \
         metadata = COALESCE({}, metadata), ratelimits = COALESCE({}, ratelimits), \
         credits = CASE WHEN $12 THEN $13 ELSE credits END, \
         refill = CASE WHEN $12 THEN {} ELSE refill END, \
         refilled_at = CASE WHEN $12 THEN $15 ELSE refilled_at END, \
         credits_epoch = CASE WHEN $12 THEN credits_epoch + 1 ELSE credits_epoch END \
         WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL RETURNING {}",
        D::JSON_PARAM.replace("$n", "$4"),
        D::JSON_PARAM.replace("$n", "$10"),
        D::JSON_PARAM.replace("$n", "$11"),
        D::JSON_PARAM.replace("$n", "$14"),
        key_columns!()
    )
}

/// Ends a replaced key at a later time (or keeps its earlier expiry): `$1` when, `$2`
/// id, `$3` account.
pub(crate) fn end_replaced_key_later_sql<D: Dialect>() -> String {
    format!(
        "UPDATE api_keys SET expires_at = {}(COALESCE(expires_at, $1), $1) \
         WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL",
        D::LEAST
    )
}

/// The key in a row whose first columns are [`key_columns!`].
pub(crate) fn read_key<D: Dialect>(row: &<D::Db as Database>::Row) -> Result<KeyInfo, StoreError> {
    let text = |index, column| required(D::text(row, index), column);
    let time = |index| D::time(row, index).map_err(backend);
    let environment = text(6, "environment")?;
    let environment =
        Environment::parse(&environment).ok_or_else(|| corrupt("environment", &environment))?;
    let scopes = text(7, "scopes")?;
    let scopes = scopes.parse().map_err(|_| corrupt("scopes", &scopes))?;
    let restrictions = text(12, "restrictions")?;
    let restrictions: Restrictions =
        serde_json::from_str(&restrictions).map_err(|_| corrupt("restrictions", &restrictions))?;
    let metadata = text(15, "metadata")?;
    let metadata: Metadata =
        serde_json::from_str(&metadata).map_err(|_| corrupt("metadata", &metadata))?;
    let ratelimits = read_ratelimits::<D>(row, 16)?;
    let credits = read_credits::<D>(row, 17)?.map(|credits| credits.at(OffsetDateTime::now_utc()));
    Ok(KeyInfo {
        id: KeyId::new(text(0, "id")?),
        account_id: text(1, "account_id")?,
        project_id: D::text(row, 2).map_err(backend)?,
        name: text(3, "name")?,
        hint: text(4, "hint")?,
        prefix: text(5, "prefix")?,
        environment,
        scopes,
        created_at: required(D::time(row, 8), "created_at")?,
        last_used_at: time(9)?,
        expires_at: time(10)?,
        revoked_at: time(11)?,
        restrictions,
        created_by: D::text(row, 13).map_err(backend)?,
        owner_id: D::text(row, 14).map_err(backend)?,
        metadata,
        ratelimits,
        credits,
    })
}

/// Rate limits in the JSON column at `index`.
pub(crate) fn read_ratelimits<D: Dialect>(
    row: &<D::Db as Database>::Row,
    index: usize,
) -> Result<Vec<RateLimit>, StoreError> {
    let json = required(D::text(row, index), "ratelimits")?;
    serde_json::from_str(&json).map_err(|_| corrupt("ratelimits", &json))
}

/// The balance in the four columns from `first` ([`CREDIT_COLUMNS`]), as stored.
pub(crate) fn read_credits<D: Dialect>(
    row: &<D::Db as Database>::Row,
    first: usize,
) -> Result<Option<Credits>, StoreError> {
    let Some(remaining) = D::opt_int(row, first).map_err(backend)? else {
        return Ok(None);
    };
    let refill = match D::text(row, first + 1).map_err(backend)? {
        Some(json) => Some(serde_json::from_str(&json).map_err(|_| corrupt("refill", &json))?),
        None => None,
    };
    let mut credits = Credits::new(u64::try_from(remaining).unwrap_or(0));
    credits.refill = refill;
    credits.refilled_at = D::time(row, first + 2).map_err(backend)?;
    credits.epoch = D::int(row, first + 3).map_err(backend)?;
    Ok(Some(credits))
}

/// The account's limits in a row of [`FIND_KEY_BY_HASH`] (after the standing), or of
/// [`GET_ACCOUNT_LIMITS`] (from 0).
pub(crate) fn read_account_limits<D: Dialect>(
    row: &<D::Db as Database>::Row,
    first: usize,
) -> Result<AccountLimits, StoreError> {
    let mut limits = AccountLimits::none();
    limits.ratelimits = read_ratelimits::<D>(row, first)?;
    limits.credits = read_credits::<D>(row, first + 1)?;
    Ok(limits)
}

/// An account's limits: `$1` account.
pub(crate) const GET_ACCOUNT_LIMITS: &str = "SELECT CAST(ratelimits AS TEXT), credits, \
     CAST(refill AS TEXT), refilled_at, credits_epoch FROM accounts WHERE id = $1";

/// Sets an account's limits: `$1` account, `$2` rate limits, `$3` credits, `$4` refill,
/// `$5` now. The epoch moves on.
pub(crate) fn set_account_limits_sql<D: Dialect>() -> String {
    format!(
        "INSERT INTO accounts (id, ratelimits, credits, refill, refilled_at) \
         VALUES ($1, {0}, $3, {1}, $5) ON CONFLICT (id) DO UPDATE SET \
         ratelimits = excluded.ratelimits, credits = excluded.credits, \
         refill = excluded.refill, refilled_at = excluded.refilled_at, \
         credits_epoch = accounts.credits_epoch + 1",
        D::JSON_PARAM.replace("$n", "$2"),
        D::JSON_PARAM.replace("$n", "$4"),
    )
}

/// [`set_account_limits_sql`], bound.
pub(crate) fn set_account_limits<'q, D: Dialect>(
    sql: &'q str,
    account_id: &'q str,
    ratelimits: &'q str,
    limits: &'q AccountLimits,
    refill: &'q Option<String>,
) -> Query<'q, D::Db> {
    let query = D::bind_text(sqlx::query(sql), Some(account_id));
    let query = D::bind_text(query, Some(ratelimits));
    let query = D::bind_opt_int(query, credits_int(limits.credits.as_ref()));
    let query = D::bind_text(query, refill.as_deref());
    D::bind_time(query, Some(crate::store::now_in_millis()))
}

/// The refill of an account's limits as stored.
pub(crate) fn account_refill_json(limits: &AccountLimits) -> Option<String> {
    refill_json(limits.credits.as_ref())
}

/// The table and id of a balance.
fn credit_row(subject: CreditSubject<'_>) -> (&'static str, &str) {
    match subject {
        CreditSubject::Key(id) => ("api_keys", id),
        CreditSubject::Account(id) => ("accounts", id),
    }
}

/// Takes up to `want` of `subject`'s balance on `conn`, inside the caller's write
/// transaction: the row read (and locked, where the dialect must), refilled if due,
/// written back.
pub(crate) async fn take_credits<D>(
    conn: &mut <D::Db as Database>::Connection,
    subject: CreditSubject<'_>,
    want: u64,
    now: OffsetDateTime,
) -> Result<CreditGrant, StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let (table, id) = credit_row(subject);
    let select = format!(
        "SELECT {CREDIT_COLUMNS} FROM {table} WHERE id = $1 AND credits IS NOT NULL{}",
        D::LOCK_ROW
    );
    let rows = D::bind_text(sqlx::query(&select), Some(id))
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    let Some(row) = rows.first() else {
        return Ok(CreditGrant::unlimited());
    };
    let Some(mut credits) = read_credits::<D>(row, 0)? else {
        return Ok(CreditGrant::unlimited());
    };
    let refilled_before = credits.refilled_at;
    let grant = take_from(&mut credits, want, now);
    if grant.granted == 0 && credits.refilled_at == refilled_before {
        // Nothing taken, nothing refilled: nothing to write.
        return Ok(grant);
    }
    let update = format!("UPDATE {table} SET credits = $2, refilled_at = $3 WHERE id = $1");
    let query = D::bind_text(sqlx::query(&update), Some(id));
    let query = D::bind_opt_int(query, credits_int(Some(&credits)));
    D::bind_time(query, credits.refilled_at)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(grant)
}

/// Gives `units` back to `subject`'s balance if it is still in `epoch` and was not
/// refilled at or after `until` (a lease of one period never lands in the next).
pub(crate) async fn return_credits<'e, D, E>(
    executor: E,
    subject: CreditSubject<'_>,
    units: u64,
    epoch: i64,
    until: Option<OffsetDateTime>,
) -> Result<(), StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let (table, id) = credit_row(subject);
    let period = if until.is_some() {
        " AND (refilled_at IS NULL OR refilled_at < $4)"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE {table} SET credits = credits + $2 \
         WHERE id = $1 AND credits IS NOT NULL AND credits_epoch = $3{period}"
    );
    let query = D::bind_text(sqlx::query(&sql), Some(id));
    let query = D::bind_int(query, i64::try_from(units).unwrap_or(i64::MAX));
    let query = D::bind_int(query, epoch);
    let query = if until.is_some() {
        D::bind_time(query, until)
    } else {
        query
    };
    query.execute(executor).await.map_err(backend)?;
    Ok(())
}

/// Moves the credits of `old` to `new` (rotation), inside the insert transaction: the
/// new key takes the old one's remaining balance and refill time, the old key keeps
/// none and no refill (its epoch moves on, so leases of it are not returned).
async fn move_credits<D>(
    conn: &mut <D::Db as Database>::Connection,
    old: &KeyId,
    new: &KeyId,
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let take = "UPDATE api_keys SET \
         credits = (SELECT o.credits FROM api_keys o WHERE o.id = $2), \
         refilled_at = (SELECT o.refilled_at FROM api_keys o WHERE o.id = $2) \
         WHERE id = $1 AND credits IS NOT NULL \
         AND (SELECT o.credits FROM api_keys o WHERE o.id = $2) IS NOT NULL";
    let query = D::bind_text(sqlx::query(take), Some(new.as_str()));
    D::bind_text(query, Some(old.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    // Nothing left, and no refill either: a refill would mint a second balance for as
    // long as the old key overlaps the new one. (The replaced key's row is locked
    // already: ending it was this transaction's first write to it.)
    let empty = "UPDATE api_keys SET credits = 0, refill = NULL, \
         credits_epoch = credits_epoch + 1 WHERE id = $1 AND credits IS NOT NULL";
    D::bind_text(sqlx::query(empty), Some(old.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The standing in a row with `past_due_since` and `grace_days` from `first`.
pub(crate) fn read_standing<D: Dialect>(
    row: &<D::Db as Database>::Row,
    first: usize,
) -> Result<AccountStanding, StoreError> {
    Ok(AccountStanding {
        past_due_since: D::time(row, first).map_err(backend)?,
        grace_days: grace_days(D::int(row, first + 1).map_err(backend)?),
    })
}

fn required<T>(value: Result<Option<T>, sqlx::Error>, column: &str) -> Result<T, StoreError> {
    value
        .map_err(backend)?
        .ok_or_else(|| corrupt(column, "NULL"))
}

fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Backend(format!("api_keys.{column} holds an unreadable value {value:?}").into())
}

/// Restrictions as stored (JSON text).
pub(crate) fn restrictions_json(restrictions: &Restrictions) -> String {
    serde_json::to_string(restrictions).expect("restrictions serialize")
}

pub(crate) fn backend(error: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// A stored grace period, clamped into `u16` days.
fn grace_days(days: i64) -> u16 {
    u16::try_from(days.max(0)).unwrap_or(u16::MAX)
}

/// Applies the `migrations` (version, SQL) not applied yet, on `conn`, inside the
/// caller's transaction.
pub(crate) async fn migrate<D>(
    conn: &mut <D::Db as Database>::Connection,
    migrations: &[(i64, &str)],
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    if let Some(lock) = D::LOCK_MIGRATIONS {
        sqlx::query(lock)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    sqlx::query(D::CREATE_MIGRATIONS_TABLE)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let applied = sqlx::query(concat!("SELECT version FROM ", migrations_table!()))
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?
        .iter()
        .map(|row| D::int(row, 0))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(backend)?;
    for (version, sql) in migrations {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        let record = sqlx::query(concat!(
            "INSERT INTO ",
            migrations_table!(),
            " (version, applied_at) VALUES ($1, $2)"
        ));
        D::bind_time(
            D::bind_int(record, *version),
            Some(OffsetDateTime::now_utc()),
        )
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    Ok(())
}

/// Runs a statement returning keys on `executor`: every row, read to the end (a SQLite
/// statement not stepped to completion keeps its transaction open).
pub(crate) async fn fetch_keys<'q, 'e, D, E>(
    executor: E,
    query: Query<'q, D::Db>,
) -> Result<Vec<KeyInfo>, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    'q: 'e,
    <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let rows = query.fetch_all(executor).await.map_err(backend)?;
    rows.iter().map(read_key::<D>).collect()
}

/// The first key of [`fetch_keys`], or `NotFound`.
pub(crate) async fn fetch_key<'q, 'e, D, E>(
    executor: E,
    query: Query<'q, D::Db>,
) -> Result<KeyInfo, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    'q: 'e,
    <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    fetch_keys::<D, E>(executor, query)
        .await?
        .into_iter()
        .next()
        .ok_or(StoreError::NotFound)
}

/// [`LIST_KEYS`], bound.
pub(crate) fn list_keys<D: Dialect>(account_id: &str) -> Query<'_, D::Db> {
    D::bind_text(sqlx::query(LIST_KEYS), Some(account_id))
}

/// [`GET_KEY`], bound.
pub(crate) fn get_key<'q, D: Dialect>(account_id: &'q str, id: &'q KeyId) -> Query<'q, D::Db> {
    let query = D::bind_text(sqlx::query(GET_KEY), Some(id.as_str()));
    D::bind_text(query, Some(account_id))
}

/// [`FIND_KEY_BY_ID`], bound.
pub(crate) fn find_key_by_id<D: Dialect>(id: &KeyId) -> Query<'_, D::Db> {
    D::bind_text(sqlx::query(FIND_KEY_BY_ID), Some(id.as_str()))
}

/// [`REVOKE_KEY`], bound: revoked now, unless revoked before.
pub(crate) fn revoke_key<'q, D: Dialect>(account_id: &'q str, id: &'q KeyId) -> Query<'q, D::Db> {
    let query = D::bind_text(sqlx::query(REVOKE_KEY), Some(id.as_str()));
    let query = D::bind_text(query, Some(account_id));
    D::bind_time(query, Some(crate::store::now_in_millis()))
}

/// A key's changes as stored: name, restrictions (JSON), scopes (space-separated),
/// expiry, owner, metadata (JSON).
pub(crate) struct StoredChanges<'c> {
    name: Option<&'c str>,
    restrictions: Option<String>,
    scopes: Option<String>,
    expires_at: Option<Option<OffsetDateTime>>,
    owner_id: Option<Option<&'c str>>,
    metadata: Option<String>,
    ratelimits: Option<String>,
    credits: Option<Option<Credits>>,
    refill: Option<String>,
}

impl<'c> StoredChanges<'c> {
    pub(crate) fn of(changes: &'c crate::store::KeyChanges) -> Self {
        StoredChanges {
            name: changes.name.as_deref(),
            restrictions: changes.restrictions.as_ref().map(restrictions_json),
            scopes: changes
                .scopes
                .as_ref()
                .map(crate::scope::Scopes::to_space_separated),
            expires_at: changes.expires_at,
            owner_id: changes.owner_id.as_ref().map(Option::as_deref),
            metadata: changes
                .metadata
                .as_ref()
                .map(|metadata| serde_json::Value::Object(metadata.clone()).to_string()),
            ratelimits: changes.ratelimits.as_deref().map(ratelimits_json),
            credits: changes.credits,
            refill: changes.credits.and_then(|c| refill_json(c.as_ref())),
        }
    }
}

/// The statement of [`update_key_sql`], bound.
pub(crate) fn update_key<'q, D: Dialect>(
    sql: &'q str,
    account_id: &'q str,
    id: &'q KeyId,
    changes: &'q StoredChanges<'q>,
) -> Query<'q, D::Db> {
    let query = D::bind_text(sqlx::query(sql), Some(id.as_str()));
    let query = D::bind_text(query, Some(account_id));
    let query = D::bind_text(query, changes.name);
    let query = D::bind_text(query, changes.restrictions.as_deref());
    let query = D::bind_text(query, changes.scopes.as_deref());
    let query = D::bind_bool(query, changes.expires_at.is_some());
    let query = D::bind_time(query, changes.expires_at.flatten());
    let query = D::bind_bool(query, changes.owner_id.is_some());
    let query = D::bind_text(query, changes.owner_id.flatten());
    let query = D::bind_text(query, changes.metadata.as_deref());
    let query = D::bind_text(query, changes.ratelimits.as_deref());
    let query = D::bind_bool(query, changes.credits.is_some());
    let query = D::bind_opt_int(query, credits_int(changes.credits.flatten().as_ref()));
    let query = D::bind_text(query, changes.refill.as_deref());
    D::bind_time(query, Some(crate::store::now_in_millis()))
}

/// Stores `key` on `conn`, inside the caller's transaction: the account row (locked
/// where the dialect must), the replaced key ended first (a replaced key that is not
/// active is `NotFound`), the active-key limit, the insert.
pub(crate) async fn insert_key<D>(
    conn: &mut <D::Db as Database>::Connection,
    key: &StoredKey,
    limit: usize,
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let account = Some(key.account_id.as_str());
    lock_account::<D>(conn, &key.account_id).await?;
    if let Some(replacement) = &key.replaces {
        let later;
        let sql = if replacement.ends_at <= OffsetDateTime::now_utc() {
            END_REPLACED_KEY_NOW
        } else {
            later = end_replaced_key_later_sql::<D>();
            &later
        };
        let query = D::bind_time(sqlx::query(sql), Some(replacement.ends_at));
        let query = D::bind_text(query, Some(replacement.id.as_str()));
        let ended = D::bind_text(query, account)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        if D::rows_affected(&ended) == 0 {
            return Err(StoreError::NotFound);
        }
    }
    let replaced = key.replaces.as_ref().map_or("", |r| r.id.as_str());
    let query = D::bind_text(sqlx::query(COUNT_ACTIVE_KEYS), account);
    let query = D::bind_text(query, Some(key.environment.as_str()));
    let query = D::bind_time(query, Some(OffsetDateTime::now_utc()));
    let row = D::bind_text(query, Some(replaced))
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    let active = D::int(&row, 0).map_err(backend)?;
    if usize::try_from(active).unwrap_or(usize::MAX) >= limit {
        return Err(StoreError::LimitReached { limit });
    }
    let (insert, text) = (insert_key_sql::<D>(), NewKeyText::of(key));
    bind_new_key::<D>(sqlx::query(&insert), key, &text)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    if let Some(replacement) = key.replaces.as_ref().filter(|r| r.moves_credits) {
        move_credits::<D>(conn, &replacement.id, &key.id).await?;
    }
    Ok(())
}

/// The columns of `audit_events`, as [`read_event`] reads them.
const AUDIT_COLUMNS: &str = "seq, id, at, account_id, environment, actor, action, key_id, \
     CAST(changes AS TEXT), client_ip, prev_hash, hash";

/// An event and its position in a row of [`AUDIT_COLUMNS`].
pub(crate) fn read_event<D: Dialect>(
    row: &<D::Db as Database>::Row,
) -> Result<(i64, AuditEvent), StoreError> {
    let text = |index, column| {
        D::text(row, index)
            .map_err(backend)?
            .ok_or_else(|| corrupt_event(column))
    };
    let changes = text(8, "changes")?;
    let event = AuditEvent {
        id: text(1, "id")?,
        at: D::time(row, 2)
            .map_err(backend)?
            .ok_or_else(|| corrupt_event("at"))?,
        account_id: text(3, "account_id")?,
        environment: D::text(row, 4).map_err(backend)?,
        actor: text(5, "actor")?,
        action: text(6, "action")?,
        key_id: D::text(row, 7).map_err(backend)?,
        changes: serde_json::from_str(&changes).map_err(|_| corrupt_event("changes"))?,
        client_ip: D::text(row, 9).map_err(backend)?,
        prev_hash: text(10, "prev_hash")?,
        hash: text(11, "hash")?,
    };
    Ok((D::int(row, 0).map_err(backend)?, event))
}

fn corrupt_event(column: &str) -> StoreError {
    StoreError::Backend(format!("audit_events.{column} holds an unreadable value").into())
}

/// Makes sure the account row exists and locks it until the transaction ends (where
/// the dialect must: SQLite's write transaction holds the database already), so that
/// changes of one account, and their events, queue.
pub(crate) async fn lock_account<D>(
    conn: &mut <D::Db as Database>::Connection,
    account_id: &str,
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    D::bind_text(sqlx::query(ENSURE_ACCOUNT), Some(account_id))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    if let Some(lock) = D::LOCK_ACCOUNT {
        D::bind_text(sqlx::query(lock), Some(account_id))
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Appends `draft` to its account's chain on `conn`, inside the caller's transaction:
/// the account row (locked where the dialect must, so that concurrent changes of one
/// account chain one after the other), the account's last hash, the sealed event.
pub(crate) async fn append_event<D>(
    conn: &mut <D::Db as Database>::Connection,
    draft: Draft,
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let account = Some(draft.account_id().to_owned());
    lock_account::<D>(conn, draft.account_id()).await?;
    let last = D::bind_text(
        sqlx::query(
            "SELECT hash FROM audit_events WHERE account_id = $1 ORDER BY seq DESC LIMIT 1",
        ),
        account.as_deref(),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?;
    let previous = match last.first() {
        Some(row) => D::text(row, 0).map_err(backend)?,
        None => None,
    };
    let event = draft.seal_after(previous.as_deref());
    let changes = event.changes.to_string();
    let insert = "INSERT INTO audit_events (id, at, account_id, environment, actor, action, \
         key_id, changes, client_ip, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11)";
    let query = D::bind_text(sqlx::query(insert), Some(&event.id));
    let query = D::bind_time(query, Some(event.at));
    let query = D::bind_text(query, Some(&event.account_id));
    let query = D::bind_text(query, event.environment.as_deref());
    let query = D::bind_text(query, Some(&event.actor));
    let query = D::bind_text(query, Some(&event.action));
    let query = D::bind_text(query, event.key_id.as_deref());
    let query = D::bind_text(query, Some(&changes));
    let query = D::bind_text(query, event.client_ip.as_deref());
    let query = D::bind_text(query, Some(&event.prev_hash));
    D::bind_text(query, Some(&event.hash))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// A page of events for `query`, newest first.
pub(crate) async fn audit_events<'e, D, E>(
    executor: E,
    query: &AuditQuery,
) -> Result<AuditPage, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let limit = query.limit.clamp(1, 200);
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE account_id = $1");
    let mut n = 1;
    let mut param = |sql: &mut String, condition: &str| {
        n += 1;
        sql.push_str(&condition.replace("$n", &format!("${n}")));
    };
    if query.environment.is_some() {
        param(&mut sql, " AND (environment IS NULL OR environment = $n)");
    }
    if query.key_id.is_some() {
        param(&mut sql, " AND key_id = $n");
    }
    if query.action.is_some() {
        param(&mut sql, " AND action = $n");
    }
    if query.from.is_some() {
        param(&mut sql, " AND at >= $n");
    }
    if query.to.is_some() {
        param(&mut sql, " AND at < $n");
    }
    if query.before.is_some() {
        param(&mut sql, " AND seq < $n");
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", limit + 1));
    let mut bound = D::bind_text(sqlx::query(&sql), Some(&query.account_id));
    if let Some(environment) = &query.environment {
        bound = D::bind_text(bound, Some(environment));
    }
    if let Some(key_id) = &query.key_id {
        bound = D::bind_text(bound, Some(key_id));
    }
    if let Some(action) = query.action {
        bound = D::bind_text(bound, Some(action.as_str()));
    }
    if let Some(from) = query.from {
        bound = D::bind_time(bound, Some(from));
    }
    if let Some(to) = query.to {
        bound = D::bind_time(bound, Some(to));
    }
    if let Some(before) = query.before {
        bound = D::bind_int(bound, before);
    }
    let rows = bound.fetch_all(executor).await.map_err(backend)?;
    let mut events = rows
        .iter()
        .map(read_event::<D>)
        .collect::<Result<Vec<_>, _>>()?;
    let next = (events.len() > limit).then(|| events[limit - 1].0);
    events.truncate(limit);
    Ok(AuditPage {
        events: events.into_iter().map(|(_, event)| event).collect(),
        next,
    })
}

/// Every event of an account, oldest first.
pub(crate) async fn audit_trail<'e, D, E>(
    executor: E,
    account_id: &str,
) -> Result<Vec<AuditEvent>, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let sql =
        format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE account_id = $1 ORDER BY seq");
    let rows = D::bind_text(sqlx::query(&sql), Some(account_id))
        .fetch_all(executor)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|row| read_event::<D>(row).map(|(_, event)| event))
        .collect()
}

/// The accounts with events.
pub(crate) async fn audited_accounts<'e, D, E>(executor: E) -> Result<Vec<String>, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let rows = sqlx::query("SELECT DISTINCT account_id FROM audit_events ORDER BY account_id")
        .fetch_all(executor)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|row| required(D::text(row, 0), "account_id"))
        .collect()
}

/// [`insert_key`] and its audit event, inside the caller's transaction.
pub(crate) async fn insert_audited<D>(
    conn: &mut <D::Db as Database>::Connection,
    key: &StoredKey,
    limit: usize,
    audit: &Audit,
) -> Result<KeyInfo, StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    insert_key::<D>(conn, key, limit).await?;
    let info = key.info();
    let replaced = key.replaces.as_ref().map(|r| &r.id);
    append_event::<D>(conn, key_event(audit, None, &info, replaced)).await?;
    Ok(info)
}

/// Stores imported `keys` on `conn` with an audit event each, inside the caller's
/// transaction: a key whose hash is stored already (or earlier in `keys`) is skipped
/// (`ON CONFLICT DO NOTHING`, so an import racing another waits for it and then skips
/// what it stored); no active-key limit. Accounts are locked in the order of their ids,
/// so that concurrent imports queue instead of deadlocking; the events of one account
/// keep the order of `keys`, and so does the answer.
pub(crate) async fn import_audited<D>(
    conn: &mut <D::Db as Database>::Connection,
    keys: &[StoredKey],
    audit: &Audit,
) -> Result<ImportOutcome, StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].account_id.cmp(&keys[b].account_id));
    let insert = format!(
        "{} ON CONFLICT (key_hash) DO NOTHING",
        insert_key_sql::<D>()
    );
    let mut imported = Vec::new();
    let mut skipped = 0;
    let mut locked: Option<&str> = None;
    for index in order {
        let key = &keys[index];
        if locked != Some(key.account_id.as_str()) {
            lock_account::<D>(conn, &key.account_id).await?;
            locked = Some(&key.account_id);
        }
        let text = NewKeyText::of(key);
        let done = bind_new_key::<D>(sqlx::query(&insert), key, &text)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        if D::rows_affected(&done) == 0 {
            skipped += 1;
            continue;
        }
        let info = key.info();
        append_event::<D>(conn, key_event(audit, None, &info, None)).await?;
        imported.push((index, info));
    }
    imported.sort_by_key(|(index, _)| *index);
    Ok(ImportOutcome {
        imported: imported.into_iter().map(|(_, info)| info).collect(),
        skipped,
    })
}

/// A key's update and its audit event (the fields before and after), inside the
/// caller's transaction.
pub(crate) async fn update_audited<D>(
    conn: &mut <D::Db as Database>::Connection,
    account_id: &str,
    id: &KeyId,
    changes: &crate::store::KeyChanges,
    audit: &Audit,
) -> Result<KeyInfo, StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    lock_account::<D>(conn, account_id).await?;
    let before = fetch_key::<D, _>(&mut *conn, get_key::<D>(account_id, id)).await?;
    let (sql, stored) = (update_key_sql::<D>(), StoredChanges::of(changes));
    let query = update_key::<D>(&sql, account_id, id, &stored);
    let after = fetch_key::<D, _>(&mut *conn, query).await?;
    append_event::<D>(conn, key_event(audit, Some(&before), &after, None)).await?;
    Ok(after)
}

/// A key's revocation and its audit event, inside the caller's transaction; a key
/// revoked before is returned as it is, with no event. `Ok(None)` when nothing changed.
pub(crate) async fn revoke_audited<D>(
    conn: &mut <D::Db as Database>::Connection,
    account_id: &str,
    id: &KeyId,
    audit: &Audit,
) -> Result<(KeyInfo, bool), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    lock_account::<D>(conn, account_id).await?;
    let before = fetch_key::<D, _>(&mut *conn, get_key::<D>(account_id, id)).await?;
    if before.revoked_at.is_some() {
        return Ok((before, false));
    }
    let after = fetch_key::<D, _>(&mut *conn, revoke_key::<D>(account_id, id)).await?;
    append_event::<D>(conn, key_event(audit, Some(&before), &after, None)).await?;
    Ok((after, true))
}

/// Rows per statement when adding usage.
const USAGE_ROWS_PER_STATEMENT: usize = 200;

/// Adds `buckets` on `conn`, inside the caller's transaction: outcomes and addresses
/// upserted a few hundred rows per statement. The table keeps every address a batch
/// names (at most 80 per key and flush); [`usage`] answers the most frequent
/// [`MAX_USAGE_IPS`](crate::store::MAX_USAGE_IPS) by name and the rest as `other`.
pub(crate) async fn record_usage<D>(
    conn: &mut <D::Db as Database>::Connection,
    buckets: &[UsageBucket],
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    type Row<'b> = (&'b str, OffsetDateTime, &'b str, u64);
    let outcomes: Vec<Row<'_>> = buckets
        .iter()
        .flat_map(|b| {
            b.outcomes
                .iter()
                .map(move |(outcome, count)| (b.key_id.as_str(), b.hour, outcome.as_str(), *count))
        })
        .collect();
    let ips: Vec<Row<'_>> = buckets
        .iter()
        .flat_map(|b| {
            b.ips
                .iter()
                .map(move |(ip, count)| (b.key_id.as_str(), b.hour, ip.as_str(), *count))
        })
        .collect();
    // One row per key, hour and name (a batch may hold two buckets of one key-hour: a
    // record reloaded into the cache counts apart from the one before), in one order
    // for every instance: concurrent batches lock rows in the same order and queue
    // instead of deadlocking.
    let merge = |rows: Vec<Row<'_>>| -> Vec<(String, OffsetDateTime, String, u64)> {
        let mut merged: std::collections::BTreeMap<(&str, i128, &str), (OffsetDateTime, u64)> =
            std::collections::BTreeMap::new();
        for (key, hour, name, count) in rows {
            merged
                .entry((key, hour.unix_timestamp_nanos(), name))
                .or_insert((hour, 0))
                .1 += count;
        }
        merged
            .into_iter()
            .map(|((key, _, name), (hour, count))| (key.to_owned(), hour, name.to_owned(), count))
            .collect()
    };
    let (outcomes, ips) = (merge(outcomes), merge(ips));
    for (table, column, rows) in [
        ("key_usage", "outcome", &outcomes),
        ("key_usage_ips", "ip", &ips),
    ] {
        for chunk in rows.chunks(USAGE_ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, ${})",
                        4 * i + 1,
                        4 * i + 2,
                        4 * i + 3,
                        4 * i + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO {table} (key_id, hour, {column}, count) VALUES {} \
                 ON CONFLICT (key_id, hour, {column}) DO UPDATE SET count = {table}.count + excluded.count",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (key, hour, name, count) in chunk {
                query = D::bind_text(query, Some(key.as_str()));
                query = D::bind_time(query, Some(*hour));
                query = D::bind_text(query, Some(name.as_str()));
                query = D::bind_int(query, i64::try_from(*count).unwrap_or(i64::MAX));
            }
            query.execute(&mut *conn).await.map_err(backend)?;
        }
    }
    Ok(())
}

/// A key's buckets from `from` to before `to`, oldest first.
pub(crate) async fn usage<D>(
    conn: &mut <D::Db as Database>::Connection,
    id: &KeyId,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<UsageBucket>, StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let mut buckets: std::collections::BTreeMap<i128, UsageBucket> = Default::default();
    for (table, column) in [("key_usage", "outcome"), ("key_usage_ips", "ip")] {
        let sql = format!(
            "SELECT hour, {column}, count FROM {table} WHERE key_id = $1 AND hour >= $2 AND hour < $3"
        );
        let query = D::bind_text(sqlx::query(&sql), Some(id.as_str()));
        let rows = D::bind_time(D::bind_time(query, Some(from)), Some(to))
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
        for row in &rows {
            let hour = required(D::time(row, 0), "hour")?;
            let name = required(D::text(row, 1), column)?;
            let count = u64::try_from(D::int(row, 2).map_err(backend)?).unwrap_or(0);
            let bucket = buckets
                .entry(hour.unix_timestamp_nanos())
                .or_insert_with(|| UsageBucket::new(id.clone(), hour));
            if column == "ip" {
                bucket.ips.push((name, count));
            } else {
                bucket.outcomes.insert(name, count);
            }
        }
    }
    Ok(buckets
        .into_values()
        .map(|mut bucket| {
            bucket.ips = top_ips(bucket.ips.drain(..).collect());
            bucket
        })
        .collect())
}

/// Accepted requests per key of an account since `since`, in one query.
pub(crate) async fn usage_totals<'e, D, E>(
    executor: E,
    account_id: &str,
    since: OffsetDateTime,
) -> Result<Vec<(KeyId, u64)>, StoreError>
where
    D: Dialect,
    E: sqlx::Executor<'e, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
{
    let query = D::bind_text(
        sqlx::query(
            "SELECT u.key_id, CAST(SUM(u.count) AS BIGINT) FROM key_usage u \
             JOIN api_keys k ON k.id = u.key_id \
             WHERE k.account_id = $1 AND u.hour >= $2 AND u.outcome = 'accepted' \
             GROUP BY u.key_id",
        ),
        Some(account_id),
    );
    let rows = D::bind_time(query, Some(since))
        .fetch_all(executor)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let id = required(D::text(row, 0), "key_id")?;
            let count = u64::try_from(D::int(row, 1).map_err(backend)?).unwrap_or(0);
            Ok((KeyId::new(id), count))
        })
        .collect()
}

/// An account's limits set, with its audit event (the limits before and after),
/// inside the caller's transaction.
pub(crate) async fn set_account_limits_audited<D>(
    conn: &mut <D::Db as Database>::Connection,
    account_id: &str,
    limits: &AccountLimits,
    audit: &Audit,
) -> Result<(), StoreError>
where
    D: Dialect,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let (sql, ratelimits) = (
        set_account_limits_sql::<D>(),
        ratelimits_json(&limits.ratelimits),
    );
    let refill = account_refill_json(limits);
    lock_account::<D>(conn, account_id).await?;
    let rows = D::bind_text(sqlx::query(GET_ACCOUNT_LIMITS), Some(account_id))
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    let before = match rows.first() {
        Some(row) => read_account_limits::<D>(row, 0)?,
        None => AccountLimits::none(),
    };
    set_account_limits::<D>(&sql, account_id, &ratelimits, limits, &refill)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let event = crate::store::limits_event(audit, account_id, &before, limits);
    append_event::<D>(conn, event).await
}
