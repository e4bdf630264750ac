//! The HTTP face of [`KeyManager`]: [`KeyRoutes`], and the [`router`] shorthands.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, RawPathParams, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Invalid, KeyManager, KeyOwner, ManageError, NewKey};
use crate::audit::{Action, Actor, AuditQuery};
use crate::error::{Envelope, ErrorResponder};
use crate::key::{Environment, KeyId};
use crate::limit::RateLimit;
use crate::limit::credits::Credits;
use crate::principal::{Principal, require};
use crate::record::Metadata;
use crate::restriction::Restrictions;
use crate::scope::Scope;
use crate::store::{CreatedKey, KeyChanges, KeyInfo, KeyStore};
use crate::verify::KeyVerifier;

/// The management routes with the `admin` scope required and the default answers. See
/// the [module docs](super).
pub fn router<S: KeyStore, V: KeyVerifier>(manager: KeyManager<S, V>) -> Router {
    KeyRoutes::new(manager).into_router()
}

/// The management routes requiring `scope` of API keys (or only a valid key, with
/// `None`). A key can never create a key with scopes it does not hold itself.
pub fn router_with_scope<S: KeyStore, V: KeyVerifier>(
    manager: KeyManager<S, V>,
    scope: Option<Scope>,
) -> Router {
    KeyRoutes::new(manager).scope(scope).into_router()
}

/// What a route answers when it has nothing to return but success.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ack {
    /// 204 No Content.
    NoContent,
    /// 200 with the key as it now is (in the envelope).
    Key,
    /// 200 with [`Envelope::done`]: `{"success": true}`, and a message if given.
    Done(Option<Cow<'static, str>>),
}

type KeyView = dyn Fn(&KeyInfo) -> Value + Send + Sync;
type CreatedView = dyn Fn(&KeyInfo, &str) -> Value + Send + Sync;

/// The management routes, shaped to an API's documentation: the scope API keys need,
/// the [`Envelope`], the fields of a key, what PATCH and DELETE answer, whether keys can
/// be renamed.
///
/// ```
/// use axum::Router;
/// use serde_json::json;
/// use tower_api_keys::{CachedVerifier, error::Envelope, key::KeyFormat, store::MemoryStore};
/// use tower_api_keys::manage::{Ack, KeyManager, KeyRoutes};
///
/// let store = MemoryStore::new();
/// let manager = KeyManager::new(store.clone(), CachedVerifier::new(store), KeyFormat::new("sk"))
///     .id_prefix("key");
/// let routes: Router = KeyRoutes::new(manager)
///     .envelope(Envelope::Success)
///     .key_view(|key| json!({ "id": key.id, "name": key.name, "created_at": key.created_at.unix_timestamp() }))
///     .revoked(Ack::Done(Some("API key revoked successfully".into())))
///     .into_router();
/// ```
pub struct KeyRoutes<S, V> {
    manager: KeyManager<S, V>,
    scope: Option<Scope>,
    envelope: Envelope,
    key_view: Arc<KeyView>,
    created_view: Option<Arc<CreatedView>>,
    updated: Ack,
    revoked: Ack,
    renames: bool,
    rotation: bool,
}

impl<S, V> Clone for KeyRoutes<S, V> {
    fn clone(&self) -> Self {
        KeyRoutes {
            manager: self.manager.clone(),
            scope: self.scope.clone(),
            envelope: self.envelope,
            key_view: Arc::clone(&self.key_view),
            created_view: self.created_view.clone(),
            updated: self.updated.clone(),
            revoked: self.revoked.clone(),
            renames: self.renames,
            rotation: self.rotation,
        }
    }
}

impl<S, V> fmt::Debug for KeyRoutes<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRoutes")
            .field("manager", &self.manager)
            .field("scope", &self.scope)
            .field("envelope", &self.envelope)
            .field("updated", &self.updated)
            .field("revoked", &self.revoked)
            .field("renames", &self.renames)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// Every field of [`KeyInfo`], as serialized.
fn full_view(key: &KeyInfo) -> Value {
    serde_json::to_value(key).expect("KeyInfo serializes")
}

impl<S: KeyStore, V: KeyVerifier> KeyRoutes<S, V> {
    /// The defaults: API keys need `admin`; [`Envelope::Plain`]; every field of
    /// [`KeyInfo`]; PATCH answers the key, DELETE 204; renaming allowed.
    pub fn new(manager: KeyManager<S, V>) -> Self {
        KeyRoutes {
            manager,
            scope: Some(Scope::Admin),
            envelope: Envelope::Plain,
            key_view: Arc::new(full_view),
            created_view: None,
            updated: Ack::Key,
            revoked: Ack::NoContent,
            renames: true,
            rotation: true,
        }
    }

    /// The scope an API key needs here (`None`: any valid key). A [`KeyOwner`] needs
    /// none.
    #[must_use]
    pub fn scope(mut self, scope: Option<Scope>) -> Self {
        self.scope = scope;
        self
    }

    /// The envelope of answers and errors.
    #[must_use]
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// The JSON of a key in lists and single answers (default: every field of
    /// [`KeyInfo`]). It never sees the secret.
    #[must_use]
    pub fn key_view(mut self, view: impl Fn(&KeyInfo) -> Value + Send + Sync + 'static) -> Self {
        self.key_view = Arc::new(view);
        self
    }

    /// The JSON of a key when created or rotated, given the secret to show once
    /// (default: the [`key_view`](Self::key_view) plus `"key"`).
    #[must_use]
    pub fn created_view(
        mut self,
        view: impl Fn(&KeyInfo, &str) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.created_view = Some(Arc::new(view));
        self
    }

    /// What a successful PATCH answers (default [`Ack::Key`]).
    #[must_use]
    pub fn updated(mut self, ack: Ack) -> Self {
        self.updated = ack;
        self
    }

    /// What a DELETE answers, the first time and every time after (default
    /// [`Ack::NoContent`]).
    #[must_use]
    pub fn revoked(mut self, ack: Ack) -> Self {
        self.revoked = ack;
        self
    }

    /// Whether PATCH may change a key's name (default yes; if not, a name in the body
    /// is 422 `rename_not_allowed`).
    #[must_use]
    pub fn renames(mut self, allowed: bool) -> Self {
        self.renames = allowed;
        self
    }

    /// Whether `POST /api-keys/{id}/rotate` exists (default yes). APIs that document
    /// rotation as "create a new key, then revoke the old one" can leave it out.
    #[must_use]
    pub fn rotation(mut self, enabled: bool) -> Self {
        self.rotation = enabled;
        self
    }

    /// The key-management page for these routes, offering the manager's scopes (see
    /// [`Dashboard`](super::Dashboard)). Serve it where the browser reaches it with
    /// the same origin as these routes.
    #[cfg(feature = "dashboard")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
    #[must_use]
    pub fn dashboard(&self) -> super::Dashboard {
        super::Dashboard::new(self.manager.scopes().iter().cloned())
            .rotation(self.rotation)
            .renames(self.renames)
    }

    /// The OpenAPI description of these routes (their scope, whether they rotate and
    /// rename), to set a [`prefix`](super::openapi::ManagementDoc::prefix) on and
    /// merge into your document.
    #[cfg(feature = "openapi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
    #[must_use]
    pub fn openapi(&self) -> super::openapi::ManagementDoc {
        super::openapi::ManagementDoc::new()
            .scope(self.scope.clone())
            .rotation(self.rotation)
            .renames(self.renames)
    }

    /// The routes, ready to [`nest`](Router::nest) under any prefix, including one with
    /// path parameters of its own (`/projects/{project_id}`).
    pub fn into_router(self) -> Router {
        let routes = Router::new()
            .route("/api-keys", get(list::<S, V>).post(create::<S, V>))
            .route(
                "/api-keys/{id}",
                get(get_one::<S, V>)
                    .patch(update::<S, V>)
                    .delete(revoke::<S, V>),
            )
            .route("/api-keys/{id}/usage", get(usage::<S, V>))
            .route("/audit-events", get(audit_events::<S, V>));
        let routes = if self.rotation {
            routes.route("/api-keys/{id}/rotate", post(rotate::<S, V>))
        } else {
            routes
        };
        routes.with_state(Arc::new(self))
    }

    /// 201 with the new key, its secret shown this once; `rotated_from` names the key
    /// it replaces (in the default view).
    fn created(&self, created: &CreatedKey, rotated_from: Option<&KeyId>) -> Response {
        let secret = created.key.expose_secret();
        let body = match &self.created_view {
            Some(view) => view(&created.info, secret),
            None => match (self.key_view)(&created.info) {
                Value::Object(mut body) => {
                    body.insert("key".into(), Value::String(secret.to_owned()));
                    if let Some(old) = rotated_from {
                        body.insert("rotated_from".into(), Value::String(old.to_string()));
                    }
                    Value::Object(body)
                }
                // A view that is not an object still gets the secret shown, once.
                view => serde_json::json!({ "key": secret, "view": view }),
            },
        };
        // A secret: no cache keeps it.
        let no_store = [(http::header::CACHE_CONTROL, "no-store")];
        (
            StatusCode::CREATED,
            no_store,
            axum::Json(self.envelope.data(body)),
        )
            .into_response()
    }

    fn ack(&self, ack: &Ack, key: &KeyInfo) -> Response {
        match ack {
            Ack::NoContent => StatusCode::NO_CONTENT.into_response(),
            Ack::Key => axum::Json(self.envelope.data((self.key_view)(key))).into_response(),
            Ack::Done(message) => {
                axum::Json(self.envelope.done(message.as_deref())).into_response()
            }
        }
    }
}

type Routes<S, V> = State<Arc<KeyRoutes<S, V>>>;

/// Who is managing keys: an API key or a [`KeyOwner`], and how the layer in front
/// renders authentication errors.
struct Caller {
    who: Who,
    responder: Option<Arc<ErrorResponder>>,
    /// The peer address, for the audit trail.
    ip: Option<IpAddr>,
}

enum Who {
    Key(Principal),
    Owner(KeyOwner),
}

impl Caller {
    /// `manager`, acting for this caller (as the audit trail records it).
    fn acting<S: KeyStore, V: KeyVerifier>(&self, manager: &KeyManager<S, V>) -> KeyManager<S, V> {
        let actor = match &self.who {
            Who::Key(principal) => Actor::Key(principal.key_id().clone()),
            Who::Owner(owner) => Actor::User(owner.user_id.clone()),
        };
        manager.clone().acting(actor, self.ip)
    }

    fn account_id(&self) -> &str {
        match &self.who {
            Who::Key(principal) => principal.account_id(),
            Who::Owner(owner) => &owner.account_id,
        }
    }

    fn environment(&self) -> &Environment {
        match &self.who {
            Who::Key(principal) => principal.environment(),
            Who::Owner(owner) => &owner.environment,
        }
    }

    fn project_id(&self) -> Option<&str> {
        match &self.who {
            Who::Key(principal) => principal.project_id(),
            Who::Owner(owner) => owner.project_id.as_deref(),
        }
    }

    /// Whether `key` is one this caller manages: same account, environment and (for a
    /// caller locked to a project) project.
    fn manages(&self, key: &KeyInfo) -> bool {
        key.account_id == self.account_id()
            && key.environment == *self.environment()
            && self
                .project_id()
                .is_none_or(|own| key.project_id.as_deref() == Some(own))
    }
}

impl<S: KeyStore, V: KeyVerifier> FromRequestParts<Arc<KeyRoutes<S, V>>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        routes: &Arc<KeyRoutes<S, V>>,
    ) -> Result<Self, Self::Rejection> {
        let responder = ErrorResponder::in_extensions(&parts.extensions);
        let ip = crate::client_ip::peer_ip(&parts.extensions);
        if parts.extensions.get::<Principal>().is_none() {
            if let Some(owner) = parts.extensions.get::<KeyOwner>() {
                // An owner is often a session cookie, which a browser also sends with
                // requests that other sites make: those are refused.
                if from_another_site(&parts.headers) {
                    let error = ManageError::CrossSite;
                    return Err(respond(error, routes.envelope, responder.as_deref()));
                }
                let who = Who::Owner(owner.clone());
                return Ok(Caller { who, responder, ip });
            }
        }
        let principal = require(&parts.extensions, routes.scope.as_ref())
            .map_err(IntoResponse::into_response)?;
        Ok(Caller {
            who: Who::Key(principal),
            responder,
            ip,
        })
    }
}

/// Whether the browser says another site made this request: `Sec-Fetch-Site` other
/// than `same-origin` (or `none`, typed by the user), or, from browsers that do not send
/// it (plain-HTTP origins, older browsers), an `Origin` whose host is not the request's
/// `Host`. A request with neither header is not a browser's cross-site request.
fn from_another_site(headers: &http::HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(http::header::HOST)
        .map(http::HeaderValue::as_bytes);
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host.as_bytes());
    origin_host.is_none() || origin_host != host
}

/// The `{id}` of the route, whatever other parameters an enclosing `nest` has.
struct KeyIdParam(KeyId);

impl<St: Send + Sync> FromRequestParts<St> for KeyIdParam {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // The innermost `{id}`: a prefix may have an `{id}` of its own.
        params
            .iter()
            .filter(|(name, _)| *name == "id")
            .last()
            .map(|(_, id)| KeyIdParam(KeyId::new(id)))
            .ok_or_else(|| ManageError::NotFound.into_response())
    }
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ManageError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ManageError::invalid(
            Invalid::Body,
            "the body must be a JSON object",
        )),
        Err(_) => Err(ManageError::InvalidJson),
    }
}

fn name_field(fields: &serde_json::Map<String, Value>) -> Result<&str, ManageError> {
    match fields.get("name") {
        Some(Value::String(name)) => Ok(name),
        Some(_) => Err(ManageError::invalid(Invalid::Name, "name must be a string")),
        None => Err(ManageError::invalid(Invalid::Name, "name is required")),
    }
}

fn create_request(fields: &serde_json::Map<String, Value>) -> Result<NewKey, ManageError> {
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
                        ManageError::invalid(Invalid::Scope, format!("invalid scope {item}"))
                    })?;
                scopes.push(scope);
            }
            if scopes.is_empty() {
                return Err(ManageError::invalid(
                    Invalid::Scope,
                    "scopes must not be empty",
                ));
            }
            Some(scopes.into_iter().collect())
        }
        Some(_) => {
            return Err(ManageError::invalid(
                Invalid::Scope,
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
                Invalid::Project,
                "project_id must be a non-empty string",
            ));
        }
    };
    let expires_at = match fields.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(
                |_| ManageError::invalid(Invalid::Expiry, "expires_at must be an RFC 3339 time"),
            )?,
        ),
        Some(_) => {
            return Err(ManageError::invalid(
                Invalid::Expiry,
                "expires_at must be an RFC 3339 time",
            ));
        }
    };
    Ok(NewKey {
        name,
        scopes,
        project_id,
        expires_at,
        restrictions: restrictions_field(fields)?,
        owner_id: owner_field(fields)?.flatten(),
        metadata: metadata_field(fields)?.unwrap_or_default(),
        ratelimits: ratelimits_field(fields)?,
        credits: credits_field(fields)?.flatten(),
    })
}

/// `ratelimits`: absent (`None`), `null` (none) or an array of limits.
fn ratelimits_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Vec<RateLimit>>, ManageError> {
    match fields.get("ratelimits") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Vec::new())),
        Some(value) => serde_json::from_value::<Vec<RateLimit>>(value.clone())
            .map(Some)
            .map_err(|_| {
                ManageError::invalid(
                    Invalid::RateLimits,
                    "ratelimits must be an array of {\"name\", \"limit\", \"window_seconds\"} with positive whole numbers",
                )
            }),
    }
}

/// `credits`: absent (`None`), `null` (`Some(None)`: none) or a balance.
fn credits_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Option<Credits>>, ManageError> {
    match fields.get("credits") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => serde_json::from_value::<Credits>(value.clone())
            .map(|credits| Some(Some(credits)))
            .map_err(|_| {
                ManageError::invalid(
                    Invalid::Credits,
                    "credits must be {\"remaining\": n, \"refill\"?: {\"interval\": \"daily\" | \"monthly\", \"amount\": n, \"day\"?: 1-31}}",
                )
            }),
    }
}

/// `owner_id`: absent (`None`), `null` (`Some(None)`: none) or a string.
fn owner_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Option<String>>, ManageError> {
    match fields.get("owner_id") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(owner)) => Ok(Some(Some(owner.clone()))),
        Some(_) => Err(ManageError::invalid(
            Invalid::Owner,
            "owner_id must be a string",
        )),
    }
}

/// `metadata`: absent (`None`), `null` (an empty object) or a JSON object.
fn metadata_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Metadata>, ManageError> {
    match fields.get("metadata") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Metadata::new())),
        Some(Value::Object(metadata)) => Ok(Some(metadata.clone())),
        Some(_) => Err(ManageError::invalid(
            Invalid::Metadata,
            "metadata must be a JSON object",
        )),
    }
}

fn restrictions_field(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<Restrictions>, ManageError> {
    match fields.get("restrictions") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Restrictions::none())),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|error| ManageError::invalid(Invalid::Restrictions, error.to_string())),
    }
}

/// Runs a handler body, rendering its error in the routes' envelope (an
/// authentication error in the format of the layer in front).
fn answer(
    routes: &KeyRoutes<impl Sized, impl Sized>,
    caller: &Caller,
    result: Result<Response, ManageError>,
) -> Response {
    result.unwrap_or_else(|error| respond(error, routes.envelope, caller.responder.as_deref()))
}

/// The response for `error`: its status, and its code and message in `envelope`; an
/// [`AuthError`](crate::AuthError) as `layer` renders it (with its challenge).
fn respond(error: ManageError, envelope: Envelope, layer: Option<&ErrorResponder>) -> Response {
    match &error {
        ManageError::Auth(auth) => return ErrorResponder::respond_with(layer, auth),
        ManageError::Unavailable(cause) => tracing::error!(error = %cause, "key store failed"),
        _ => {}
    }
    let body = envelope.error(error.code(), &error.public_message());
    (error.status(), axum::Json(body)).into_response()
}

impl IntoResponse for ManageError {
    fn into_response(self) -> Response {
        respond(self, Envelope::Plain, None)
    }
}

/// The caller's key `id`, or `NotFound`.
async fn owned<S: KeyStore, V: KeyVerifier>(
    routes: &KeyRoutes<S, V>,
    caller: &Caller,
    id: &KeyId,
) -> Result<KeyInfo, ManageError> {
    let key = routes.manager.get(caller.account_id(), id).await?;
    if !caller.manages(&key) {
        return Err(ManageError::NotFound);
    }
    Ok(key)
}

async fn create<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    body: Bytes,
) -> Response {
    let result = async {
        let request = create_request(&parse_body(&body)?)?;
        let manager = caller.acting(&routes.manager);
        let created = match &caller.who {
            Who::Key(principal) => manager.create(principal, request).await?,
            Who::Owner(owner) => manager.create_for_owner(owner, request).await?,
        };
        Ok(routes.created(&created, None))
    };
    answer(&routes, &caller, result.await)
}

async fn list<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Response {
    let result = async {
        // `?include=usage_24h`: each key's accepted requests of the last 24 hours, in
        // one query for all of them.
        // Other parameters are left alone, as the listing always did.
        let with_usage = form_pairs(raw.as_deref().unwrap_or_default())
            .iter()
            .any(|(name, value)| name == "include" && value.split(',').any(|v| v == "usage_24h"));
        let keys = routes.manager.list(caller.account_id()).await?;
        let totals: std::collections::HashMap<KeyId, u64> = if with_usage {
            let since = OffsetDateTime::now_utc() - time::Duration::hours(24);
            routes
                .manager
                .usage_totals(caller.account_id(), since)
                .await?
                .into_iter()
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        let items = keys
            .iter()
            .filter(|key| caller.manages(key))
            .map(|key| {
                let mut view = (routes.key_view)(key);
                if let (true, Value::Object(fields)) = (with_usage, &mut view) {
                    let count = totals.get(&key.id).copied().unwrap_or(0);
                    fields.insert("usage_24h".into(), count.into());
                }
                view
            })
            .collect();
        Ok(axum::Json(routes.envelope.list(items)).into_response())
    };
    answer(&routes, &caller, result.await)
}

/// `GET /api-keys/{id}/usage?from=&to=`: the key's requests by hour (default: the
/// last 24 hours), by outcome and client address, oldest first.
async fn usage<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    KeyIdParam(id): KeyIdParam,
    RawQuery(raw): RawQuery,
) -> Response {
    let result = async {
        let now = OffsetDateTime::now_utc();
        let (mut from, mut to) = (
            now - time::Duration::hours(24),
            now + time::Duration::hours(1),
        );
        for (name, value) in form_pairs(raw.as_deref().unwrap_or_default()) {
            let at = OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    ManageError::invalid(Invalid::Query, format!("{name} must be an RFC 3339 time"))
                });
            match name.as_str() {
                "from" => from = at?,
                "to" => to = at?,
                _ => {
                    return Err(ManageError::invalid(
                        Invalid::Query,
                        format!("unknown parameter {name:?}"),
                    ));
                }
            }
        }
        owned(&routes, &caller, &id).await?;
        if to - from > time::Duration::days(31) || to <= from {
            return Err(ManageError::invalid(
                Invalid::Query,
                "from must be before to, at most 31 days apart",
            ));
        }
        let buckets = routes
            .manager
            .usage(caller.account_id(), &id, from, to)
            .await?;
        let items = buckets
            .iter()
            .map(|bucket| {
                let ips: Vec<Value> = bucket
                    .ips
                    .iter()
                    .map(|(ip, count)| serde_json::json!({"ip": ip, "count": count}))
                    .collect();
                serde_json::json!({
                    "hour": bucket.hour.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                    "requests": bucket.outcomes.values().sum::<u64>(),
                    "outcomes": bucket.outcomes,
                    "ips": ips,
                })
            })
            .collect();
        Ok(axum::Json(routes.envelope.list(items)).into_response())
    };
    answer(&routes, &caller, result.await)
}

async fn get_one<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    KeyIdParam(id): KeyIdParam,
) -> Response {
    let result = async {
        let key = owned(&routes, &caller, &id).await?;
        Ok(axum::Json(routes.envelope.data((routes.key_view)(&key))).into_response())
    };
    answer(&routes, &caller, result.await)
}

async fn update<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    KeyIdParam(id): KeyIdParam,
    body: Bytes,
) -> Response {
    let result = async {
        let fields = parse_body(&body)?;
        let mut changes = KeyChanges::default();
        if fields.contains_key("name") {
            if !routes.renames {
                return Err(ManageError::invalid(
                    Invalid::RenameNotAllowed,
                    "keys cannot be renamed; create a new key instead",
                ));
            }
            changes.name = Some(name_field(&fields)?.to_owned());
        }
        if let Some(restrictions) = restrictions_field(&fields)? {
            changes = changes.restrictions(restrictions);
        }
        if let Some(owner_id) = owner_field(&fields)? {
            changes = changes.owner_id(owner_id);
        }
        if let Some(metadata) = metadata_field(&fields)? {
            changes = changes.metadata(metadata);
        }
        if let Some(ratelimits) = ratelimits_field(&fields)? {
            changes = changes.ratelimits(ratelimits);
        }
        if let Some(credits) = credits_field(&fields)? {
            changes = changes.credits(credits);
        }
        if changes.is_empty() {
            return Err(ManageError::invalid(
                Invalid::Body,
                "give a new name, restrictions, owner_id, metadata, ratelimits and/or credits",
            ));
        }
        owned(&routes, &caller, &id).await?;
        let manager = caller.acting(&routes.manager);
        let key = match &caller.who {
            // A key changes only keys it could have created itself (it could otherwise
            // lift the restrictions of a broader key).
            Who::Key(principal) => manager.update_for(principal, &id, changes).await?,
            Who::Owner(owner) => manager.update(&owner.account_id, &id, changes).await?,
        };
        Ok(routes.ack(&routes.updated, &key))
    };
    answer(&routes, &caller, result.await)
}

async fn rotate<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    KeyIdParam(id): KeyIdParam,
    body: Bytes,
) -> Response {
    let result = async {
        let overlap = if body.is_empty() {
            0
        } else {
            match parse_body(&body)?.get("overlap_seconds") {
                None | Some(Value::Null) => 0,
                Some(value) => value.as_u64().filter(|s| *s <= 90 * 24 * 3600).ok_or_else(
                    || {
                        ManageError::invalid(
                            Invalid::Overlap,
                            "overlap_seconds must be a whole number of seconds, at most 90 days",
                        )
                    },
                )?,
            }
        };
        owned(&routes, &caller, &id).await?;
        let overlap = Duration::from_secs(overlap);
        let manager = caller.acting(&routes.manager);
        let created = match &caller.who {
            Who::Key(principal) => manager.rotate_for(principal, &id, overlap).await?,
            Who::Owner(_) => manager.rotate(caller.account_id(), &id, overlap).await?,
        };
        Ok(routes.created(&created, Some(&id)))
    };
    answer(&routes, &caller, result.await)
}

async fn revoke<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    KeyIdParam(id): KeyIdParam,
) -> Response {
    let result = async {
        owned(&routes, &caller, &id).await?;
        let key = caller
            .acting(&routes.manager)
            .revoke(caller.account_id(), &id)
            .await?;
        Ok(routes.ack(&routes.revoked, &key))
    };
    answer(&routes, &caller, result.await)
}

/// `GET /audit-events?key_id=&action=&from=&to=&cursor=&limit=`: the caller's account
/// and environment (for a caller locked to a project: its keys' events only), newest
/// first, `limit` (1–200, default 50) at a time; `next_cursor` continues.
async fn audit_events<S: KeyStore, V: KeyVerifier>(
    State(routes): Routes<S, V>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Response {
    let result = async {
        let mut query = AuditQuery::account(caller.account_id());
        query.environment = Some(caller.environment().as_str().to_owned());
        let invalid = |what: &str| ManageError::invalid(Invalid::Query, what.to_owned());
        for (name, value) in form_pairs(raw.as_deref().unwrap_or_default()) {
            let time = |value: &str| {
                OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| invalid(&format!("{name} must be an RFC 3339 time")))
            };
            match name.as_str() {
                "key_id" => query.key_id = Some(value),
                "action" => {
                    query.action =
                        Some(Action::parse(&value).ok_or_else(|| invalid("unknown action"))?);
                }
                "from" => query.from = Some(time(&value)?),
                "to" => query.to = Some(time(&value)?),
                "cursor" => {
                    query.before = Some(
                        value
                            .parse::<i64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| invalid("cursor is not one this route gave"))?,
                    );
                }
                "limit" => {
                    query.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=200).contains(n))
                        .ok_or_else(|| invalid("limit must be 1 to 200"))?;
                }
                _ => return Err(invalid(&format!("unknown parameter {name:?}"))),
            }
        }
        let page = routes.manager.audit_events(&query).await?;
        let mut events = page.events;
        if caller.project_id().is_some() {
            // A caller locked to a project sees the events of the keys it manages.
            let keys = routes.manager.list(caller.account_id()).await?;
            let mine: Vec<String> = keys
                .iter()
                .filter(|key| caller.manages(key))
                .map(|key| key.id.to_string())
                .collect();
            events.retain(|event| event.key_id.as_ref().is_some_and(|id| mine.contains(id)));
        }
        let items = events
            .iter()
            .map(|event| serde_json::to_value(event).unwrap_or_default())
            .collect();
        let mut body = routes.envelope.list(items);
        if let Value::Object(fields) = &mut body {
            fields.insert(
                "next_cursor".into(),
                page.next
                    .map_or(Value::Null, |next| Value::String(next.to_string())),
            );
        }
        Ok(axum::Json(body).into_response())
    };
    answer(&routes, &caller, result.await)
}

/// `name=value` pairs of a query string, percent-decoded.
fn form_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                let text = text.replace('+', " ");
                crate::percent::decode(&text).map_or(text.clone(), |decoded| decoded.into_owned())
            };
            (decode(name), decode(value))
        })
        .collect()
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
}
