//! What every example server shares, per the example contract in DESIGN.md: the store
//! (SQLite file unless `DATABASE_URL`), the cache and usage recording around it, and
//! serving on `127.0.0.1:$PORT` with `READY` and a clean Ctrl-C.
#![allow(dead_code)] // each example uses what it needs

use std::error::Error;
use std::time::Duration;

use tower_api_keys::key::KeyFormat;
use tower_api_keys::limit::redis::RedisLimiter;
use tower_api_keys::store::SqlStore;
use tower_api_keys::usage::UsageRecorder;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// The store, the layer's cache over it, and the usage recorder flushing into it.
pub(crate) struct Backend {
    pub(crate) store: SqlStore,
    pub(crate) cache: CachedVerifier<SqlStore>,
    pub(crate) usage: UsageRecorder,
    /// Rate limits shared through Redis when `REDIS_URL` is set.
    redis: Option<RedisLimiter>,
    /// The layers made here, whose leased credits go back on close.
    layers: std::sync::Mutex<Vec<ApiKeyLayer<SqlStore>>>,
    flusher: tokio::task::JoinHandle<()>,
    #[cfg(feature = "postgres")]
    _revocations: Option<tower_api_keys::store::RevocationListener>,
}

impl Backend {
    /// Opens `DATABASE_URL`, or the SQLite file `default_file`, and migrates it.
    pub(crate) async fn open(default_file: &str) -> Result<Self, BoxError> {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| default_file.to_owned());
        let store = SqlStore::open(&url).await?;
        store.migrate().await?;
        let cache = CachedVerifier::new(store.clone());
        let usage = UsageRecorder::new();
        let flusher = usage.spawn_flusher(store.clone(), Duration::from_secs(1));
        let redis = match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(RedisLimiter::new(&url)?),
            _ => None,
        };
        Ok(Backend {
            redis,
            layers: std::sync::Mutex::default(),
            #[cfg(feature = "postgres")]
            _revocations: store.listen_for_revocations(cache.clone()),
            store,
            cache,
            usage,
            flusher,
        })
    }

    /// The key layer for keys of `format`: usage recorded, rate limits shared through
    /// Redis when `REDIS_URL` is set; its leased credits are returned on close.
    pub(crate) fn layer(&self, format: KeyFormat) -> ApiKeyLayer<SqlStore> {
        let mut layer =
            ApiKeyLayer::new(format, self.cache.clone()).record_usage(self.usage.clone());
        if let Some(redis) = &self.redis {
            layer = layer.shared_limits(redis.clone());
        }
        self.layers.lock().unwrap().push(layer.clone());
        layer
    }

    /// Stops the flusher, writes the last usage stamps and returns leased credits.
    pub(crate) async fn close(self) -> Result<(), BoxError> {
        self.flusher.abort();
        self.usage.flush(&self.store).await?;
        let layers = std::mem::take(&mut *self.layers.lock().unwrap());
        for layer in layers {
            layer.return_credits().await;
        }
        Ok(())
    }
}

/// Installs the Prometheus recorder (before the cache and the layer are built: their
/// metrics register with the recorder in force then), describes the crate's metrics,
/// and runs the exporter's upkeep every 5 s (needs a Tokio runtime).
pub(crate) fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, BoxError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    tower_api_keys::metrics::describe();
    // The exporter leaves its upkeep (draining histogram samples) to the caller.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics`: the metrics in the Prometheus text format. Merge it into the app
/// after the key layer, so that it is served without a key (keep it off the public
/// internet, or behind a guard of its own, in production).
pub(crate) fn metrics_route(handle: metrics_exporter_prometheus::PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = handle.render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    )
}

/// `127.0.0.1:$PORT`, `default_port` without `PORT`.
pub(crate) async fn bind(default_port: u16) -> Result<tokio::net::TcpListener, BoxError> {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse::<u16>()?,
        Err(_) => default_port,
    };
    Ok(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?)
}

/// Prints a bootstrap credential as `NAME=value`.
pub(crate) fn credential(name: &str, value: &str) {
    println!("{name}={value}");
}

/// Serves `app` (with the peer address, for IP restrictions) until Ctrl-C, printing
/// `READY` once the socket accepts connections, then closes `backend`.
pub(crate) async fn serve(
    app: axum::Router,
    default_port: u16,
    backend: Backend,
) -> Result<(), BoxError> {
    let listener = bind(default_port).await?;
    println!("READY");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    backend.close().await
}

/// A JSON request body; anything else is 400 `invalid_json` in the examples' error shape
/// (axum's `Json` would answer plain text).
pub(crate) struct JsonBody(pub(crate) serde_json::Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = (axum::http::StatusCode, axum::Json<serde_json::Value>);

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let invalid = || {
            let error = serde_json::json!({
                "error": { "code": "invalid_json", "message": "the body must be JSON" }
            });
            (axum::http::StatusCode::BAD_REQUEST, axum::Json(error))
        };
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|_| invalid())?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|_| invalid())
    }
}
