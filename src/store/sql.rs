//! What the SQL stores share: column lists, row decoding, error mapping.

use time::OffsetDateTime;

use super::{KeyInfo, StoreError};
use crate::key::{Environment, KeyId};

/// The columns of `api_keys` that make a [`KeyInfo`], in [`KeyColumns`] order.
pub(crate) const KEY_COLUMNS: &str = "k.id, k.account_id, k.project_id, k.name, k.hint, k.prefix, \
     k.environment, k.scopes, k.created_at, k.last_used_at, k.expires_at, k.revoked_at, \
     CAST(k.restrictions AS TEXT)";

/// The index of the first column after [`KEY_COLUMNS`].
pub(crate) const AFTER_KEY_COLUMNS: usize = 13;

/// [`KEY_COLUMNS`] without the table alias, for `UPDATE … RETURNING` (SQLite allows
/// no alias there).
pub(crate) const RETURNING_COLUMNS: &str = "id, account_id, project_id, name, hint, prefix, \
     environment, scopes, created_at, last_used_at, expires_at, revoked_at, \
     CAST(restrictions AS TEXT)";

/// The name of the migrations bookkeeping table.
pub(crate) const MIGRATIONS_TABLE: &str = "tower_api_keys_migrations";

/// One row of `api_keys`, decoded by a store into Rust types.
pub(crate) struct KeyColumns {
    pub(crate) id: String,
    pub(crate) account_id: String,
    pub(crate) project_id: Option<String>,
    pub(crate) name: String,
    pub(crate) hint: String,
    pub(crate) prefix: String,
    pub(crate) environment: String,
    pub(crate) scopes: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) last_used_at: Option<OffsetDateTime>,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) revoked_at: Option<OffsetDateTime>,
    pub(crate) restrictions: String,
}

impl KeyColumns {
    pub(crate) fn into_info(self) -> Result<KeyInfo, StoreError> {
        let environment = Environment::parse(&self.environment)
            .ok_or_else(|| corrupt("environment", &self.environment))?;
        let scopes = self
            .scopes
            .parse()
            .map_err(|_| corrupt("scopes", &self.scopes))?;
        let restrictions = serde_json::from_str(&self.restrictions)
            .map_err(|_| corrupt("restrictions", &self.restrictions))?;
        Ok(KeyInfo {
            id: KeyId::new(self.id),
            name: self.name,
            account_id: self.account_id,
            project_id: self.project_id,
            hint: self.hint,
            prefix: self.prefix,
            environment,
            scopes,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            restrictions,
        })
    }
}

fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Backend(format!("api_keys.{column} holds an unreadable value {value:?}").into())
}

/// Restrictions as stored (JSON text).
pub(crate) fn restrictions_json(restrictions: &crate::restriction::Restrictions) -> String {
    serde_json::to_string(restrictions).expect("restrictions serialize")
}

pub(crate) fn backend(error: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// A stored grace period, clamped into `u16` days.
pub(crate) fn grace_days(days: i64) -> u16 {
    u16::try_from(days.max(0)).unwrap_or(u16::MAX)
}
