//! The layer around a whole axum router, ready for `axum::serve` (feature `axum`):
//! [`RouterExt::with_api_keys`].
//!
//! Of the two ways to put [`ApiKeyLayer`] in front of an axum app, this one is the
//! cheaper: the layer runs once per request, before routing. `Router::layer` instead
//! wraps every route, so that each request also clones the layer's service with the
//! route's and, as axum does for every route, boxes its response future; see README's
//! "What it costs" for both, measured.
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use tower_api_keys::serve::RouterExt as _;
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyFormat, MemoryStore, Principal};
//!
//! # async fn run() -> std::io::Result<()> {
//! let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()));
//! let app = Router::new().route("/v1/whoami", get(|p: Principal| async move { p.key_id().to_string() }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app.with_api_keys(layer)).await
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use axum::Router;
use axum::serve::{IncomingStream, Listener};
use tower_layer::Layer as _;
use tower_service::Service;

use crate::layer::{ApiKeyAuth, ApiKeyLayer};
use crate::verify::KeyVerifier;

/// [`with_api_keys`](Self::with_api_keys) on [`axum::Router`].
pub trait RouterExt: Sized {
    /// `layer` around the whole router (the cheaper form), as a make-service that goes
    /// straight to `axum::serve`.
    fn with_api_keys<V: KeyVerifier>(self, layer: ApiKeyLayer<V>) -> ApiKeyMakeService<V>;
}

impl RouterExt for Router {
    fn with_api_keys<V: KeyVerifier>(self, layer: ApiKeyLayer<V>) -> ApiKeyMakeService<V> {
        ApiKeyMakeService {
            service: layer.layer(self),
        }
    }
}

/// What [`RouterExt::with_api_keys`] returns, for `axum::serve`: the router behind the
/// layer, once per connection.
///
/// Each connection gets its own copy of the layer's shared handle (the same cache,
/// store, limits and metrics behind it). hyper clones a connection's service for every
/// request; with a copy per connection, that clone counts a reference that only the
/// connection's thread touches, instead of one every worker writes.
pub struct ApiKeyMakeService<V> {
    service: ApiKeyAuth<Router, V>,
}

impl<V> Clone for ApiKeyMakeService<V> {
    fn clone(&self) -> Self {
        ApiKeyMakeService {
            service: self.service.clone(),
        }
    }
}

impl<V> fmt::Debug for ApiKeyMakeService<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyMakeService")
            .field("service", &self.service)
            .finish()
    }
}

impl<L: Listener, V: KeyVerifier> Service<IncomingStream<'_, L>> for ApiKeyMakeService<V> {
    type Response = ApiKeyAuth<Router, V>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: IncomingStream<'_, L>) -> Self::Future {
        std::future::ready(Ok(self.service.for_connection()))
    }
}
