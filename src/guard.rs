//! A scope guard for whole routes: [`ScopeGuardLayer`], for `Router::route_layer` or any
//! tower stack behind an [`ApiKeyLayer`](crate::ApiKeyLayer).
//!
//! ```
//! use axum::{Router, routing::post};
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, guard::ScopeGuardLayer, scope::Admin};
//! use tower_api_keys::{key::KeyFormat, store::MemoryStore};
//!
//! let admin: Router = Router::new()
//!     .route("/webhooks", post(|| async { "created" }))
//!     .route_layer(ScopeGuardLayer::require::<Admin>())
//!     .layer(ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new())));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::principal::require;
use crate::scope::{Scope, ScopeMarker};

/// Lets a request through only if its [`Principal`](crate::Principal) holds a scope:
/// 403 `insufficient_scope` otherwise (401 `missing_api_key` behind an optional layer
/// without a key; 500 without the layer).
#[derive(Debug, Clone)]
pub struct ScopeGuardLayer {
    scope: Scope,
}

impl ScopeGuardLayer {
    /// Requires `scope`.
    #[must_use]
    pub fn new(scope: Scope) -> Self {
        ScopeGuardLayer { scope }
    }

    /// Requires the scope of marker `M` ([`Read`](crate::scope::Read), …).
    #[must_use]
    pub fn require<M: ScopeMarker>() -> Self {
        Self::new(M::scope())
    }
}

impl<S> Layer<S> for ScopeGuardLayer {
    type Service = ScopeGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScopeGuard {
            inner,
            scope: self.scope.clone(),
        }
    }
}

/// The service of [`ScopeGuardLayer`].
#[derive(Clone)]
pub struct ScopeGuard<S> {
    inner: S,
    scope: Scope,
}

impl<S: fmt::Debug> fmt::Debug for ScopeGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("inner", &self.inner)
            .field("scope", &self.scope)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ScopeGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let state = match require(request.extensions(), Some(&self.scope)) {
            Ok(_) => GuardState::Inner {
                fut: self.inner.call(request),
            },
            Err(rejection) => GuardState::Reject {
                response: Some(rejection.respond()),
            },
        };
        GuardFuture { state }
    }
}

pin_project! {
    /// The response future of [`ScopeGuard`].
    pub struct GuardFuture<F, B> {
        #[pin]
        state: GuardState<F, B>,
    }
}

pin_project! {
    #[project = GuardProj]
    enum GuardState<F, B> {
        Inner {
            #[pin]
            fut: F,
        },
        Reject {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> fmt::Debug for GuardFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            GuardState::Inner { .. } => "GuardFuture::Inner",
            GuardState::Reject { .. } => "GuardFuture::Reject",
        })
    }
}

impl<F, B, E> Future for GuardFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            GuardProj::Inner { fut } => fut.poll(cx),
            GuardProj::Reject { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
