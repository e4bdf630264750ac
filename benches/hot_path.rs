//! The request path on a cache hit against a bare router, in one run.
//!
//! `cargo bench --bench hot_path`. Each variant builds a fresh request and drives the
//! service with `oneshot`; routers are finished with `.with_state(())` as
//! `axum::serve` does. Compare the variants' times to `bare` from the same run.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_keys::key::{Environment, KeyFormat, KeyHash};
use tower_api_keys::store::{KeyStore, MemoryStore, NewKey};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

fn request(authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::get("/");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Body::empty()).unwrap()
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let key = runtime
        .block_on(store.create(&format, NewKey::new("acct", "bench", Environment::LIVE)))
        .unwrap()
        .key;
    let auth = format!("Bearer {}", key.expose_secret());
    let layer = ApiKeyLayer::new(format.clone(), CachedVerifier::new(store));

    let bare = Router::new()
        .route("/", get(|| async { "ok" }))
        .with_state(());
    let around = ServiceBuilder::new()
        .layer(layer.clone())
        .service(bare.clone());
    let inside = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
        .with_state(());
    // Warm the cache.
    runtime
        .block_on(around.clone().oneshot(request(Some(&auth))))
        .unwrap();

    let mut group = c.benchmark_group("request");
    group.bench_function("bare", |b| {
        b.iter(|| {
            runtime
                .block_on(bare.clone().oneshot(request(None)))
                .unwrap()
        })
    });
    group.bench_function("api_key_hit (around router)", |b| {
        b.iter(|| {
            runtime
                .block_on(around.clone().oneshot(request(Some(&auth))))
                .unwrap()
        })
    });
    group.bench_function("api_key_hit (Router::layer)", |b| {
        b.iter(|| {
            runtime
                .block_on(inside.clone().oneshot(request(Some(&auth))))
                .unwrap()
        })
    });
    group.finish();

    let secret = key.expose_secret();
    c.bench_function("key parse + checksum", |b| {
        b.iter(|| format.parse(std::hint::black_box(secret)).is_ok())
    });
    c.bench_function("sha256 of key", |b| {
        b.iter(|| KeyHash::of(std::hint::black_box(secret)))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
