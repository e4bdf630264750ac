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

use axum::Router;
use axum::routing::IntoMakeService;
use tower_layer::Layer as _;

use crate::layer::{ApiKeyAuth, ApiKeyLayer};
use crate::verify::KeyVerifier;

/// [`with_api_keys`](Self::with_api_keys) on [`axum::Router`].
pub trait RouterExt: Sized {
    /// `layer` around the whole router (the cheaper form), as a make-service that goes
    /// straight to `axum::serve`.
    fn with_api_keys<V: KeyVerifier>(
        self,
        layer: ApiKeyLayer<V>,
    ) -> IntoMakeService<ApiKeyAuth<Router, V>>;
}

impl RouterExt for Router {
    fn with_api_keys<V: KeyVerifier>(
        self,
        layer: ApiKeyLayer<V>,
    ) -> IntoMakeService<ApiKeyAuth<Router, V>> {
        axum::ServiceExt::<axum::extract::Request>::into_make_service(layer.layer(self))
    }
}
