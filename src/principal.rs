//! The authenticated caller.

use std::fmt;
use std::sync::Arc;

use crate::key::{Environment, KeyId};
use crate::record::KeyRecord;
use crate::scope::{Scope, Scopes};

/// Who is calling: put into the request's extensions by [`ApiKeyAuth`](crate::ApiKeyAuth)
/// once the key is accepted.
///
/// Cloning costs one reference-count increment. In axum handlers, take it as an
/// extractor (`principal: Principal`, or `Option<Principal>` behind an optional layer);
/// elsewhere read it with `request.extensions().get::<Principal>()`.
///
/// Serializes to `{"key_id", "key_name", "account_id", "project_id", "scopes",
/// "environment"}`; the key itself and its hash are never part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<KeyRecord>);

impl Principal {
    /// The principal of a verified key record: made by the layer only.
    pub(crate) fn new(record: Arc<KeyRecord>) -> Self {
        Principal(record)
    }

    /// A principal that no layer verified, for unit tests of your handlers (which take a
    /// `Principal`) without a server. Never build one from anything a request carries:
    /// it is trusted as it is.
    ///
    /// ```
    /// use tower_api_keys::{Environment, Principal, Scope};
    /// use tower_api_keys::{key::KeyId, record::KeyRecord};
    ///
    /// let record = KeyRecord::new(KeyId::new("ak_1"), "ci", "acct_1", Environment::TEST)
    ///     .with_scopes([Scope::Read]);
    /// let principal = Principal::for_tests(record);
    /// assert_eq!(principal.account_id(), "acct_1");
    /// ```
    #[must_use]
    pub fn for_tests(record: KeyRecord) -> Self {
        Principal(Arc::new(record))
    }

    /// The key's public id (`ak_…`).
    #[must_use]
    pub fn key_id(&self) -> &KeyId {
        &self.0.id
    }

    /// The key's human name.
    #[must_use]
    pub fn key_name(&self) -> &str {
        &self.0.name
    }

    /// The account that owns the key.
    #[must_use]
    pub fn account_id(&self) -> &str {
        &self.0.account_id
    }

    /// The project the key is locked to, if any.
    #[must_use]
    pub fn project_id(&self) -> Option<&str> {
        self.0.project_id.as_deref()
    }

    /// The key's scopes.
    #[must_use]
    pub fn scopes(&self) -> &Scopes {
        &self.0.scopes
    }

    /// Whether the key's scopes grant `scope`.
    #[must_use]
    pub fn has_scope(&self, scope: &Scope) -> bool {
        self.0.scopes.allows(scope)
    }

    /// The key's environment.
    #[must_use]
    pub fn environment(&self) -> &Environment {
        &self.0.environment
    }

    /// Who created the key: the creating key's id, or the dashboard user that did.
    #[must_use]
    pub fn created_by(&self) -> Option<&str> {
        self.0.created_by.as_deref()
    }

    /// The end user the key belongs to, if the API says so.
    #[must_use]
    pub fn owner_id(&self) -> Option<&str> {
        self.0.owner_id.as_deref()
    }

    /// The key's metadata (a JSON object).
    #[must_use]
    pub fn metadata(&self) -> &crate::record::Metadata {
        &self.0.metadata
    }

    /// The record, shared.
    pub(crate) fn shared_record(&self) -> Arc<KeyRecord> {
        Arc::clone(&self.0)
    }

    /// The whole record the verifier returned.
    #[must_use]
    pub fn record(&self) -> &KeyRecord {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", self.key_id())
            .field("key_name", &self.key_name())
            .field("account_id", &self.account_id())
            .field("project_id", &self.project_id())
            .field("scopes", self.scopes())
            .field("environment", self.environment())
            .finish()
    }
}

impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Principal", 6)?;
        st.serialize_field("key_id", self.key_id())?;
        st.serialize_field("key_name", self.key_name())?;
        st.serialize_field("account_id", self.account_id())?;
        st.serialize_field("project_id", &self.project_id())?;
        st.serialize_field("scopes", self.scopes())?;
        st.serialize_field("environment", self.environment())?;
        st.end()
    }
}

/// Marks a request that passed an optional [`ApiKeyLayer`](crate::ApiKeyLayer) without
/// a key; extractors use it to tell "no key" (401) from "no layer" (500).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anonymous;

/// Marks a request whose bearer token is not an API key at all (it lacks the key
/// prefix: a session JWT, say) and that an [`ApiKeyLayer`](crate::ApiKeyLayer) with
/// [`pass_foreign_tokens`](crate::ApiKeyLayer::pass_foreign_tokens) handed on without a
/// [`Principal`], for the service behind it to authenticate another way.
///
/// Extractors treat it as "no principal": `Option<Principal>` is `None` and
/// `Principal` answers 401 `invalid_api_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForeignToken;

/// The principal of a request that went through the layer: `Ok(None)` behind an
/// optional layer without a key, or for a foreign token that was passed on.
pub(crate) fn authenticated(
    extensions: &http::Extensions,
) -> Result<Option<Principal>, crate::error::MissingApiKeyLayer> {
    if let Some(principal) = extensions.get::<Principal>() {
        return Ok(Some(principal.clone()));
    }
    if extensions.get::<Anonymous>().is_some() || extensions.get::<ForeignToken>().is_some() {
        return Ok(None);
    }
    Err(crate::error::MissingApiKeyLayer)
}

/// The principal of a request, or the rejection for its absence, with `required`
/// checked when given.
pub(crate) fn require(
    extensions: &http::Extensions,
    required: Option<&Scope>,
) -> Result<Principal, crate::error::PrincipalRejection> {
    use crate::error::PrincipalRejection;
    let Some(principal) = authenticated(extensions)? else {
        let error = if extensions.get::<ForeignToken>().is_some() {
            crate::AuthError::InvalidKey
        } else {
            crate::AuthError::MissingKey
        };
        return Err(PrincipalRejection::auth(error, extensions));
    };
    if let Some(required) = required {
        if !principal.has_scope(required) {
            let error = crate::AuthError::InsufficientScope {
                required: required.clone(),
            };
            return Err(PrincipalRejection::auth(error, extensions));
        }
    }
    Ok(principal)
}
