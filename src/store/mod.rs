//! Where keys live: the [`KeyStore`] trait and its implementations.
//!
//! A store keeps, per key, its id, owner, name, scopes, environment, times and the
//! SHA-256 [`KeyHash`], never the key. Keys are created through
//! [`KeyManager`](crate::manage::KeyManager), which generates the key, hands the store a
//! [`StoredKey`] (no plaintext) and returns the plaintext once. Every store is also a
//! [`KeyVerifier`], so it can sit behind the layer directly.
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`MemoryStore`] | always | tests, examples, one process |
//! | [`SqliteStore`] | `sqlite` (default) | one instance, embedded |
//! | [`PostgresStore`] | `postgres` | many instances; changes reach each one's cache through a [`RevocationListener`] |
//! | [`SqlStore`] | `sqlite` or `postgres` | either, chosen by `DATABASE_URL` |
//!
//! The SQL stores share their statements, row decoding and binding (module `sql`); each
//! dialect holds only what differs.
//!
//! ```
//! use tower_api_keys::{CachedVerifier, Environment, KeyFormat, KeyManager, MemoryStore, Scope};
//! use tower_api_keys::manage::NewKey;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let manager = KeyManager::new(store.clone(), CachedVerifier::new(store), KeyFormat::new("sk"));
//! let created = manager
//!     .create_for_account("acct_1", Environment::LIVE, NewKey::named("CI key").scopes([Scope::Write]))
//!     .await
//!     .unwrap();
//! println!("shown once: {}", created.key.expose_secret());
//!
//! let listed = manager.list("acct_1").await.unwrap();
//! assert_eq!(listed[0].hint, created.key.hint());
//! # }
//! ```

/// Implements [`KeyStore`] by forwarding every method to `$target` (a `&impl KeyStore`
/// computed from `$this`).
macro_rules! forward_key_store {
    ([$($header:tt)*] |$this:ident| $target:expr) => {
        #[async_trait]
        $($header)* {
            async fn insert_audited(&self, key: StoredKey, audit: &crate::audit::Audit) -> Result<KeyInfo, StoreError> {
                let $this = self;
                $target.insert_audited(key, audit).await
            }
            async fn import_audited(&self, keys: Vec<StoredKey>, audit: &crate::audit::Audit) -> Result<crate::store::ImportOutcome, StoreError> {
                let $this = self;
                $target.import_audited(keys, audit).await
            }
            async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
                let $this = self;
                $target.list(account_id).await
            }
            async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
                let $this = self;
                $target.get(account_id, id).await
            }
            async fn update_audited(&self, account_id: &str, id: &KeyId, changes: &KeyChanges, audit: &crate::audit::Audit) -> Result<KeyInfo, StoreError> {
                let $this = self;
                $target.update_audited(account_id, id, changes, audit).await
            }
            async fn revoke_audited(&self, account_id: &str, id: &KeyId, audit: &crate::audit::Audit) -> Result<KeyInfo, StoreError> {
                let $this = self;
                $target.revoke_audited(account_id, id, audit).await
            }
            async fn touch(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
                let $this = self;
                $target.touch(used).await
            }
            async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyInfo>, StoreError> {
                let $this = self;
                $target.find_by_id(id).await
            }
            async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError> {
                let $this = self;
                $target.standing(account_id).await
            }
            async fn set_standing_audited(&self, account_id: &str, standing: AccountStanding, audit: &crate::audit::Audit) -> Result<(), StoreError> {
                let $this = self;
                $target.set_standing_audited(account_id, standing, audit).await
            }
            async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, StoreError> {
                let $this = self;
                $target.account_limits(account_id).await
            }
            async fn set_account_limits_audited(&self, account_id: &str, limits: &AccountLimits, audit: &crate::audit::Audit) -> Result<(), StoreError> {
                let $this = self;
                $target.set_account_limits_audited(account_id, limits, audit).await
            }
            async fn audit_events(&self, query: &crate::audit::AuditQuery) -> Result<crate::audit::AuditPage, StoreError> {
                let $this = self;
                $target.audit_events(query).await
            }
            async fn audit_trail(&self, account_id: &str) -> Result<Vec<crate::audit::AuditEvent>, StoreError> {
                let $this = self;
                $target.audit_trail(account_id).await
            }
            async fn audited_accounts(&self) -> Result<Vec<String>, StoreError> {
                let $this = self;
                $target.audited_accounts().await
            }
            async fn record_usage(&self, buckets: &[crate::store::UsageBucket]) -> Result<(), StoreError> {
                let $this = self;
                $target.record_usage(buckets).await
            }
            async fn usage(&self, id: &KeyId, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<crate::store::UsageBucket>, StoreError> {
                let $this = self;
                $target.usage(id, from, to).await
            }
            async fn usage_totals(&self, account_id: &str, since: OffsetDateTime) -> Result<Vec<(KeyId, u64)>, StoreError> {
                let $this = self;
                $target.usage_totals(account_id, since).await
            }
        }
    };
}

mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

pub use memory::MemoryStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sql::SqlStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use sql::postgres::{DEFAULT_REVOCATION_CHANNEL, PostgresStore, RevocationListener};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sql::sqlite::SqliteStore;

use std::error::Error;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use crate::audit::{Action, Audit, AuditEvent, AuditPage, AuditQuery, Draft};
use crate::key::{ApiKey, Environment, KeyFormat, KeyHash, KeyId};
use crate::limit::RateLimit;
use crate::limit::credits::{CreditError, CreditGrant, CreditStore, CreditSubject, Credits};
use crate::record::{AccountLimits, AccountStanding, KeyLimits, KeyRecord, Metadata};
use crate::restriction::Restrictions;
use crate::scope::Scopes;
use crate::verify::KeyVerifier;

/// The default most active keys per account and environment (revoked and expired keys
/// do not count).
pub const DEFAULT_ACTIVE_KEY_LIMIT: usize = 50;

/// The key a new key replaces (rotation): it stops working at `ends_at`, in the same
/// transaction that creates the new key, and does not count against the active-key
/// limit for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replacement {
    /// The old key.
    pub id: KeyId,
    /// When the old key stops: revoked if this is not in the future, else it expires
    /// then (or earlier, if it already expired earlier).
    pub ends_at: OffsetDateTime,
    /// Whether the new key takes over the old key's remaining credits (rotation: the old
    /// key is left with none, so a rotation never doubles a balance).
    pub moves_credits: bool,
}

impl Replacement {
    /// Replaces `id`, ending it at `ends_at`.
    #[must_use]
    pub fn new(id: KeyId, ends_at: OffsetDateTime) -> Self {
        Replacement {
            id,
            ends_at,
            moves_credits: false,
        }
    }

    /// The new key takes over the old key's remaining credits.
    #[must_use]
    pub fn moving_credits(mut self) -> Self {
        self.moves_credits = true;
        self
    }
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyChanges {
    /// A new name.
    pub name: Option<String>,
    /// New restrictions (replacing the old ones).
    pub restrictions: Option<Restrictions>,
    /// New scopes (replacing the old ones).
    pub scopes: Option<Scopes>,
    /// A new expiry: `Some(None)` makes the key never expire.
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// A new end user: `Some(None)` clears it.
    pub owner_id: Option<Option<String>>,
    /// New metadata (replacing the old).
    pub metadata: Option<Metadata>,
    /// New rate limits (replacing the old ones).
    pub ratelimits: Option<Vec<RateLimit>>,
    /// A new balance: `Some(None)` removes it (the key spends no credits).
    pub credits: Option<Option<Credits>>,
}

impl KeyChanges {
    /// A rename.
    #[must_use]
    pub fn name(name: impl Into<String>) -> Self {
        KeyChanges {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// New restrictions.
    #[must_use]
    pub fn restrictions(mut self, restrictions: Restrictions) -> Self {
        self.restrictions = Some(restrictions);
        self
    }

    /// New scopes.
    #[must_use]
    pub fn scopes(mut self, scopes: impl Into<Scopes>) -> Self {
        self.scopes = Some(scopes.into());
        self
    }

    /// A new expiry (`None`: never).
    #[must_use]
    pub fn expires_at(mut self, at: Option<OffsetDateTime>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// A new end user (`None`: none).
    #[must_use]
    pub fn owner_id(mut self, owner_id: Option<String>) -> Self {
        self.owner_id = Some(owner_id);
        self
    }

    /// New metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// New rate limits.
    #[must_use]
    pub fn ratelimits(mut self, ratelimits: Vec<RateLimit>) -> Self {
        self.ratelimits = Some(ratelimits);
        self
    }

    /// A new balance (`None`: none).
    #[must_use]
    pub fn credits(mut self, credits: Option<Credits>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Whether nothing changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.restrictions.is_none()
            && self.scopes.is_none()
            && self.expires_at.is_none()
            && self.owner_id.is_none()
            && self.metadata.is_none()
            && self.ratelimits.is_none()
            && self.credits.is_none()
    }

    /// Applies the changes to `key`.
    pub(crate) fn apply(&self, key: &mut KeyInfo) {
        if let Some(name) = &self.name {
            key.name.clone_from(name);
        }
        if let Some(restrictions) = &self.restrictions {
            key.restrictions = restrictions.clone();
        }
        if let Some(scopes) = &self.scopes {
            key.scopes = scopes.clone();
        }
        if let Some(expires_at) = self.expires_at {
            key.expires_at = expires_at;
        }
        if let Some(owner_id) = &self.owner_id {
            key.owner_id.clone_from(owner_id);
        }
        if let Some(metadata) = &self.metadata {
            key.metadata.clone_from(metadata);
        }
        if let Some(ratelimits) = &self.ratelimits {
            key.ratelimits.clone_from(ratelimits);
        }
        if let Some(credits) = self.credits {
            key.credits = credits;
        }
    }
}

/// A new key as the store receives it from [`KeyManager`](crate::manage::KeyManager):
/// what it is and what it may do, its hash, hint and prefix. No plaintext.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredKey {
    /// The key's id.
    pub id: KeyId,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// The last four characters of the key.
    pub hint: String,
    /// The public start of the key, such as `sk_live`.
    pub prefix: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// The owning account.
    pub account_id: String,
    /// The key's environment.
    pub environment: Environment,
    /// A human name.
    pub name: String,
    /// The key's scopes.
    pub scopes: Scopes,
    /// The project the key is locked to, if any.
    pub project_id: Option<String>,
    /// When the key stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// Where and for what the key may be used.
    pub restrictions: Restrictions,
    /// Who created it (see [`KeyRecord::created_by`]).
    pub created_by: Option<String>,
    /// The end user it belongs to, if any.
    pub owner_id: Option<String>,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its rate limits.
    pub ratelimits: Vec<RateLimit>,
    /// Its balance, if it spends credits.
    pub credits: Option<Credits>,
    /// The key this one replaces, if it is a rotation.
    pub replaces: Option<Replacement>,
}

impl StoredKey {
    /// Describes `key`, a key of `format` just generated for `account_id` in
    /// `environment`, named `name`: no scopes, project, expiry or restrictions, a fresh
    /// `ak_` id. What [`KeyManager`](crate::manage::KeyManager) hands a store (after
    /// setting the rest); public for the tests of stores of your own.
    #[must_use]
    pub fn new(
        format: &KeyFormat,
        key: &ApiKey,
        account_id: impl Into<String>,
        environment: Environment,
        name: impl Into<String>,
    ) -> Self {
        StoredKey {
            id: KeyId::generate(),
            hash: key.hash(),
            hint: key.hint(),
            prefix: format.display_prefix(&environment),
            created_at: now_in_millis(),
            account_id: account_id.into(),
            environment,
            name: name.into(),
            scopes: Scopes::none(),
            project_id: None,
            expires_at: None,
            restrictions: Restrictions::none(),
            created_by: None,
            owner_id: None,
            metadata: Metadata::new(),
            ratelimits: Vec::new(),
            credits: None,
            replaces: None,
        }
    }

    /// The listing view of this key, as stored.
    #[must_use]
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            account_id: self.account_id.clone(),
            project_id: self.project_id.clone(),
            hint: self.hint.clone(),
            prefix: self.prefix.clone(),
            environment: self.environment.clone(),
            scopes: self.scopes.clone(),
            created_at: self.created_at,
            last_used_at: None,
            expires_at: self.expires_at,
            revoked_at: None,
            restrictions: self.restrictions.clone(),
            created_by: self.created_by.clone(),
            owner_id: self.owner_id.clone(),
            metadata: self.metadata.clone(),
            ratelimits: self.ratelimits.clone(),
            credits: self.credits,
        }
    }
}

/// The audit event of a change to a key: the fields of `after` that differ from
/// `before` (`None` for a new key), and the key a new one replaces.
pub(crate) fn key_event(
    audit: &Audit,
    before: Option<&KeyInfo>,
    after: &KeyInfo,
    replaces: Option<&KeyId>,
) -> Draft {
    let before = before.map(|key| serde_json::to_value(key).unwrap_or_default());
    let mut after_json = serde_json::to_value(after).unwrap_or_default();
    if let (Some(old), Some(fields)) = (replaces, after_json.as_object_mut()) {
        fields.insert("replaces".into(), old.as_str().into());
    }
    Draft::of(audit, &after.account_id)
        .key(after.id.as_str())
        .environment(after.environment.as_str())
        .changes(before.as_ref(), &after_json, &["last_used_at"])
}

/// The audit event of an account's standing changing.
pub(crate) fn standing_event(
    audit: &Audit,
    account_id: &str,
    before: AccountStanding,
    after: AccountStanding,
) -> Draft {
    let json = |standing: AccountStanding| {
        serde_json::json!({
            "past_due_since": standing.past_due_since.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()),
            "grace_days": standing.grace_days,
        })
    };
    Draft::of(audit, account_id).changes(Some(&json(before)), &json(after), &[])
}

/// The audit event of an account's limits changing.
pub(crate) fn limits_event(
    audit: &Audit,
    account_id: &str,
    before: &AccountLimits,
    after: &AccountLimits,
) -> Draft {
    let json = |limits: &AccountLimits| serde_json::to_value(limits).unwrap_or_default();
    Draft::of(audit, account_id).changes(Some(&json(before)), &json(after), &[])
}

/// Now, truncated to milliseconds: the precision every store keeps.
pub(crate) fn now_in_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap_or(now)
}

/// A key as listed: everything but the secret and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key's id (`ak_…`).
    pub id: KeyId,
    /// Its human name.
    pub name: String,
    /// The owning account.
    pub account_id: String,
    /// The project it is locked to, if any.
    pub project_id: Option<String>,
    /// The last four characters of the key.
    pub hint: String,
    /// The public start of the key (`sk_live`).
    pub prefix: String,
    /// Its environment.
    pub environment: Environment,
    /// Its scopes.
    pub scopes: Scopes,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last used, as far as the store has been told.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it stops working, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Where and for what it may be used.
    pub restrictions: Restrictions,
    /// Who created it: the creating key's id, or a dashboard user.
    pub created_by: Option<String>,
    /// The end user it belongs to, if any.
    pub owner_id: Option<String>,
    /// Its metadata (a JSON object).
    pub metadata: Metadata,
    /// Its rate limits.
    pub ratelimits: Vec<RateLimit>,
    /// Its balance (`remaining` as the store holds it: credits that instances hold in
    /// leases are not counted), if it spends credits.
    pub credits: Option<Credits>,
}

impl KeyInfo {
    /// The record a verifier returns for this key.
    #[must_use]
    pub fn to_record(&self) -> KeyRecord {
        KeyRecord::new(
            self.id.clone(),
            self.name.clone(),
            self.account_id.clone(),
            self.environment.clone(),
        )
        .with_scopes(self.scopes.clone())
        .with_created_at(self.created_at)
        .with_expires_at(self.expires_at)
        .with_revoked_at(self.revoked_at)
        .with_project_id(self.project_id.clone())
        .with_restrictions(self.restrictions.clone())
        .with_provenance(
            self.created_by.clone(),
            self.owner_id.clone(),
            self.metadata.clone(),
        )
        .with_limits(KeyLimits::new(
            self.ratelimits.clone(),
            self.credits,
            AccountLimits::none(),
        ))
    }
}

/// A key and its plaintext, returned once when it is created or rotated.
#[derive(Debug)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The plaintext key: show it to the user now; it cannot be retrieved again.
    pub key: ApiKey,
    /// The stored key.
    pub info: KeyInfo,
}

impl CreatedKey {
    /// Pairs a generated key with what the store kept of it.
    #[must_use]
    pub fn new(key: ApiKey, info: KeyInfo) -> Self {
        CreatedKey { key, info }
    }
}

/// What [`KeyStore::import_audited`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOutcome {
    /// The keys stored, in the order given.
    pub imported: Vec<KeyInfo>,
    /// How many keys were skipped because their hash was stored already.
    pub skipped: usize,
}

/// Refuses an import holding a key that replaces another (imports create keys only).
pub(crate) fn check_importable(keys: &[StoredKey]) -> Result<(), StoreError> {
    if keys.iter().any(|key| key.replaces.is_some()) {
        return Err(StoreError::Backend(
            "an imported key cannot replace another key".into(),
        ));
    }
    Ok(())
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The account already has its maximum of active keys in the key's environment
    /// (409 `api_key_limit_reached`).
    #[error("the account already has {limit} active API keys in this environment")]
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// No key with this id in this account.
    #[error("no such API key")]
    NotFound,
    /// The store's backend failed.
    #[error("key store backend failed: {0}")]
    Backend(#[source] Box<dyn Error + Send + Sync>),
}

/// The most client addresses a usage bucket keeps by name (the rest are `other`).
pub const MAX_USAGE_IPS: usize = 20;

/// What one key did in one hour: requests by outcome (`accepted`, or the rejection
/// code of a request that reached the key) and the client addresses that made them
/// (the most frequent [`MAX_USAGE_IPS`], the rest counted under `other`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsageBucket {
    /// The key.
    pub key_id: KeyId,
    /// The hour's start (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub hour: OffsetDateTime,
    /// Requests by outcome.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Requests by client address, most first; `other` last if any.
    pub ips: Vec<(String, u64)>,
}

impl UsageBucket {
    /// An empty bucket of `key_id` for the hour that holds `at`.
    #[must_use]
    pub fn new(key_id: KeyId, at: OffsetDateTime) -> Self {
        UsageBucket {
            key_id,
            hour: hour_of(at),
            outcomes: std::collections::BTreeMap::new(),
            ips: Vec::new(),
        }
    }

    /// Adds `other`'s counts (same key and hour) to this one, keeping at most
    /// [`MAX_USAGE_IPS`] addresses by name.
    pub fn merge(&mut self, other: &UsageBucket) {
        for (outcome, count) in &other.outcomes {
            *self.outcomes.entry(outcome.clone()).or_insert(0) += count;
        }
        let mut ips: std::collections::HashMap<String, u64> = self.ips.drain(..).collect();
        for (ip, count) in &other.ips {
            *ips.entry(ip.clone()).or_insert(0) += count;
        }
        self.ips = top_ips(ips);
    }
}

/// The start of the hour that holds `at`, in UTC.
pub(crate) fn hour_of(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_time(time::Time::from_hms(at.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT))
}

/// Counts by address, most first, at most [`MAX_USAGE_IPS`] by name and the rest (and
/// any earlier `other`) as `other`, last.
pub(crate) fn top_ips(ips: std::collections::HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut other = 0;
    let mut named: Vec<(String, u64)> = Vec::with_capacity(ips.len());
    for (ip, count) in ips {
        if ip == "other" {
            other += count;
        } else {
            named.push((ip, count));
        }
    }
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (_, count) in named.drain(MAX_USAGE_IPS.min(named.len())..) {
        other += count;
    }
    if other > 0 {
        named.push(("other".to_owned(), other));
    }
    named
}

/// What the [usage recorder](crate::usage::UsageRecorder) needs of a store: writing
/// last-used times and hourly usage, a batch at a time. Every [`KeyStore`] is one.
#[async_trait]
pub trait TouchLastUsed: Send + Sync + 'static {
    /// Records when keys were last used; a store keeps the later of two times.
    async fn touch_last_used(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Adds hourly usage to what the store keeps (default: keeps none).
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        let _ = buckets;
        Ok(())
    }
}

#[async_trait]
impl<S: KeyStore + ?Sized> TouchLastUsed for S {
    async fn touch_last_used(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        self.touch(used).await
    }

    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        self.record_usage(buckets).await
    }
}

/// Keeps API keys. See the [module docs](self).
///
/// Every store also keeps balances exactly ([`CreditStore`]).
///
/// Every method that names a key also names the account: a key of another account is
/// [`StoreError::NotFound`], exactly like a key that does not exist. (Only
/// [`find_by_id`](Self::find_by_id), for operator tools, does not.) The lookup by hash,
/// revoked and expired keys included, is the [`KeyVerifier`] every store also is.
#[async_trait]
pub trait KeyStore: KeyVerifier + CreditStore {
    /// Stores a new key, unless its account already has its maximum of active keys in
    /// the key's environment ([`StoreError::LimitReached`]; keys revoked or past their
    /// expiry do not count, nor does the key it replaces). Checking and inserting (and
    /// ending the key it [replaces](StoredKey::replaces), which must be active: else
    /// [`StoreError::NotFound`]) and appending the audit event (`audit`: who, which
    /// action, from where) are one atomic step.
    async fn insert_audited(&self, key: StoredKey, audit: &Audit) -> Result<KeyInfo, StoreError>;

    /// [`insert_audited`](Self::insert_audited) by an operator (`key.created`, or
    /// `key.rotated` for a replacement).
    async fn insert(&self, key: StoredKey) -> Result<KeyInfo, StoreError> {
        let action = if key.replaces.is_some() {
            Action::Rotated
        } else {
            Action::Created
        };
        self.insert_audited(key, &Audit::operator(action)).await
    }

    /// Stores keys made elsewhere, known by their hash (an import: see
    /// [`KeyManager::import`](crate::manage::KeyManager::import)), all in one
    /// transaction. A key whose hash is stored already, or comes earlier in `keys`, is
    /// skipped, so importing the same keys twice stores them once. Each key stored gets
    /// its audit event (`audit`, normally [`Action::Imported`]), chained per account
    /// like every event. The active-key limit does not apply: an import is the
    /// operator's, and may bring an account more keys than the limit allows it to
    /// create. A key that [replaces](StoredKey::replaces) another is refused
    /// ([`StoreError::Backend`]), before anything is stored. All or nothing: on an
    /// error, no key and no event is stored.
    ///
    /// Stores shared by many instances publish nothing: like a new key, an imported one
    /// has no cached answer to drop except negative ones (an instance that was asked for
    /// the key before it was imported), which end with the cache's negative TTL.
    async fn import_audited(
        &self,
        keys: Vec<StoredKey>,
        audit: &Audit,
    ) -> Result<ImportOutcome, StoreError>;

    /// The account's active (not revoked) keys, oldest first.
    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError>;

    /// One key of the account, revoked or not.
    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError>;

    /// Changes an active key's name, restrictions, scopes, expiry, end user, metadata,
    /// rate limits and/or credits ([`StoreError::NotFound`] for a revoked key, which
    /// stays as it was revoked), with its audit event (the fields before and after), in
    /// one transaction.
    async fn update_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError>;

    /// [`update_audited`](Self::update_audited) by an operator.
    async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<KeyInfo, StoreError> {
        let audit = Audit::operator(Action::Updated);
        self.update_audited(account_id, id, changes, &audit).await
    }

    /// Revokes a key. Revoking a revoked key succeeds, keeps the first revocation time
    /// and writes no event.
    ///
    /// Stores shared by many instances publish every change that affects verification
    /// (insert with a replacement, update, revoke, set_standing, set_account_limits) in
    /// the same transaction, so that every instance's cache drops it: see
    /// `PostgresStore` (feature `postgres`).
    async fn revoke_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError>;

    /// [`revoke_audited`](Self::revoke_audited) by an operator.
    async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        self.revoke_audited(account_id, id, &Audit::operator(Action::Revoked))
            .await
    }

    /// Records when keys were last used (a batch, from the usage recorder); one
    /// statement per batch in the SQL stores.
    async fn touch(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError>;

    /// A key by id alone, whatever its account: for operator tools such as the CLI,
    /// never for requests made with a key.
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyInfo>, StoreError>;

    /// The account's billing standing (good standing if the account is not known).
    async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError>;

    /// Sets the account's billing standing, with its audit event. Keys already cached
    /// keep the old standing until invalidated: [`KeyManager`](crate::manage::KeyManager)
    /// does that for you.
    async fn set_standing_audited(
        &self,
        account_id: &str,
        standing: AccountStanding,
        audit: &Audit,
    ) -> Result<(), StoreError>;

    /// [`set_standing_audited`](Self::set_standing_audited) by an operator.
    async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), StoreError> {
        let audit = Audit::operator(Action::StandingChanged);
        self.set_standing_audited(account_id, standing, &audit)
            .await
    }

    /// The account's rate limits and balance (none if the account is not known).
    async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, StoreError>;

    /// Sets the account's rate limits and balance (the balance's epoch moves on, so
    /// credits leased before are not returned into it), with its audit event. Stores
    /// shared by many instances publish the change per account.
    async fn set_account_limits_audited(
        &self,
        account_id: &str,
        limits: &AccountLimits,
        audit: &Audit,
    ) -> Result<(), StoreError>;

    /// [`set_account_limits_audited`](Self::set_account_limits_audited) by an operator.
    async fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<(), StoreError> {
        let audit = Audit::operator(Action::LimitsChanged);
        self.set_account_limits_audited(account_id, limits, &audit)
            .await
    }

    /// A page of an account's audit events, newest first.
    async fn audit_events(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Every event of an account, oldest first (to verify the chain or export it).
    async fn audit_trail(&self, account_id: &str) -> Result<Vec<AuditEvent>, StoreError>;

    /// The accounts that have audit events.
    async fn audited_accounts(&self) -> Result<Vec<String>, StoreError>;

    /// Adds hourly usage (from the usage recorder, a batch at a time, in one
    /// transaction).
    async fn record_usage(&self, buckets: &[UsageBucket]) -> Result<(), StoreError>;

    /// A key's usage by hour from `from` to before `to`, oldest first (the route checks
    /// the key's account first).
    async fn usage(
        &self,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<UsageBucket>, StoreError>;

    /// Accepted requests since `since` for each key of an account that has any, in one
    /// query.
    async fn usage_totals(
        &self,
        account_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<(KeyId, u64)>, StoreError>;
}

#[async_trait]
impl<S: CreditStore + ?Sized> CreditStore for std::sync::Arc<S> {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        (**self).take_credits(subject, want, now).await
    }

    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError> {
        (**self).return_credits(subject, units, epoch, until).await
    }
}

forward_key_store!([impl<S: KeyStore + ?Sized> KeyStore for std::sync::Arc<S>] |this| (**this));

#[cfg(test)]
impl KeyInfo {
    /// A key of `account_id` in `environment`, with nothing else, for unit tests.
    pub(crate) fn for_test(account_id: &str, environment: Environment) -> Self {
        KeyInfo {
            id: KeyId::new("ak_test"),
            name: "k".into(),
            account_id: account_id.into(),
            project_id: None,
            hint: "abcd".into(),
            prefix: "sk_test".into(),
            environment,
            scopes: Scopes::none(),
            created_at: now_in_millis(),
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            restrictions: Restrictions::none(),
            created_by: None,
            owner_id: None,
            metadata: Metadata::new(),
            ratelimits: Vec::new(),
            credits: None,
        }
    }
}

/// Creates a key directly in `store`, for the stores' own unit tests (everything else
/// creates keys through [`KeyManager`](crate::manage::KeyManager)).
#[cfg(test)]
pub(crate) async fn create_for_test<S: KeyStore + ?Sized>(
    store: &S,
    account_id: &str,
    name: &str,
    environment: Environment,
    scopes: Scopes,
) -> Result<CreatedKey, StoreError> {
    let format = KeyFormat::new("sk");
    let key = format.generate(&environment);
    let mut stored = StoredKey::new(&format, &key, account_id, environment, name);
    stored.scopes = scopes;
    let info = store.insert(stored).await?;
    Ok(CreatedKey::new(key, info))
}
