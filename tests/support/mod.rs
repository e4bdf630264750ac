//! Shared fixtures for the behaviour tests.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "dashboard")]
pub mod browser;
pub mod create;
#[cfg(feature = "sqlite")]
pub mod example_server;
pub mod limits;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod raw_http;
pub mod skips;
pub mod store_contract;
#[cfg(feature = "sqlite")]
pub mod temp_db;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use self::create::{NewKey, StoreForTests as _};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_keys::key::{ApiKey, Environment, KeyFormat, KeyHash};
use tower_api_keys::scope::{Read, Scope, Write};
use tower_api_keys::store::{KeyStore, MemoryStore};
use tower_api_keys::{
    ApiKeyLayer, CachedVerifier, KeyRecord, KeyVerifier, Principal, RequireScope, VerifyError,
};

/// A verifier that counts calls, and can be slowed down, held or made to fail.
#[derive(Clone)]
pub struct Counting<V> {
    pub inner: V,
    pub calls: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    pub delay: Duration,
    /// Calls wait while a test holds this for writing (`hold`).
    pub gate: Arc<tokio::sync::RwLock<()>>,
}

impl<V> Counting<V> {
    pub fn new(inner: V) -> Self {
        Counting {
            inner,
            calls: Arc::default(),
            failing: Arc::default(),
            delay: Duration::ZERO,
            gate: Arc::default(),
        }
    }

    /// Holds every call (after it is counted) until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        Arc::clone(&self.gate).write_owned().await
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl<V: KeyVerifier> KeyVerifier for Counting<V> {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.read().await);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(VerifyError::backend(
                "connection refused (db.internal:5432)",
            ));
        }
        self.inner.verify(hash).await
    }
}

/// A memory store with keys of each kind for account `acct_1`.
pub struct Keys {
    pub store: MemoryStore,
    pub format: KeyFormat,
    pub read: ApiKey,
    pub write: ApiKey,
    pub admin: ApiKey,
    pub test_env: ApiKey,
    pub revoked: ApiKey,
    pub expired: ApiKey,
}

pub async fn keys() -> Keys {
    let store = MemoryStore::new();
    let format = KeyFormat::new("sk");
    let make = |name: &str, scope: Scope, env: Environment| {
        NewKey::new("acct_1", name, env).scopes([scope])
    };
    let create = |request: NewKey| {
        let store = store.clone();
        let format = format.clone();
        async move { store.create(&format, request).await.unwrap() }
    };
    let read = create(make("read", Scope::Read, Environment::LIVE))
        .await
        .key;
    let write = create(make("write", Scope::Write, Environment::LIVE))
        .await
        .key;
    let admin = create(make("admin", Scope::Admin, Environment::LIVE))
        .await
        .key;
    let test_env = create(make("test", Scope::Admin, Environment::TEST))
        .await
        .key;
    let revoked = create(make("revoked", Scope::Admin, Environment::LIVE)).await;
    store.revoke("acct_1", &revoked.info.id).await.unwrap();
    let expired = create(
        make("expired", Scope::Admin, Environment::LIVE)
            .expires_at(time::OffsetDateTime::now_utc() - time::Duration::seconds(1)),
    )
    .await
    .key;
    Keys {
        store,
        format,
        read,
        write,
        admin,
        test_env,
        revoked: revoked.key,
        expired,
    }
}

/// `GET /whoami` (any key), `GET /items` (read), `POST /items` (write).
pub fn routes() -> Router {
    Router::new()
        .route("/whoami", get(|p: Principal| async move { axum::Json(p) }))
        .route(
            "/maybe",
            get(|p: Option<Principal>| async move {
                p.map_or_else(|| "anonymous".to_owned(), |p| p.key_id().to_string())
            }),
        )
        .route("/items", get(|_: RequireScope<Read>| async { "items" }))
        .route("/items", post(|_: RequireScope<Write>| async { "created" }))
}

pub fn app<V: KeyVerifier>(layer: ApiKeyLayer<V>) -> Router {
    routes().layer(layer).with_state(())
}

pub fn live_layer<V: KeyVerifier>(keys: &Keys, cache: CachedVerifier<V>) -> ApiKeyLayer<V> {
    ApiKeyLayer::new(keys.format.clone(), cache).environment(Environment::LIVE)
}

pub fn get_with(uri: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(uri);
    if let Some(value) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    builder.body(Body::empty()).unwrap()
}

pub fn bearer(key: &ApiKey) -> String {
    format!("Bearer {}", key.expose_secret())
}

/// Sends one request through a fresh clone of `app`.
pub async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

pub async fn body_json(response: Response<Body>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Polls `done` every 10 ms until it holds; panics after `limit` (generous: a loaded
/// machine is slow, never wrong). Returns how long it took.
pub async fn eventually(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if done().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `error.code` of a default error body.
pub async fn code_of(response: Response<Body>) -> String {
    body_json(response).await["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// This process's resident set, in MiB.
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096.0 / (1024.0 * 1024.0)
}
