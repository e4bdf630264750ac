//! Key management: [`KeyManager`] (the domain) and [`router`] (its HTTP face).
//!
//! | route | does | answers |
//! |---|---|---|
//! | `POST /api-keys` | create, body `{"name", "scopes"?, "project_id"?, "expires_at"?}` | 201, the key once |
//! | `GET /api-keys` | list the account's active keys | 200 `{"data": [...]}` |
//! | `GET /api-keys/{id}` | one key | 200 |
//! | `PATCH /api-keys/{id}` | rename and/or restrict, body `{"name"?, "restrictions"?}` | 200 |
//! | `DELETE /api-keys/{id}` | revoke (idempotent) | 204 |
//! | `POST /api-keys/{id}/rotate` | rotate, body `{"overlap_seconds"?}` (default 0) | 201, the new key once |
//!
//! The routes act on the caller's account and environment only (another account's key,
//! or a live key seen with a test key, is a 404) and, by default, require the `admin`
//! scope. A key never creates a key with more than it has: not a scope it lacks, not
//! another project than its own, not a later expiry. Mount them under any prefix, behind the
//! [`ApiKeyLayer`](crate::ApiKeyLayer):
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
//! (missing, empty or over 100 characters), `invalid_scope` (not a string or not one of
//! the manager's scopes), `invalid_project` (not a non-empty string, or not the
//! caller's project), `invalid_expiry` (not RFC 3339, not in the future, or past the
//! caller's own expiry), `invalid_environment`, `invalid_restrictions` (unreadable, or
//! differing from a restricted caller's own), `invalid_overlap`; 403 `insufficient_scope`
//! (asking for a scope the caller does not hold); 404 `api_key_not_found`; 409
//! `api_key_limit_reached`; 503 `store_unavailable`. Nothing is written when a request
//! is refused.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::cache::CachedVerifier;
use crate::error::AuthError;
use crate::guard::ScopeGuardLayer;
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

/// Creates, lists, renames and revokes keys, keeping the cache in step. Cheap to clone.
pub struct KeyManager<S, V> {
    inner: Arc<ManagerInner<S, V>>,
}

struct ManagerInner<S, V> {
    store: S,
    cache: CachedVerifier<V>,
    format: KeyFormat,
    scopes: Vec<Scope>,
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
        /// `invalid_body`, `invalid_name`, `invalid_scope`, `invalid_project`,
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
    /// The account has its maximum of active keys (409 `api_key_limit_reached`).
    #[error("the account already has {limit} active API keys; revoke one first")]
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
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
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
            ManageError::LimitReached { .. } => "api_key_limit_reached",
            ManageError::Unavailable(_) => "store_unavailable",
        }
    }
}

impl IntoResponse for ManageError {
    fn into_response(self) -> Response {
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
        let body = json!({ "error": { "code": self.code(), "message": message } });
        (self.status(), axum::Json(body)).into_response()
    }
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
                for scope in scopes.iter() {
                    if !self.inner.scopes.contains(scope) {
                        return Err(ManageError::invalid(
                            "invalid_scope",
                            format!("unknown scope {:?}", scope.as_str()),
                        ));
                    }
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
        let name = check_name(&request.name)?;
        let mut new = NewKey::new(account_id, name, environment)
            .scopes(request.scopes.unwrap_or_default())
            .restrictions(request.restrictions.unwrap_or_default());
        new.project_id = request.project_id;
        new.expires_at = request.expires_at;
        self.insert(new, None).await
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

    /// Changes a key's name and/or restrictions, effective for the next request.
    pub async fn update(
        &self,
        account_id: &str,
        id: &KeyId,
        mut changes: KeyChanges,
    ) -> Result<KeyInfo, ManageError> {
        if let Some(name) = &changes.name {
            changes.name = Some(check_name(name)?);
        }
        let info = self.inner.store.update(account_id, id, &changes).await?;
        // The cached record carries name and restrictions.
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
        let old = self.inner.store.get(account_id, id).await?;
        if old.revoked_at.is_some() {
            return Err(ManageError::NotFound);
        }
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

/// The management routes, requiring the `admin` scope. See the [module docs](self).
pub fn router<S: KeyStore, V: KeyVerifier>(manager: KeyManager<S, V>) -> Router {
    router_with_scope(manager, Some(Scope::Admin))
}

/// The management routes, requiring `scope` (or only a valid key, with `None`). A key
/// can never create a key with scopes it does not hold itself.
pub fn router_with_scope<S: KeyStore, V: KeyVerifier>(
    manager: KeyManager<S, V>,
    scope: Option<Scope>,
) -> Router {
    let routes = Router::new()
        .route("/api-keys", get(list::<S, V>).post(create::<S, V>))
        .route(
            "/api-keys/{id}",
            get(get_one::<S, V>)
                .patch(update::<S, V>)
                .delete(revoke::<S, V>),
        )
        .route("/api-keys/{id}/rotate", post(rotate::<S, V>));
    let routes = match scope {
        Some(scope) => routes.route_layer(ScopeGuardLayer::new(scope)),
        None => routes,
    };
    routes.with_state(manager)
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ManageError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ManageError::invalid(
            "invalid_body",
            "the body must be a JSON object",
        )),
        Err(_) => Err(ManageError::InvalidJson),
    }
}

fn name_field(fields: &serde_json::Map<String, Value>) -> Result<&str, ManageError> {
    match fields.get("name") {
        Some(Value::String(name)) => Ok(name),
        Some(_) => Err(ManageError::invalid(
            "invalid_name",
            "name must be a string",
        )),
        None => Err(ManageError::invalid("invalid_name", "name is required")),
    }
}

fn create_request(fields: &serde_json::Map<String, Value>) -> Result<CreateKey, ManageError> {
    let name = name_field(fields)?.to_owned();
    let scopes = match fields.get("scopes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut scopes = Vec::with_capacity(items.len());
            for item in items {
                let scope = item
                    .as_str()
                    .and_then(|s| s.parse::<Scope>().ok())
                    .ok_or_else(|| {
                        ManageError::invalid("invalid_scope", format!("invalid scope {item}"))
                    })?;
                scopes.push(scope);
            }
            if scopes.is_empty() {
                return Err(ManageError::invalid(
                    "invalid_scope",
                    "scopes must not be empty",
                ));
            }
            Some(scopes.into_iter().collect())
        }
        Some(_) => {
            return Err(ManageError::invalid(
                "invalid_scope",
                "scopes must be an array of strings",
            ));
        }
    };
    let project_id = match fields.get("project_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(project)) if !project.is_empty() && project.len() <= 200 => {
            Some(project.clone())
        }
        Some(_) => {
            return Err(ManageError::invalid(
                "invalid_project",
                "project_id must be a non-empty string",
            ));
        }
    };
    let expires_at = match fields.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(
                |_| ManageError::invalid("invalid_expiry", "expires_at must be an RFC 3339 time"),
            )?,
        ),
        Some(_) => {
            return Err(ManageError::invalid(
                "invalid_expiry",
                "expires_at must be an RFC 3339 time",
            ));
        }
    };
    Ok(CreateKey {
        name,
        scopes,
        project_id,
        expires_at,
        restrictions: restrictions_field(fields)?,
    })
}

fn restrictions_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Restrictions>, ManageError> {
    match fields.get("restrictions") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Restrictions::none())),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|error| ManageError::invalid("invalid_restrictions", error.to_string())),
    }
}

/// A new key as answered the one time its plaintext is shown.
fn shown_once(created: &CreatedKey) -> Value {
    let mut body = serde_json::to_value(&created.info).expect("KeyInfo serializes");
    body["key"] = Value::String(created.key.expose_secret().to_owned());
    body
}

async fn create<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ManageError> {
    let request = create_request(&parse_body(&body)?)?;
    let created = manager.create(&principal, request).await?;
    Ok((StatusCode::CREATED, axum::Json(shown_once(&created))))
}

async fn list<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
) -> Result<axum::Json<Value>, ManageError> {
    let mut keys = manager.list(principal.account_id()).await?;
    keys.retain(|key| key.environment == *principal.environment());
    Ok(axum::Json(json!({ "data": keys })))
}

/// The caller's key `id`: of its account and its environment (a test key cannot see or
/// touch live keys), or `NotFound`.
async fn owned<S: KeyStore, V: KeyVerifier>(
    manager: &KeyManager<S, V>,
    principal: &Principal,
    id: &KeyId,
) -> Result<KeyInfo, ManageError> {
    let key = manager.get(principal.account_id(), id).await?;
    if key.environment != *principal.environment() {
        return Err(ManageError::NotFound);
    }
    Ok(key)
}

async fn get_one<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<KeyInfo>, ManageError> {
    Ok(axum::Json(
        owned(&manager, &principal, &KeyId::new(id)).await?,
    ))
}

async fn update<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<KeyInfo>, ManageError> {
    let fields = parse_body(&body)?;
    let mut changes = KeyChanges::default();
    if fields.contains_key("name") {
        changes.name = Some(name_field(&fields)?.to_owned());
    }
    if let Some(restrictions) = restrictions_field(&fields)? {
        let own = &principal.record().restrictions;
        if !own.is_empty() {
            return Err(ManageError::invalid(
                "invalid_restrictions",
                "a restricted key cannot change restrictions",
            ));
        }
        changes = changes.restrictions(restrictions);
    }
    if changes.is_empty() {
        return Err(ManageError::invalid(
            "invalid_body",
            "give a new name and/or restrictions",
        ));
    }
    let id = KeyId::new(id);
    owned(&manager, &principal, &id).await?;
    Ok(axum::Json(
        manager.update(principal.account_id(), &id, changes).await?,
    ))
}

async fn rotate<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ManageError> {
    let overlap = if body.is_empty() {
        0
    } else {
        match parse_body(&body)?.get("overlap_seconds") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_u64()
                .filter(|s| *s <= 90 * 24 * 3600)
                .ok_or_else(|| {
                    ManageError::invalid(
                        "invalid_overlap",
                        "overlap_seconds must be a whole number of seconds, at most 90 days",
                    )
                })?,
        }
    };
    let id = KeyId::new(id);
    owned(&manager, &principal, &id).await?;
    let created = manager
        .rotate(principal.account_id(), &id, Duration::from_secs(overlap))
        .await?;
    let mut body = shown_once(&created);
    body["rotated_from"] = Value::String(id.to_string());
    Ok((StatusCode::CREATED, axum::Json(body)))
}

async fn revoke<S: KeyStore, V: KeyVerifier>(
    State(manager): State<KeyManager<S, V>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ManageError> {
    let id = KeyId::new(id);
    owned(&manager, &principal, &id).await?;
    manager.revoke(principal.account_id(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> serde_json::Map<String, Value> {
        parse_body(&Bytes::from(body.to_owned())).unwrap()
    }

    #[test]
    fn create_bodies_are_checked_field_by_field() {
        assert!(matches!(
            parse_body(&Bytes::from_static(b"{nope")),
            Err(ManageError::InvalidJson)
        ));
        let code = |body: &str| create_request(&fields(body)).err().map(|e| e.code());
        assert_eq!(code(r#"{}"#), Some("invalid_name"));
        assert_eq!(code(r#"{"name": 3}"#), Some("invalid_name"));
        assert_eq!(
            code(r#"{"name": "a", "scopes": "read"}"#),
            Some("invalid_scope")
        );
        assert_eq!(
            code(r#"{"name": "a", "scopes": ["bad scope"]}"#),
            Some("invalid_scope")
        );
        assert_eq!(
            code(r#"{"name": "a", "scopes": []}"#),
            Some("invalid_scope")
        );
        assert_eq!(
            code(r#"{"name": "a", "expires_at": "tomorrow"}"#),
            Some("invalid_expiry")
        );
        let ok = create_request(&fields(
            r#"{"name": "a", "scopes": ["read"], "expires_at": "2030-01-01T00:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(ok.scopes, Some(Scope::Read.into()));
        assert!(ok.expires_at.is_some());
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
}
