//! axum extractors: [`Principal`], `Option<Principal>` and [`RequireScope<S>`].
//!
//! ```
//! use axum::{Json, Router, routing::{get, post}};
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal, RequireScope, scope::Write};
//! use tower_api_keys::{key::KeyFormat, store::MemoryStore};
//!
//! async fn whoami(principal: Principal) -> Json<Principal> {
//!     Json(principal)
//! }
//!
//! async fn create_item(RequireScope(principal, ..): RequireScope<Write>) -> String {
//!     format!("created by {}", principal.key_id())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/items", post(create_item))
//!     .layer(ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new())));
//! ```
//!
//! Without the layer in front, these extractors answer 500 and log why. Behind an
//! [optional](crate::ApiKeyLayer::optional) layer, `Principal` answers 401
//! `missing_api_key` to a request without a key, and `Option<Principal>` is `None`.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::error::{MissingApiKeyLayer, PrincipalRejection};
use crate::principal::{Principal, authenticated, require};
use crate::scope::ScopeMarker;

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = PrincipalRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        require(&parts.extensions, None)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = MissingApiKeyLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        authenticated(&parts.extensions)
    }
}

/// The principal, if its key holds the scope `S` (403 `insufficient_scope` if not).
///
/// `S` is a [`ScopeMarker`]: [`Read`](crate::scope::Read),
/// [`Write`](crate::scope::Write), [`Admin`](crate::scope::Admin), or your own from
/// [`scope_marker!`](crate::scope_marker).
#[derive(Debug, Clone)]
pub struct RequireScope<S>(pub Principal, pub PhantomData<S>);

impl<S> std::ops::Deref for RequireScope<S> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<M: ScopeMarker, S: Send + Sync> FromRequestParts<S> for RequireScope<M> {
    type Rejection = PrincipalRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        require(&parts.extensions, Some(&M::scope())).map(|p| RequireScope(p, PhantomData))
    }
}
