//! Key management: [`KeyManager`] (the domain) and [`KeyRoutes`] / [`router`] (its
//! HTTP face).
//!
//! | route | does | answers (default [`KeyRoutes`]) |
//! |---|---|---|
//! | `POST /api-keys` | create, body `{"name", "scopes"?, "project_id"?, "expires_at"?, "restrictions"?}` | 201, the key once |
//! | `GET /api-keys` | list the caller's active keys | 200 `{"data": [...]}` |
//! | `GET /api-keys/{id}` | one key | 200 |
//! | `PATCH /api-keys/{id}` | rename and/or restrict, body `{"name"?, "restrictions"?}` | 200 |
//! | `DELETE /api-keys/{id}` | revoke (idempotent) | 204 |
//! | `POST /api-keys/{id}/rotate` | rotate, body `{"overlap_seconds"?}` (default 0) | 201, the new key once |
//!
//! The caller is the request's [`Principal`] (an API key, which by default needs the
//! `admin` scope) or, for dashboards, a [`KeyOwner`] that your session middleware put
//! into the request's extensions. The routes act on the caller's account, environment
//! and project only (another's key is a 404). A key never creates a key with more than
//! it has: not a scope it lacks, not another project than its own, not a later expiry.
//! [`KeyRoutes`] shapes the answers: an [`Envelope`], the
//! fields of a key, what PATCH and DELETE answer, whether keys can be renamed or
//! rotated here. Mount
//! them under any prefix, behind the [`ApiKeyLayer`](crate::ApiKeyLayer):
//!
//! ```
//! use axum::Router;
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, key::KeyFormat, store::MemoryStore};
//! use tower_api_keys::manage::{KeyManager, router};
//!
//! let format = KeyFormat::new("sk");
//! let store = MemoryStore::new();
//! let cache = CachedVerifier::new(store.clone());
//! let manager = KeyManager::new(store, cache.clone(), format.clone());
//! let app: Router = Router::new()
//!     .nest("/v1/account", router(manager))
//!     .layer(ApiKeyLayer::new(format, cache));
//! ```
//!
//! Errors: 400 `invalid_json`; 422 `invalid_body` (not a JSON object), `invalid_name`
//! (missing, empty or over 100 characters), `rename_not_allowed` (renaming is turned
//! off), `invalid_scope` (not a string or not one of the manager's scopes),
//! `invalid_project` (not a non-empty string, or not the caller's project),
//! `invalid_expiry` (not RFC 3339, not in the future, or past the caller's own expiry),
//! `invalid_environment`, `invalid_restrictions` (unreadable, or differing from a
//! restricted caller's own), `invalid_overlap`; 403 `insufficient_scope` (asking for a
//! scope the caller does not hold, or a caller without the router's scope); 403
//! `key_exceeds_caller` (rotating a key broader than the calling key: see below); 404
//! `api_key_not_found`; 409 `api_key_limit_reached` (the account's active keys in that
//! environment); 503 `store_unavailable`. Nothing is written when a request is refused.
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

mod routes;

pub use routes::{Ack, KeyRoutes, router, router_with_scope};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use crate::cache::CachedVerifier;
use crate::error::AuthError;
use crate::error::Envelope;
use crate::key::{Environment, KeyFormat, KeyId};
use crate::principal::Principal;
use crate::record::AccountStanding;
use crate::restriction::Restrictions;
use crate::scope::{Scope, Scopes};
use crate::store::{
    CreatedKey, KeyChanges, KeyInfo, KeyStore, NewKey, Replacement, StoreError, StoredKey,
};
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
}

impl KeyOwner {
    /// An owner of `account_id`'s keys in `environment`.
    #[must_use]
    pub fn new(account_id: impl Into<String>, environment: Environment) -> Self {
        KeyOwner {
            account_id: account_id.into(),
            environment,
            project_id: None,
        }
    }

    /// Limits the owner to one project's keys.
    #[must_use]
    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = Some(project_id.into());
        self
    }
}

/// Creates, lists, renames and revokes keys, keeping the cache in step. Cheap to clone.
pub struct KeyManager<S, V> {
    inner: Arc<ManagerInner<S, V>>,
}

struct ManagerInner<S, V> {
    store: S,
    cache: CachedVerifier<V>,
    format: KeyFormat,
    scopes: Vec<Scope>,
    id_prefix: Box<str>,
}

impl<S, V> Clone for KeyManager<S, V> {
    fn clone(&self) -> Self {
        KeyManager {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S, V> fmt::Debug for KeyManager<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("format", &self.inner.format)
            .field("scopes", &self.inner.scopes)
            .field("id_prefix", &self.inner.id_prefix)
            .finish_non_exhaustive()
    }
}

/// What a caller asks for when creating a key.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CreateKey {
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
}

impl CreateKey {
    /// A key named `name`, with the creator's scopes.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        CreateKey {
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
}

/// Why a management request was refused. Each variant has a status and a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The body is not JSON (400 `invalid_json`).
    #[error("the request body is not valid JSON")]
    InvalidJson,
    /// A field is missing or wrong (422, with `code` naming the field's rule).
    #[error("{message}")]
    Invalid {
        /// `invalid_body`, `invalid_name`, `rename_not_allowed`, `invalid_scope`, `invalid_project`,
        /// `invalid_expiry`, `invalid_environment`, `invalid_restrictions` or
        /// `invalid_overlap`.
        code: &'static str,
        /// What is wrong, for humans.
        message: String,
    },
    /// The caller asked for a scope it does not hold (403 `insufficient_scope`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No such key in the caller's account (404 `api_key_not_found`).
    #[error("no such API key")]
    NotFound,
    /// A key asked for the secret of (or to change) a key broader than itself (403
    /// `key_exceeds_caller`): rotating or changing a key with a scope the caller lacks,
    /// a later expiry (or none, when the caller expires), other restrictions than a
    /// restricted caller's, or another project. Nothing changed.
    #[error(
        "the key has {what} that the key making the request lacks; a key cannot obtain a secret broader than itself"
    )]
    ExceedsCaller {
        /// What the key has more of: `another account`, `another environment`,
        /// `a scope`, `a later expiry`, `other restrictions` or `another project`.
        what: &'static str,
    },
    /// The account has its maximum of active keys in the key's environment (409
    /// `api_key_limit_reached`).
    #[error(
        "the account already has {limit} active API keys in this environment; revoke one first"
    )]
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// The store failed (503 `store_unavailable`).
    #[error("the key store is unavailable")]
    Unavailable(#[source] StoreError),
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ManageError::NotFound,
            StoreError::LimitReached { limit } => ManageError::LimitReached { limit },
            other => ManageError::Unavailable(other),
        }
    }
}

impl ManageError {
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ManageError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ManageError::InvalidJson => StatusCode::BAD_REQUEST,
            ManageError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ManageError::Auth(error) => error.status(),
            ManageError::NotFound => StatusCode::NOT_FOUND,
            ManageError::ExceedsCaller { .. } => StatusCode::FORBIDDEN,
            ManageError::LimitReached { .. } => StatusCode::CONFLICT,
            ManageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ManageError::InvalidJson => "invalid_json",
            ManageError::Invalid { code, .. } => code,
            ManageError::Auth(error) => error.code(),
            ManageError::NotFound => "api_key_not_found",
            ManageError::ExceedsCaller { .. } => "key_exceeds_caller",
            ManageError::LimitReached { .. } => "api_key_limit_reached",
            ManageError::Unavailable(_) => "store_unavailable",
        }
    }
}

impl ManageError {
    /// The response, with the body in `envelope`. An [`AuthError`] keeps its default
    /// rendering (and its challenge), which an enclosing layer re-renders its own way.
    #[must_use]
    pub fn respond(self, envelope: Envelope) -> Response {
        match self {
            ManageError::Auth(error) => return error.into_response(),
            ManageError::Unavailable(ref error) => {
                tracing::error!(%error, "key store failed");
            }
            _ => {}
        }
        let message = match &self {
            ManageError::Unavailable(_) => {
                "The key store is unavailable. Retry shortly.".to_owned()
            }
            other => other.to_string(),
        };
        let body = envelope.error(self.code(), &message);
        (self.status(), axum::Json(body)).into_response()
    }
}

impl IntoResponse for ManageError {
    fn into_response(self) -> Response {
        self.respond(Envelope::Plain)
    }
}

/// Whether `caller` could have created `key` itself, and so may receive a secret with
/// its powers (rotation): `caller`'s account and environment, each of its scopes held by
/// `caller`, an expiry no later than `caller`'s, `caller`'s restrictions if `caller` has
/// any, `caller`'s project if it is locked to one. Else [`ManageError::ExceedsCaller`].
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
    Ok(())
}

/// A key for an account, as an operator (or a [`KeyOwner`]) asks for it: a valid name,
/// an expiry in the future, the asked scopes (or none) and restrictions.
fn account_key(
    account_id: &str,
    environment: Environment,
    request: CreateKey,
) -> Result<NewKey, ManageError> {
    let name = check_name(&request.name)?;
    if request
        .expires_at
        .is_some_and(|at| at <= OffsetDateTime::now_utc())
    {
        return Err(ManageError::invalid(
            "invalid_expiry",
            "expires_at must be in the future",
        ));
    }
    let mut new = NewKey::new(account_id, name, environment)
        .scopes(request.scopes.unwrap_or_default())
        .restrictions(request.restrictions.unwrap_or_default());
    new.project_id = request.project_id;
    new.expires_at = request.expires_at;
    Ok(new)
}

fn check_name(name: &str) -> Result<String, ManageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ManageError::invalid(
            "invalid_name",
            "name must not be empty",
        ));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ManageError::invalid(
            "invalid_name",
            format!("name must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(name.to_owned())
}

impl<S: KeyStore, V: KeyVerifier> KeyManager<S, V> {
    /// A manager creating keys of `format` in `store`, invalidating `cache` (the one the
    /// layer uses) on revocation. New keys may carry `read`, `write` and `admin`.
    pub fn new(store: S, cache: CachedVerifier<V>, format: KeyFormat) -> Self {
        KeyManager {
            inner: Arc::new(ManagerInner {
                store,
                cache,
                format,
                scopes: vec![Scope::Read, Scope::Write, Scope::Admin],
                id_prefix: KeyId::DEFAULT_PREFIX.into(),
            }),
        }
    }

    /// Also lets new keys carry `scope` (a custom scope of your API).
    #[must_use]
    pub fn allow_scope(mut self, scope: Scope) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configure the manager before cloning it");
        if !inner.scopes.contains(&scope) {
            inner.scopes.push(scope);
        }
        self
    }

    /// Gives new keys ids starting with `{prefix}_` instead of `ak_` (`key` or `key_`
    /// for `key_…`); an empty prefix gives bare ids. Ids of existing keys do not change.
    ///
    /// # Panics
    /// If the manager was cloned already: configure it first.
    #[must_use]
    pub fn id_prefix(mut self, prefix: &str) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configure the manager before cloning it");
        inner.id_prefix = prefix.trim_end_matches('_').into();
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Creates a key for `creator`'s account and environment. The plaintext is in the
    /// result, once.
    pub async fn create(
        &self,
        creator: &Principal,
        request: CreateKey,
    ) -> Result<CreatedKey, ManageError> {
        let name = check_name(&request.name)?;
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
                    "invalid_expiry",
                    "expires_at must be in the future",
                ));
            }
            (Some(at), Some(limit)) if at > limit => {
                return Err(ManageError::invalid(
                    "invalid_expiry",
                    "expires_at must not be later than the expiry of the key making the request",
                ));
            }
            (Some(at), _) => Some(at),
            (None, inherited) => inherited,
        };
        let project_id = match (request.project_id, creator.project_id()) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ManageError::invalid(
                    "invalid_project",
                    "a key locked to a project can only create keys for that project",
                ));
            }
            (asked, own) => asked.or_else(|| own.map(str::to_owned)),
        };
        let own = &creator.record().restrictions;
        let restrictions = match request.restrictions {
            Some(asked) if !own.is_empty() && asked != *own => {
                return Err(ManageError::invalid(
                    "invalid_restrictions",
                    "a restricted key can only create keys with its own restrictions",
                ));
            }
            asked => asked.unwrap_or_else(|| own.clone()),
        };
        let mut new = NewKey::new(creator.account_id(), name, creator.environment().clone())
            .scopes(scopes)
            .restrictions(restrictions);
        new.project_id = project_id;
        new.expires_at = expires_at;
        self.insert(new, None).await
    }

    /// Generates the key, stores it (ending the key it replaces, if any), and returns
    /// the plaintext once.
    async fn insert(
        &self,
        new: NewKey,
        replaces: Option<Replacement>,
    ) -> Result<CreatedKey, ManageError> {
        let format = &self.inner.format;
        if !format.environments().contains(&new.environment) {
            return Err(ManageError::invalid(
                "invalid_environment",
                format!(
                    "keys of environment {:?} are not issued here",
                    new.environment.as_str()
                ),
            ));
        }
        let key = format.generate(&new.environment);
        let mut stored = StoredKey::new(format, &key, new);
        stored.id = KeyId::generate_with_prefix(&self.inner.id_prefix);
        stored.replaces = replaces;
        let info = self.inner.store.insert(stored).await?;
        Ok(CreatedKey::new(key, info))
    }

    /// Creates a key for an account directly: for bootstrapping and operator tools.
    pub async fn create_for_account(
        &self,
        account_id: &str,
        environment: Environment,
        request: CreateKey,
    ) -> Result<CreatedKey, ManageError> {
        let new = account_key(account_id, environment, request)?;
        self.insert(new, None).await
    }

    /// Creates a key for a [`KeyOwner`] (a dashboard session, say): in its account and
    /// environment, locked to its project if it has one, with the asked scopes (each one
    /// of the manager's) or none.
    pub async fn create_for_owner(
        &self,
        owner: &KeyOwner,
        mut request: CreateKey,
    ) -> Result<CreatedKey, ManageError> {
        if let Some(scopes) = &request.scopes {
            self.check_known(scopes)?;
        }
        match (&request.project_id, &owner.project_id) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ManageError::invalid(
                    "invalid_project",
                    "keys created here are locked to this project",
                ));
            }
            (None, Some(own)) => request.project_id = Some(own.clone()),
            _ => {}
        }
        self.create_for_account(&owner.account_id, owner.environment.clone(), request)
            .await
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
        request: CreateKey,
    ) -> Result<CreatedKey, ManageError> {
        let new = account_key(account_id, environment, request)?;
        let previous: Vec<KeyId> = self
            .list(account_id)
            .await?
            .into_iter()
            .filter(|key| {
                key.name == new.name
                    && key.environment == new.environment
                    && key.revoked_at.is_none()
            })
            .map(|key| key.id)
            .collect();
        let replaces = previous
            .first()
            .map(|id| Replacement::new(id.clone(), OffsetDateTime::now_utc()));
        let created = self.insert(new, replaces).await?;
        if let Some((replaced, others)) = previous.split_first() {
            self.inner.cache.invalidate_key_id(replaced);
            for id in others {
                self.revoke(account_id, id).await?;
            }
        }
        Ok(created)
    }

    fn check_known(&self, scopes: &Scopes) -> Result<(), ManageError> {
        match scopes
            .iter()
            .find(|scope| !self.inner.scopes.contains(scope))
        {
            Some(unknown) => Err(ManageError::invalid(
                "invalid_scope",
                format!("unknown scope {:?}", unknown.as_str()),
            )),
            None => Ok(()),
        }
    }

    /// The account's active keys.
    pub async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, ManageError> {
        Ok(self.inner.store.list(account_id).await?)
    }

    /// One key of the account.
    pub async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, ManageError> {
        Ok(self.inner.store.get(account_id, id).await?)
    }

    /// Renames a key.
    pub async fn rename(
        &self,
        account_id: &str,
        id: &KeyId,
        name: &str,
    ) -> Result<KeyInfo, ManageError> {
        self.update(account_id, id, KeyChanges::name(name)).await
    }

    /// Changes a key's name, restrictions, scopes and/or expiry, effective for the next
    /// request (on other instances through their
    /// [`RevocationListener`](crate::invalidate::RevocationListener)).
    pub async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        mut changes: KeyChanges,
    ) -> Result<KeyInfo, ManageError> {
        if let Some(name) = &changes.name {
            changes.name = Some(check_name(name)?);
        }
        if let Some(scopes) = &changes.scopes {
            self.check_known(scopes)?;
        }
        let info = self.inner.store.update(account_id, id, &changes).await?;
        // The cached record carries every field that can change.
        self.inner.cache.invalidate_key_id(id);
        Ok(info)
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
        self.rotate_checked(account_id, id, overlap, |_| Ok(()))
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
        self.rotate_checked(caller.account_id(), id, overlap, |old| {
            check_within(caller, old)
        })
        .await
    }

    async fn rotate_checked(
        &self,
        account_id: &str,
        id: &KeyId,
        overlap: Duration,
        allowed: impl FnOnce(&KeyInfo) -> Result<(), ManageError>,
    ) -> Result<CreatedKey, ManageError> {
        let old = self.inner.store.get(account_id, id).await?;
        if old.revoked_at.is_some() {
            return Err(ManageError::NotFound);
        }
        allowed(&old)?;
        let mut new = NewKey::new(account_id, old.name, old.environment)
            .scopes(old.scopes)
            .restrictions(old.restrictions);
        new.project_id = old.project_id;
        new.expires_at = old.expires_at;
        let overlap = time::Duration::try_from(overlap).unwrap_or(time::Duration::MAX);
        let ends_at = OffsetDateTime::now_utc().saturating_add(overlap);
        let created = self
            .insert(new, Some(Replacement::new(id.clone(), ends_at)))
            .await?;
        self.inner.cache.invalidate_key_id(id);
        Ok(created)
    }

    /// Revokes a key (idempotent); the next request with it is refused on this
    /// instance whatever the cache TTL, and on others through their
    /// [`RevocationListener`](crate::invalidate::RevocationListener).
    pub async fn revoke(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, ManageError> {
        let info = self.inner.store.revoke(account_id, id).await?;
        self.inner.cache.invalidate_key_id(id);
        Ok(info)
    }

    /// Sets an account's billing standing, effective for the next request.
    pub async fn set_standing(
        &self,
        account_id: &str,
        standing: AccountStanding,
    ) -> Result<(), ManageError> {
        self.inner.store.set_standing(account_id, standing).await?;
        self.inner.cache.invalidate_account(account_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            StoredKey::new(
                &KeyFormat::new("sk").with_environment(Environment::TEST),
                &KeyFormat::new("sk").generate(&Environment::LIVE),
                NewKey::new(account, "k", environment).scopes([Scope::Read]),
            )
            .info()
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
