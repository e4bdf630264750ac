//! Fixtures for credits and rate limits: keys given balances and limits through the
//! store, a router with route costs, many requests at once, and (feature `redis`) a
//! Redis of the test's own (a random key prefix) or a visible skip.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_api_keys::key::{ApiKey, Environment, KeyFormat, KeyId};
use tower_api_keys::meter::Cost;
use tower_api_keys::store::{KeyChanges, KeyStore};

use super::create::{NewKey, StoreForTests as _};

/// A key of `account` (live, no scopes), created through the manager.
pub async fn new_key<S: KeyStore + Clone>(store: &S, account: &str, name: &str) -> (KeyId, ApiKey) {
    let created = store
        .create(
            &KeyFormat::new("sk"),
            NewKey::new(account, name, Environment::LIVE),
        )
        .await
        .unwrap();
    (created.info.id, created.key)
}

/// Changes a key through the store directly (not the manager).
pub async fn change<S: KeyStore>(store: &S, account: &str, id: &KeyId, changes: KeyChanges) {
    store.update(account, id, &changes).await.unwrap();
}

/// What the store holds of a key's balance now.
pub async fn key_remaining<S: KeyStore>(store: &S, account: &str, id: &KeyId) -> u64 {
    store
        .get(account, id)
        .await
        .unwrap()
        .credits
        .expect("the key has a balance")
        .remaining
}

/// What the store holds of an account's balance now.
pub async fn account_remaining<S: KeyStore>(store: &S, account: &str) -> u64 {
    store
        .account_limits(account)
        .await
        .unwrap()
        .credits
        .expect("the account has a balance")
        .remaining
}

/// `GET /cheap` (the default cost, 1), `POST /items` (cost 5), `GET /free` (cost 0).
pub fn priced_routes() -> Router {
    Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .route(
            "/items",
            post(|| async { "created" }).route_layer(Cost::new(5)),
        )
        .route("/free", get(|| async { "free" }).route_layer(Cost::new(0)))
}

pub fn request(method: &str, uri: &str, key: &ApiKey) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose_secret()),
        )
        .body(Body::empty())
        .unwrap()
}

/// A response as the tests look at it: status, `error.code` (empty for a success), and
/// the rate-limit fields.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: StatusCode,
    pub code: String,
    pub headers: http::HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn seen(response: http::Response<Body>) -> Seen {
    let status = response.status();
    let headers = response.headers().clone();
    let code = if status.is_success() {
        String::new()
    } else {
        super::code_of(response).await
    };
    Seen {
        status,
        code,
        headers,
    }
}

/// One request through a clone of `app`.
pub async fn call(app: &Router, request: Request<Body>) -> Seen {
    seen(app.clone().oneshot(request).await.unwrap()).await
}

/// `n` requests at once, request `i` to `apps[i % apps.len()]`, each a tokio task:
/// every response, in request order.
pub async fn all_at_once(
    apps: &[Router],
    n: usize,
    request: impl Fn(usize) -> Request<Body>,
) -> Vec<Seen> {
    // Built first, so that the tasks start together.
    let requests: Vec<_> = (0..n)
        .map(|i| (apps[i % apps.len()].clone(), request(i)))
        .collect();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(app, request)| {
            let start = std::sync::Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                seen(app.oneshot(request).await.unwrap()).await
            })
        })
        .collect();
    start.wait().await;
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// How many responses had each `(status, code)`.
pub fn tally(responses: &[Seen]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for response in responses {
        *counts
            .entry((response.status.as_u16(), response.code.clone()))
            .or_default() += 1;
    }
    counts
}

/// A name no other test run uses (Redis prefixes).
pub fn unique(name: &str) -> String {
    format!("tak_test_{name}_{}", &KeyId::generate().as_str()[3..15])
}

/// A deadline for polling: generous (a loaded machine is slow, never wrong).
pub fn deadline(limit: Duration) -> std::time::Instant {
    std::time::Instant::now() + limit
}

/// Redis at `REDIS_URL`, or `None` (and a skip recorded, see [`super::skips`]) when it
/// is not set or Redis does not answer `PING` within a second. With
/// `TOWER_API_KEYS_REQUIRE_REDIS=1` a missing or unreachable Redis fails the test.
#[cfg(feature = "redis")]
pub async fn redis_url(test: &str) -> Option<String> {
    let required = std::env::var("TOWER_API_KEYS_REQUIRE_REDIS").is_ok_and(|v| v == "1");
    let url = match std::env::var("REDIS_URL") {
        Ok(url) if url.starts_with("redis") => url,
        _ => {
            assert!(
                !required,
                "REDIS_URL must point to Redis with TOWER_API_KEYS_REQUIRE_REDIS=1"
            );
            super::skips::skip(test, "set REDIS_URL=redis://… to run it");
            return None;
        }
    };
    let ping = async {
        let mut connection = redis_connection(&url).await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    let why = match tokio::time::timeout(Duration::from_secs(1), ping).await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 1 s".to_owned(),
    };
    assert!(!required, "Redis at REDIS_URL is unreachable: {why}");
    super::skips::skip(test, &format!("Redis unreachable ({why})"));
    None
}

/// A connection of the test's own, straight to Redis.
#[cfg(feature = "redis")]
pub async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The Redis keys under `prefix`.
#[cfg(feature = "redis")]
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut connection = redis_connection(url).await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Deletes the Redis keys under `prefix`.
#[cfg(feature = "redis")]
pub async fn redis_cleanup(url: &str, prefix: &str) {
    let keys = redis_keys(url, prefix).await;
    if keys.is_empty() {
        return;
    }
    let mut connection = redis_connection(url).await.unwrap();
    let _: usize = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .unwrap();
}
