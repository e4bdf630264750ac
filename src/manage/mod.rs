//! Key management: [`KeyManager`] (the domain: no HTTP, used by the routes and the
//! `apikeys` CLI alike; its errors in [`ManageError`]) and, with the `axum` feature,
//! `KeyRoutes` / `router` (its HTTP face, which only translates requests to these
//! calls and errors to answers).
//!
//! | route | does | answers (default `KeyRoutes`) |
//! |---|---|---|
//! | `POST /api-keys` | create, body `{"name", "scopes"?, "project_id"?, "expires_at"?, "restrictions"?, "owner_id"?, "metadata"?, "ratelimits"?, "credits"?}` | 201, the key once |
//! | `GET /api-keys` | list the caller's active keys | 200 `{"data": [...]}` |
//! | `GET /api-keys/{id}` | one key | 200 |
//! | `PATCH /api-keys/{id}` | rename, restrict, set the end user, metadata, rate limits or credits, body `{"name"?, "restrictions"?, "owner_id"?, "metadata"?, "ratelimits"?, "credits"?}` | 200 |
//! | `DELETE /api-keys/{id}` | revoke (idempotent) | 204 |
//! | `POST /api-keys/{id}/rotate` | rotate, body `{"overlap_seconds"?}` (default 0) | 201, the new key once |
//! | `GET /api-keys/{id}/usage` | hourly usage, `?from=&to=` (default the last 24 h) | 200 `{"data": [{"hour", "requests", "outcomes", "ips"}]}` |
//! | `GET /audit-events` | the audit trail, `?key_id=&action=&from=&to=&cursor=&limit=` | 200 `{"data": [...], "next_cursor"}` |
//!
//! The caller is the request's [`Principal`] (an API key, which by default needs the
//! `admin` scope) or, for dashboards, a [`KeyOwner`] that your session middleware put
//! into the request's extensions. The routes act on the caller's account, environment
//! and project only (another's key is a 404). A key never creates a key with more than
//! it has: not a scope it lacks, not another project than its own, not a later expiry.
//! `KeyRoutes` shapes the answers: an [`Envelope`](crate::error::Envelope), the
//! fields of a key, what PATCH and DELETE answer, whether keys can be renamed or
//! rotated here. Mount
//! them under any prefix, behind the [`ApiKeyLayer`](crate::ApiKeyLayer):
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::Router;
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyFormat, KeyManager, MemoryStore};
//! use tower_api_keys::manage::router;
//!
//! let format = KeyFormat::new("sk");
//! let store = MemoryStore::new();
//! let cache = CachedVerifier::new(store.clone());
//! let manager = KeyManager::new(store, cache.clone(), format.clone());
//! let app: Router = Router::new()
//!     .nest("/v1/account", router(manager))
//!     .layer(ApiKeyLayer::new(format, cache));
//! # }
//! ```
//!
//! Errors: 400 `invalid_json`; 422 `invalid_body` (not a JSON object), `invalid_name`
//! (missing, empty or over 100 characters), `rename_not_allowed` (renaming is turned
//! off), `invalid_scope` (not a string or not one of the manager's scopes),
//! `invalid_project` (not a non-empty string, or not the caller's project),
//! `invalid_expiry` (not RFC 3339, not in the future, or past the caller's own expiry),
//! `invalid_environment`, `invalid_restrictions` (unreadable, or differing from a
//! restricted caller's own), `invalid_overlap`, `invalid_owner` (not a string of 1 to 200
//! characters), `invalid_metadata` (not a JSON object, or over 4 KiB),
//! `invalid_ratelimits` (not an array of `{"name", "limit", "window_seconds"}` with
//! positive whole numbers, more than five, or a name twice), `invalid_credits` (not
//! `{"remaining", "refill"?}`, a negative number, an unknown interval, a day outside
//! 1–31); 403 `insufficient_scope` (asking for a
//! scope the caller does not hold, or a caller without the router's scope); 403
//! `key_exceeds_caller` (rotating a key broader than the calling key: see below); 403
//! `cross_site_request` (a [`KeyOwner`]'s request that the browser marks as sent by
//! another site, `Sec-Fetch-Site: cross-site` or `same-site`: a session cookie never
//! lets another site manage keys); 404
//! `api_key_not_found`; 409 `api_key_limit_reached` (the account's active keys in that
//! environment); 503 `store_unavailable`. Nothing is written when a request is refused.
//!
//! **Limits too.** A key never mints, rotates or changes a key with a higher rate limit
//! (same name, no larger quota, no higher rate) or no limit where it has one, and never
//! makes credits: a key with a balance gives a new key credits out of its own (a
//! transfer; none by default, no refill), lowers balances but never raises one, and
//! rotation moves a balance and its refill to the new key (403 `key_exceeds_caller`
//! otherwise). Without `ratelimits` a new key gets its creator's. An account's limits
//! are the operator's ([`KeyManager::set_account_limits`]), not its keys'; they cap what
//! all its keys spend together. A [`KeyOwner`] may give any limits, as any scope.
//!
//! **Routes that return a secret obey the same rules.** Rotation hands out a new secret
//! with the rotated key's scopes, expiry, restrictions and project. So an API key may
//! rotate only a key that it could have created itself: every scope of that key is one
//! the caller holds, its expiry is no later than the caller's (a caller that expires
//! cannot rotate a key that never does), its restrictions are the caller's own when the
//! caller is restricted, and its project is the caller's when the caller is locked to
//! one. Rotation needs the same router scope as creation. PATCH (rename, restrictions)
//! follows the same rule, so a key cannot lift the restrictions of a broader key.
//! Revocation does not: any key allowed to manage keys may revoke them. A [`KeyOwner`]
//! (a signed-in user) may rotate and change any key it manages.

#[cfg(feature = "dashboard")]
mod dashboard;
mod error;
mod import;
#[cfg(feature = "openapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
pub mod openapi;
#[cfg(feature = "axum")]
mod routes;

#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub use dashboard::Dashboard;
pub use error::{Invalid, ManageError};
pub use import::{ImportError, ImportReport};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use routes::{Ack, KeyRoutes, router, router_with_scope};

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::audit::{Action, Actor, Audit, AuditEvent, AuditPage, AuditQuery};
use crate::cache::CachedVerifier;
use crate::error::AuthError;
use crate::key::{Environment, KeyFormat, KeyId};
use crate::limit::RateLimit;
use crate::limit::credits::{CreditSubject, Credits};
use crate::principal::Principal;
use crate::record::{AccountLimits, AccountStanding, MAX_METADATA_BYTES, Metadata};
use crate::restriction::Restrictions;
use crate::scope::{Scope, Scopes};
use crate::store::{CreatedKey, KeyChanges, KeyInfo, KeyStore, Replacement, StoreError, StoredKey};
use crate::verify::KeyVerifier;

/// The longest key name accepted.
pub const MAX_NAME_LEN: usize = 100;

/// Who manages keys when the caller is not an API key: a user signed in to your
/// dashboard, say. Your session middleware puts one into the request's extensions and
/// the management routes act for it: its account, its environment, and its project if
/// it has one (keys it creates are locked to that project; it sees only that project's
/// keys). It may create keys with any of the manager's scopes. A request that also
/// carries a [`Principal`] (an API key went through the layer) is that key's, not the
/// owner's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyOwner {
    /// The account the keys belong to.
    pub account_id: String,
    /// The environment of the keys it manages.
    pub environment: Environment,
    /// The project its keys are locked to, if any.
    pub project_id: Option<String>,
    /// The signed-in user, recorded as the `created_by` of the keys it creates.
    pub user_id: Option<String>,
}

impl KeyOwner {
    /// An owner of `account_id`'s keys in `environment`.
    #[must_use]
    pub fn new(account_id: impl Into<String>, environment: Environment) -> Self {
        KeyOwner {
            account_id: account_id.into(),
            environment,
            project_id: None,
            user_id: None,
        }
    }

    /// Limits the owner to one project's keys.
    #[must_use]
    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = Some(project_id.into());
        self
    }

    /// Names the signed-in user: the keys it creates record it as `created_by`.
    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }
}

/// Creates, lists, changes, rotates and revokes keys, keeping the cache in step. Cheap
/// to clone; configure it with the methods that take and return it, before or after
/// cloning.
pub struct KeyManager<S, V> {
    parts: Arc<Parts<S, V>>,
    scopes: Arc<[Scope]>,
    id_prefix: Arc<str>,
    /// Who the audit trail names for changes made through this handle, and from where.
    actor: Actor,
    client_ip: Option<IpAddr>,
}

struct Parts<S, V> {
    store: S,
    cache: CachedVerifier<V>,
    format: KeyFormat,
}

impl<S, V> Clone for KeyManager<S, V> {
    fn clone(&self) -> Self {
        KeyManager {
            parts: Arc::clone(&self.parts),
            scopes: Arc::clone(&self.scopes),
            id_prefix: Arc::clone(&self.id_prefix),
            actor: self.actor.clone(),
            client_ip: self.client_ip,
        }
    }
}

impl<S, V> fmt::Debug for KeyManager<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("format", &self.parts.format)
            .field("scopes", &self.scopes)
            .field("id_prefix", &self.id_prefix)
            .finish_non_exhaustive()
    }
}

/// A key to create: the one request type of every way to create a key (an API key's
/// request, a [`KeyOwner`]'s, an operator's, a reissue). The account and environment
/// come from the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewKey {
    /// The key's name (required, at most [`MAX_NAME_LEN`] characters).
    pub name: String,
    /// Its scopes; `None`: the creator's own.
    pub scopes: Option<Scopes>,
    /// The project to lock it to.
    pub project_id: Option<String>,
    /// When it stops working.
    pub expires_at: Option<OffsetDateTime>,
    /// Where and for what it may be used; `None`: the creator's.
    pub restrictions: Option<Restrictions>,
    /// The end user the key belongs to.
    pub owner_id: Option<String>,
    /// Free-form data kept with the key (a JSON object of at most
    /// [`MAX_METADATA_BYTES`]).
    pub metadata: Metadata,
    /// Its rate limits; `None`: the creator's own (none for operators and owners).
    pub ratelimits: Option<Vec<RateLimit>>,
    /// Its balance; `None`: for a key creating a key, its own current balance if it
    /// has one (else none).
    pub credits: Option<Credits>,
}

impl NewKey {
    /// A key named `name`, with the creator's scopes.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        NewKey {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the scopes.
    #[must_use]
    pub fn scopes(mut self, scopes: impl Into<Scopes>) -> Self {
        self.scopes = Some(scopes.into());
        self
    }

    /// Locks the key to a project.
    #[must_use]
    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = Some(project_id.into());
        self
    }

    /// Sets an expiry.
    #[must_use]
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets restrictions.
    #[must_use]
    pub fn restrictions(mut self, restrictions: Restrictions) -> Self {
        self.restrictions = Some(restrictions);
        self
    }

    /// Says which end user the key belongs to.
    #[must_use]
    pub fn owner(mut self, owner_id: impl Into<String>) -> Self {
        self.owner_id = Some(owner_id.into());
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the rate limits (at most five, names unique).
    #[must_use]
    pub fn ratelimits(mut self, ratelimits: Vec<RateLimit>) -> Self {
        self.ratelimits = Some(ratelimits);
        self
    }

    /// Gives the key a balance of credits.
    #[must_use]
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }
}

/// Rate limits as given: at most five, each valid, names unique.
fn check_ratelimits(limits: &[RateLimit]) -> Result<(), ManageError> {
    RateLimit::check_all(limits)
        .map_err(|error| ManageError::invalid(Invalid::RateLimits, error.to_string()))
}

/// A balance as given.
fn check_credits(credits: Option<&Credits>) -> Result<(), ManageError> {
    match credits.map(Credits::check) {
        Some(Err(error)) => Err(ManageError::invalid(Invalid::Credits, error)),
        _ => Ok(()),
    }
}

/// Whether `key`'s limits are within `caller`'s (no higher rate limit, no more credits,
/// none lifted): part of [`check_within`].
fn limits_within(
    caller: &Principal,
    ratelimits: &[RateLimit],
    credits: Option<&Credits>,
) -> Result<(), ManageError> {
    let own = &caller.record().limits;
    if !RateLimit::all_within(ratelimits, &own.ratelimits) {
        return Err(ManageError::ExceedsCaller {
            what: "a higher rate limit",
        });
    }
    if let Some(own) = &own.credits {
        if credits.is_none_or(|credits| !credits.within(own)) {
            return Err(ManageError::ExceedsCaller {
                what: "more credits",
            });
        }
    }
    Ok(())
}

/// The longest end-user id accepted.
pub const MAX_OWNER_LEN: usize = 200;

/// An end-user id as given: 1 to [`MAX_OWNER_LEN`] characters.
fn check_owner(owner_id: Option<&str>) -> Result<(), ManageError> {
    match owner_id {
        Some(owner)
            if owner.is_empty()
                || owner.chars().count() > MAX_OWNER_LEN
                || owner.chars().any(char::is_control) =>
        {
            Err(ManageError::invalid(
                Invalid::Owner,
                format!("owner_id must be 1 to {MAX_OWNER_LEN} characters, none a control"),
            ))
        }
        _ => Ok(()),
    }
}

/// Metadata as given: at most [`MAX_METADATA_BYTES`] as JSON.
fn check_metadata(metadata: &Metadata) -> Result<(), ManageError> {
    let json = serde_json::to_string(metadata).unwrap_or_default();
    // PostgreSQL's jsonb holds no NUL character; depth is bounded so that audit events
    // (which nest metadata three levels deeper) stay readable.
    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let nested = metadata.values().map(depth).max().unwrap_or(0);
    if json.len() > MAX_METADATA_BYTES || json.contains("\\u0000") || nested > 16 {
        return Err(ManageError::invalid(
            Invalid::Metadata,
            format!(
                "metadata must be at most {MAX_METADATA_BYTES} bytes of JSON, nested at most 16 levels, without NUL"
            ),
        ));
    }
    Ok(())
}

/// Whether `caller` could have created `key` itself, and so may receive a secret with
/// its powers (rotation): `caller`'s account and environment, each of its scopes held by
/// `caller`, an expiry no later than `caller`'s, `caller`'s restrictions if `caller` has
/// any, `caller`'s project if it is locked to one, `caller`'s end user if it belongs to
/// one. Else [`ManageError::ExceedsCaller`].
pub fn check_within(caller: &Principal, key: &KeyInfo) -> Result<(), ManageError> {
    let exceeds = |what| Err(ManageError::ExceedsCaller { what });
    // Keys are made in their creator's account and environment only.
    if key.account_id != caller.account_id() {
        return exceeds("another account");
    }
    if key.environment != *caller.environment() {
        return exceeds("another environment");
    }
    if key.scopes.iter().any(|scope| !caller.has_scope(scope)) {
        return exceeds("a scope");
    }
    let own = caller.record();
    if let Some(limit) = own.expires_at {
        if key.expires_at.is_none_or(|at| at > limit) {
            return exceeds("a later expiry");
        }
    }
    if !own.restrictions.is_empty() && key.restrictions != own.restrictions {
        return exceeds("other restrictions");
    }
    if let Some(project) = caller.project_id() {
        if key.project_id.as_deref() != Some(project) {
            return exceeds("another project");
        }
    }
    if let Some(owner) = caller.owner_id() {
        if key.owner_id.as_deref() != Some(owner) {
            return exceeds("another end user");
        }
    }
    limits_within(caller, &key.ratelimits, key.credits.as_ref())
}

/// A key as it will be stored, before its secret is generated.
struct KeySpec {
    account_id: String,
    environment: Environment,
    name: String,
    scopes: Scopes,
    project_id: Option<String>,
    expires_at: Option<OffsetDateTime>,
    restrictions: Restrictions,
    created_by: Option<String>,
    owner_id: Option<String>,
    metadata: Metadata,
    ratelimits: Vec<RateLimit>,
    credits: Option<Credits>,
}

impl KeySpec {
    /// The spec of a key as it is (for rotation).
    fn of(key: KeyInfo) -> Self {
        KeySpec {
            account_id: key.account_id,
            environment: key.environment,
            name: key.name,
            scopes: key.scopes,
            project_id: key.project_id,
            expires_at: key.expires_at,
            restrictions: key.restrictions,
            created_by: key.created_by,
            owner_id: key.owner_id,
            metadata: key.metadata,
            ratelimits: key.ratelimits,
            credits: key.credits,
        }
    }
}

/// A key for an account, as an operator (or a [`KeyOwner`]) asks for it: a valid name,
/// an expiry in the future, the asked scopes (or none) and restrictions.
fn account_key(
    account_id: &str,
    environment: Environment,
    request: NewKey,
) -> Result<KeySpec, ManageError> {
    let name = check_name(&request.name)?;
    check_owner(request.owner_id.as_deref())?;
    check_metadata(&request.metadata)?;
    check_ratelimits(request.ratelimits.as_deref().unwrap_or_default())?;
    check_credits(request.credits.as_ref())?;
    if request
        .expires_at
        .is_some_and(|at| at <= OffsetDateTime::now_utc())
    {
        return Err(ManageError::invalid(
            Invalid::Expiry,
            "expires_at must be in the future",
        ));
    }
    Ok(KeySpec {
        account_id: account_id.to_owned(),
        environment,
        name,
        scopes: request.scopes.unwrap_or_default(),
        project_id: request.project_id,
        expires_at: request.expires_at,
        restrictions: request.restrictions.unwrap_or_default(),
        created_by: None,
        owner_id: request.owner_id,
        metadata: request.metadata,
        ratelimits: request.ratelimits.unwrap_or_default(),
        credits: request.credits,
    })
}

fn check_name(name: &str) -> Result<String, ManageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ManageError::invalid(
            Invalid::Name,
            "name must not be empty",
        ));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ManageError::invalid(
            Invalid::Name,
            format!("name must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    // Names are shown in terminals (`apikeys list`) and pages: no control characters.
    if name.chars().any(char::is_control) {
        return Err(ManageError::invalid(
            Invalid::Name,
            "name must not hold control characters",
        ));
    }
    Ok(name.to_owned())
}

impl<S: KeyStore, V: KeyVerifier> KeyManager<S, V> {
    /// A manager creating keys of `format` in `store`, invalidating `cache` (the one the
    /// layer uses) on every change. New keys may carry `read`, `write` and `admin`.
    pub fn new(store: S, cache: CachedVerifier<V>, format: KeyFormat) -> Self {
        KeyManager {
            parts: Arc::new(Parts {
                store,
                cache,
                format,
            }),
            scopes: Arc::new([Scope::Read, Scope::Write, Scope::Admin]),
            id_prefix: KeyId::DEFAULT_PREFIX.into(),
            actor: Actor::Operator,
            client_ip: None,
        }
    }

    /// A handle whose changes the audit trail records as made by `actor` from
    /// `client_ip` (default: [`Actor::Operator`], no address). The methods that take a
    /// calling key (`create`, `update_for`, `rotate_for`) or a [`KeyOwner`] record those
    /// instead. The `apikeys` CLI acts as [`Actor::Cli`]; the routes as the caller, from
    /// the peer address.
    #[must_use]
    pub fn acting(mut self, actor: Actor, client_ip: Option<IpAddr>) -> Self {
        self.actor = actor;
        self.client_ip = client_ip;
        self
    }

    fn audit(&self, action: Action) -> Audit {
        Audit::new(self.actor.clone(), action).from_ip(self.client_ip)
    }

    fn audit_by(&self, actor: Actor, action: Action) -> Audit {
        Audit::new(actor, action).from_ip(self.client_ip)
    }

    /// Also lets new keys carry `scope` (a custom scope of your API).
    #[must_use]
    pub fn allow_scope(mut self, scope: Scope) -> Self {
        if !self.scopes.contains(&scope) {
            let mut scopes = self.scopes.to_vec();
            scopes.push(scope);
            self.scopes = scopes.into();
        }
        self
    }

    /// The scopes new keys may carry.
    #[must_use]
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Gives new keys ids starting with `{prefix}_` instead of `ak_` (`key` or `key_`
    /// for `key_…`); an empty prefix gives bare ids. Ids of existing keys do not change.
    #[must_use]
    pub fn id_prefix(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.trim_end_matches('_').into();
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.parts.store
    }

    /// Creates a key for `creator`'s account and environment. The plaintext is in the
    /// result, once. A key never creates a key with more than it has: not a scope it
    /// lacks, not another project, not a later expiry, not other restrictions.
    pub async fn create(
        &self,
        creator: &Principal,
        request: NewKey,
    ) -> Result<CreatedKey, ManageError> {
        let name = check_name(&request.name)?;
        check_owner(request.owner_id.as_deref())?;
        check_metadata(&request.metadata)?;
        let scopes = match request.scopes {
            None => creator.scopes().clone(),
            Some(scopes) => {
                self.check_known(&scopes)?;
                for scope in scopes.iter() {
                    if !creator.has_scope(scope) {
                        return Err(AuthError::InsufficientScope {
                            required: scope.clone(),
                        }
                        .into());
                    }
                }
                scopes
            }
        };
        // A key cannot mint a key that outlives it or escapes its project.
        let expires_at = match (request.expires_at, creator.record().expires_at) {
            (Some(at), _) if at <= OffsetDateTime::now_utc() => {
                return Err(ManageError::invalid(
                    Invalid::Expiry,
                    "expires_at must be in the future",
                ));
            }
            (Some(at), Some(limit)) if at > limit => {
                return Err(ManageError::invalid(
                    Invalid::Expiry,
                    "expires_at must not be later than the expiry of the key making the request",
                ));
            }
            (Some(at), _) => Some(at),
            (None, inherited) => inherited,
        };
        let project_id = match (request.project_id, creator.project_id()) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ManageError::invalid(
                    Invalid::Project,
                    "a key locked to a project can only create keys for that project",
                ));
            }
            (asked, own) => asked.or_else(|| own.map(str::to_owned)),
        };
        // A key that belongs to an end user makes keys of that user only.
        let owner_id = match (request.owner_id, creator.owner_id()) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ManageError::invalid(
                    Invalid::Owner,
                    "a key that belongs to an end user can only create keys for that user",
                ));
            }
            (asked, own) => asked.or_else(|| own.map(str::to_owned)),
        };
        let own = &creator.record().restrictions;
        let restrictions = match request.restrictions {
            Some(asked) if !own.is_empty() && asked != *own => {
                return Err(ManageError::invalid(
                    Invalid::Restrictions,
                    "a restricted key can only create keys with its own restrictions",
                ));
            }
            asked => asked.unwrap_or_else(|| own.clone()),
        };
        // A key never mints a key with a higher rate limit, more credits, or no limit
        // where it has one.
        let own = &creator.record().limits;
        let ratelimits = match request.ratelimits {
            Some(asked) => {
                check_ratelimits(&asked)?;
                asked
            }
            None => own.ratelimits.clone(),
        };
        check_credits(request.credits.as_ref())?;
        // A key with a balance gives a new key credits out of its own (a transfer, so
        // that minting keys never multiplies a balance), and no refill; a key without
        // one may give any.
        let transfer = own.credits.is_some();
        let credits = match request.credits {
            Some(asked) if transfer && asked.refill.is_some() => {
                return Err(ManageError::ExceedsCaller {
                    what: "more credits",
                });
            }
            Some(asked) => Some(asked),
            None if transfer => Some(Credits::new(0)),
            None => None,
        };
        limits_within(creator, &ratelimits, credits.as_ref())?;
        let spec = KeySpec {
            account_id: creator.account_id().to_owned(),
            environment: creator.environment().clone(),
            name,
            scopes,
            project_id,
            expires_at,
            restrictions,
            created_by: Some(creator.key_id().to_string()),
            owner_id,
            metadata: request.metadata,
            ratelimits,
            credits,
        };
        let audit = self.audit_by(Actor::Key(creator.key_id().clone()), Action::Created);
        let Some(given) = credits.filter(|_| transfer).map(|c| c.remaining) else {
            return self.insert(spec, None, &audit).await;
        };
        let from = CreditSubject::Key(creator.key_id().as_str());
        let taken = self
            .parts
            .store
            .take_credits(from, given, OffsetDateTime::now_utc())
            .await
            .map_err(|error| ManageError::Unavailable(StoreError::Backend(error)))?;
        let give_back = || async {
            if taken.granted > 0 {
                let back = self
                    .parts
                    .store
                    .return_credits(from, taken.granted, taken.epoch, taken.until)
                    .await;
                if let Err(error) = back {
                    tracing::error!(%error, "returning credits of a refused key failed");
                }
            }
        };
        if taken.limited && taken.granted < given {
            give_back().await;
            return Err(ManageError::ExceedsCaller {
                what: "more credits",
            });
        }
        let created = self.insert(spec, None, &audit).await;
        if created.is_err() {
            give_back().await;
        }
        created
    }

    /// Generates the key, stores it (ending the key it replaces, if any), and returns
    /// the plaintext once: the one place in the crate where a key is made.
    async fn insert(
        &self,
        spec: KeySpec,
        replaces: Option<Replacement>,
        audit: &Audit,
    ) -> Result<CreatedKey, ManageError> {
        let format = &self.parts.format;
        if !format.environments().contains(&spec.environment) {
            return Err(ManageError::invalid(
                Invalid::Environment,
                format!(
                    "keys of environment {:?} are not issued here",
                    spec.environment.as_str()
                ),
            ));
        }
        let key = format.generate(&spec.environment);
        let mut stored = StoredKey::new(format, &key, spec.account_id, spec.environment, spec.name);
        stored.id = KeyId::generate_with_prefix(&self.id_prefix);
        stored.scopes = spec.scopes;
        stored.project_id = spec.project_id;
        stored.expires_at = spec.expires_at;
        stored.restrictions = spec.restrictions;
        stored.created_by = spec.created_by;
        stored.owner_id = spec.owner_id;
        stored.metadata = spec.metadata;
        stored.ratelimits = spec.ratelimits;
        stored.credits = spec.credits;
        stored.replaces = replaces;
        let info = self.parts.store.insert_audited(stored, audit).await?;
        Ok(CreatedKey::new(key, info))
    }

    /// Creates a key for an account directly: for bootstrapping and operator tools
    /// (the `apikeys` CLI).
    pub async fn create_for_account(
        &self,
        account_id: &str,
        environment: Environment,
        request: NewKey,
    ) -> Result<CreatedKey, ManageError> {
        let spec = account_key(account_id, environment, request)?;
        self.insert(spec, None, &self.audit(Action::Created)).await
    }

    /// Creates a key for a [`KeyOwner`] (a dashboard session, say): in its account and
    /// environment, locked to its project if it has one, with the asked scopes (each one
    /// of the manager's) or none.
    pub async fn create_for_owner(
        &self,
        owner: &KeyOwner,
        mut request: NewKey,
    ) -> Result<CreatedKey, ManageError> {
        if let Some(scopes) = &request.scopes {
            self.check_known(scopes)?;
        }
        match (&request.project_id, &owner.project_id) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ManageError::invalid(
                    Invalid::Project,
                    "keys created here are locked to this project",
                ));
            }
            (None, Some(own)) => request.project_id = Some(own.clone()),
            _ => {}
        }
        let mut spec = account_key(&owner.account_id, owner.environment.clone(), request)?;
        spec.created_by.clone_from(&owner.user_id);
        let audit = self.audit_by(Actor::User(owner.user_id.clone()), Action::Created);
        self.insert(spec, None, &audit).await
    }

    /// Issues a key named like `request` afresh: the account's active key of that name
    /// in `environment` is replaced in the same transaction (revoked as the new one is
    /// created; any further ones of that name are revoked after). For credentials a
    /// server issues itself on every start (demo and bootstrap keys), so restarts
    /// neither pile keys up nor leave a printed secret working. Servers sharing a
    /// database replace each other's: give each instance its own names.
    pub async fn reissue(
        &self,
        account_id: &str,
        environment: Environment,
        request: NewKey,
    ) -> Result<CreatedKey, ManageError> {
        let spec = account_key(account_id, environment, request)?;
        let previous: Vec<KeyId> = self
            .list(account_id)
            .await?
            .into_iter()
            .filter(|key| {
                key.name == spec.name
                    && key.environment == spec.environment
                    && key.revoked_at.is_none()
            })
            .map(|key| key.id)
            .collect();
        let replaces = previous
            .first()
            .map(|id| Replacement::new(id.clone(), OffsetDateTime::now_utc()));
        let created = self
            .insert(spec, replaces, &self.audit(Action::Reissued))
            .await?;
        if let Some((replaced, others)) = previous.split_first() {
            self.parts.cache.invalidate_key_id(replaced);
            for id in others {
                self.revoke(account_id, id).await?;
            }
        }
        Ok(created)
    }

    fn check_known(&self, scopes: &Scopes) -> Result<(), ManageError> {
        match scopes.iter().find(|scope| !self.scopes.contains(scope)) {
            Some(unknown) => Err(ManageError::invalid(
                Invalid::Scope,
                format!("unknown scope {:?}", unknown.as_str()),
            )),
            None => Ok(()),
        }
    }

    /// The account's active keys.
    pub async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, ManageError> {
        Ok(self.parts.store.list(account_id).await?)
    }

    /// One key of the account.
    pub async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, ManageError> {
        Ok(self.parts.store.get(account_id, id).await?)
    }

    /// Changes a key's name, restrictions, scopes and/or expiry, effective for the next
    /// request (on other instances through their `RevocationListener`).
    pub async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: KeyChanges,
    ) -> Result<KeyInfo, ManageError> {
        let audit = self.audit(Action::Updated);
        self.update_as(account_id, id, changes, &audit).await
    }

    async fn update_as(
        &self,
        account_id: &str,
        id: &KeyId,
        mut changes: KeyChanges,
        audit: &Audit,
    ) -> Result<KeyInfo, ManageError> {
        if let Some(name) = &changes.name {
            changes.name = Some(check_name(name)?);
        }
        if let Some(scopes) = &changes.scopes {
            self.check_known(scopes)?;
        }
        if let Some(owner_id) = &changes.owner_id {
            check_owner(owner_id.as_deref())?;
        }
        if let Some(metadata) = &changes.metadata {
            check_metadata(metadata)?;
        }
        if let Some(ratelimits) = &changes.ratelimits {
            check_ratelimits(ratelimits)?;
        }
        if let Some(credits) = &changes.credits {
            check_credits(credits.as_ref())?;
        }
        let info = self
            .parts
            .store
            .update_audited(account_id, id, &changes, audit)
            .await?;
        // The cached record carries every field that can change.
        self.parts.cache.invalidate_key_id(id);
        Ok(info)
    }

    /// Changes a key for `caller`, an API key of the same account: like
    /// [`update`](Self::update), but only a key that `caller` could have created itself,
    /// into a key it could have created itself (see [`check_within`]: no scope it lacks,
    /// no later expiry), and a restricted caller cannot change restrictions (else 403
    /// `key_exceeds_caller` or 422 `invalid_restrictions`; nothing changes).
    pub async fn update_for(
        &self,
        caller: &Principal,
        id: &KeyId,
        changes: KeyChanges,
    ) -> Result<KeyInfo, ManageError> {
        if changes.restrictions.is_some() && !caller.record().restrictions.is_empty() {
            return Err(ManageError::invalid(
                Invalid::Restrictions,
                "a restricted key cannot change restrictions",
            ));
        }
        let mut key = self.parts.store.get(caller.account_id(), id).await?;
        // The key as it is, and as the change makes it, must both be within the caller:
        // a key cannot widen a key (itself included) past its own scopes or expiry.
        check_within(caller, &key)?;
        if changes
            .expires_at
            .flatten()
            .is_some_and(|at| at <= OffsetDateTime::now_utc())
        {
            return Err(ManageError::invalid(
                Invalid::Expiry,
                "expires_at must be in the future",
            ));
        }
        // A key with a balance may lower balances, never raise one (its own included):
        // a raise would mint credits.
        if let (Some(new), Some(_)) = (&changes.credits, &caller.record().limits.credits) {
            let lowered = match (new, &key.credits) {
                (Some(new), Some(current)) => {
                    new.within(current) && new.refill.is_none_or(|r| current.refill == Some(r))
                }
                _ => false,
            };
            if !lowered {
                return Err(ManageError::ExceedsCaller {
                    what: "more credits",
                });
            }
        }
        changes.apply(&mut key);
        check_within(caller, &key)?;
        let audit = self.audit_by(Actor::Key(caller.key_id().clone()), Action::Updated);
        self.update_as(caller.account_id(), id, changes, &audit)
            .await
    }

    /// Rotates a key: a new key with the same name, scopes, project, restrictions,
    /// environment and expiry, while the old one keeps working for `overlap` (zero:
    /// revoked now), so integrations can move over without downtime. One transaction;
    /// the old key's slot counts for the new one, so rotation works at the key limit.
    pub async fn rotate(
        &self,
        account_id: &str,
        id: &KeyId,
        overlap: Duration,
    ) -> Result<CreatedKey, ManageError> {
        let audit = self.audit(Action::Rotated);
        self.rotate_checked(account_id, id, overlap, &audit, |_| Ok(()))
            .await
    }

    /// Rotates a key for `caller`, an API key of the same account: like
    /// [`rotate`](Self::rotate), but only a key that `caller` could have created itself
    /// (see [`check_within`]); else 403 `key_exceeds_caller` and nothing changes.
    pub async fn rotate_for(
        &self,
        caller: &Principal,
        id: &KeyId,
        overlap: Duration,
    ) -> Result<CreatedKey, ManageError> {
        let audit = self.audit_by(Actor::Key(caller.key_id().clone()), Action::Rotated);
        self.rotate_checked(caller.account_id(), id, overlap, &audit, |old| {
            check_within(caller, old)
        })
        .await
    }

    async fn rotate_checked(
        &self,
        account_id: &str,
        id: &KeyId,
        overlap: Duration,
        audit: &Audit,
        allowed: impl FnOnce(&KeyInfo) -> Result<(), ManageError>,
    ) -> Result<CreatedKey, ManageError> {
        let old = self.parts.store.get(account_id, id).await?;
        if old.revoked_at.is_some() {
            return Err(ManageError::NotFound);
        }
        allowed(&old)?;
        let overlap = time::Duration::try_from(overlap).unwrap_or(time::Duration::MAX);
        let ends_at = OffsetDateTime::now_utc().saturating_add(overlap);
        let created = self
            .insert(
                KeySpec::of(old),
                Some(Replacement::new(id.clone(), ends_at).moving_credits()),
                audit,
            )
            .await?;
        self.parts.cache.invalidate_key_id(id);
        Ok(created)
    }

    /// Revokes a key (idempotent); the next request with it is refused on this
    /// instance whatever the cache TTL, and on others through their
    /// `RevocationListener`.
    pub async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, ManageError> {
        let info = self
            .parts
            .store
            .revoke_audited(account_id, id, &self.audit(Action::Revoked))
            .await?;
        self.parts.cache.invalidate_key_id(id);
        Ok(info)
    }

    /// A key's usage by hour from `from` to before `to` (`NotFound` for a key of
    /// another account).
    pub async fn usage(
        &self,
        account_id: &str,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<crate::store::UsageBucket>, ManageError> {
        self.parts.store.get(account_id, id).await?;
        let from = crate::store::hour_of(from);
        Ok(self.parts.store.usage(id, from, to).await?)
    }

    /// Accepted requests since `since` per key of the account (keys without any are
    /// left out), in one query.
    pub async fn usage_totals(
        &self,
        account_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<(KeyId, u64)>, ManageError> {
        let since = crate::store::hour_of(since);
        Ok(self.parts.store.usage_totals(account_id, since).await?)
    }

    /// A page of an account's audit events, newest first.
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<AuditPage, ManageError> {
        Ok(self.parts.store.audit_events(query).await?)
    }

    /// Every audit event of an account, oldest first.
    pub async fn audit_trail(&self, account_id: &str) -> Result<Vec<AuditEvent>, ManageError> {
        Ok(self.parts.store.audit_trail(account_id).await?)
    }

    /// An account's rate limits and balance (shared by all its keys).
    pub async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, ManageError> {
        Ok(self.parts.store.account_limits(account_id).await?)
    }

    /// Sets an account's rate limits and balance, shared by all its keys: for the
    /// operator (the CLI, your admin tools), never for the account's own keys.
    /// Effective for the next request here, and on other instances through their
    /// `RevocationListener` (PostgreSQL; on SQLite other processes see it after the
    /// cache's TTL).
    pub async fn set_account_limits(
        &self,
        account_id: &str,
        limits: AccountLimits,
    ) -> Result<(), ManageError> {
        check_ratelimits(&limits.ratelimits)?;
        check_credits(limits.credits.as_ref())?;
        self.parts
            .store
            .set_account_limits_audited(account_id, &limits, &self.audit(Action::LimitsChanged))
            .await?;
        self.parts.cache.invalidate_account(account_id);
        Ok(())
    }

    /// Sets an account's billing standing, effective for the next request.
    pub async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), ManageError> {
        self.parts
            .store
            .set_standing_audited(account_id, standing, &self.audit(Action::StandingChanged))
            .await?;
        self.parts.cache.invalidate_account(account_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key cannot widen a key, itself included, through `update_for`.
    #[tokio::test]
    async fn update_for_checks_the_key_as_the_change_makes_it() {
        use crate::store::{MemoryStore, create_for_test};
        let store = MemoryStore::new();
        let manager = KeyManager::new(
            store.clone(),
            CachedVerifier::new(store.clone()),
            KeyFormat::new("sk"),
        );
        let created = create_for_test(&store, "acct", "w", Environment::LIVE, Scope::Write.into())
            .await
            .unwrap();
        let soon = OffsetDateTime::now_utc() + time::Duration::days(1);
        let own = manager
            .update(
                "acct",
                &created.info.id,
                KeyChanges::default().expires_at(Some(soon)),
            )
            .await
            .unwrap();
        let caller = Principal::for_tests(own.to_record());
        let id = caller.key_id().clone();
        let code = |result: Result<KeyInfo, ManageError>| result.map(|_| ()).map_err(|e| e.code());
        let refused = manager
            .update_for(&caller, &id, KeyChanges::default().scopes([Scope::Admin]))
            .await;
        assert_eq!(code(refused), Err("key_exceeds_caller"));
        let refused = manager
            .update_for(&caller, &id, KeyChanges::default().expires_at(None))
            .await;
        assert_eq!(code(refused), Err("key_exceeds_caller"));
        let past = OffsetDateTime::now_utc() - time::Duration::days(1);
        let refused = manager
            .update_for(&caller, &id, KeyChanges::default().expires_at(Some(past)))
            .await;
        assert_eq!(code(refused), Err("invalid_expiry"));
        let narrowed = manager
            .update_for(&caller, &id, KeyChanges::default().scopes([Scope::Read]))
            .await
            .unwrap();
        assert_eq!(narrowed.scopes, Scope::Read.into());
        assert_eq!(store.get("acct", &id).await.unwrap().expires_at, Some(soon));
    }

    /// A key that belongs to an end user makes and changes keys of that user only;
    /// NUL and control characters never reach a store.
    #[tokio::test]
    async fn an_end_users_key_stays_with_that_user() {
        use crate::store::MemoryStore;
        let store = MemoryStore::new();
        let manager = KeyManager::new(
            store.clone(),
            CachedVerifier::new(store.clone()),
            KeyFormat::new("sk"),
        );
        let alice = manager
            .create_for_account(
                "acct",
                Environment::LIVE,
                NewKey::named("alice's").scopes(Scope::Admin).owner("alice"),
            )
            .await
            .unwrap();
        let caller = Principal::for_tests(alice.info.to_record());
        let code = |e: ManageError| e.code();
        let refused = manager
            .create(&caller, NewKey::named("x").owner("bob"))
            .await
            .map(|_| ())
            .map_err(code);
        assert_eq!(refused, Err("invalid_owner"));
        let inherited = manager.create(&caller, NewKey::named("y")).await.unwrap();
        assert_eq!(inherited.info.owner_id.as_deref(), Some("alice"));
        let refused = manager
            .update_for(
                &caller,
                &inherited.info.id,
                KeyChanges::default().owner_id(Some("bob".into())),
            )
            .await
            .map(|_| ())
            .map_err(code);
        assert_eq!(refused, Err("key_exceeds_caller"));
        assert!(check_owner(Some("a\0b")).is_err());
        assert!(check_owner(Some("a\nb")).is_err());
        let mut metadata = Metadata::new();
        metadata.insert("k".into(), "nul \0 inside".into());
        assert!(check_metadata(&metadata).is_err());
        // Nested past 16 levels: refused (audit events nest it three levels deeper).
        let mut deep = serde_json::json!(1);
        for _ in 0..20 {
            deep = serde_json::json!([deep]);
        }
        let mut metadata = Metadata::new();
        metadata.insert("deep".into(), deep);
        assert!(check_metadata(&metadata).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(check_name("  ci ").unwrap(), "ci");
        assert_eq!(check_name(&"é".repeat(100)).unwrap().chars().count(), 100);
        assert_eq!(
            check_name(&"a".repeat(101)).unwrap_err().code(),
            "invalid_name"
        );
        assert_eq!(check_name("   ").unwrap_err().code(), "invalid_name");
    }

    #[test]
    fn a_key_never_exceeds_its_caller() {
        use crate::record::KeyRecord;
        let caller_record = KeyRecord::new(KeyId::new("ak_c"), "c", "acct", Environment::TEST)
            .with_scopes([Scope::Admin]);
        let caller = Principal::new(Arc::new(caller_record));
        let key = |account: &str, environment: Environment| {
            let mut key = KeyInfo::for_test(account, environment);
            key.scopes = Scope::Read.into();
            key
        };
        assert!(check_within(&caller, &key("acct", Environment::TEST)).is_ok());
        let code = |key| check_within(&caller, &key).map_err(|e| (e.code(), e.to_string()));
        let refused = code(key("acct", Environment::LIVE)).unwrap_err();
        assert_eq!(refused.0, "key_exceeds_caller");
        assert!(refused.1.contains("another environment"), "{}", refused.1);
        let refused = code(key("other", Environment::TEST)).unwrap_err();
        assert!(refused.1.contains("another account"), "{}", refused.1);
    }
}
