//! Per-request cost of each auth variant as a ratio to a baseline measured right before
//! it, in alternation, over several runs. `cargo bench --bench request_path`
//! (`RUNS=9` for more runs, `ONLY=credits` for the pairs whose label contains it).
//! `ONLY=api_key_hit` includes the hit with usage recording and with metrics into a
//! Prometheus recorder, and prints their overhead in units of the bare router.
//! `PROFILE=api_key_hit BATCHES=200` runs one variant alone, for a profiler.
//!
//! Every variant builds the same fresh request (with an `Authorization` header) and
//! drives a clone of the service with `oneshot`, as a server does; routers are finished
//! with `.with_state(())` as `axum::serve` does. A ratio compares two services batch by
//! batch in alternation (41 batches of 500 requests each, the 10th percentile of each
//! side), so that the machine's slow phases hit both; the table shows the median of
//! the per-run ratios and their range.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Request};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::{Credits, MAX_CREDITS};
use tower_api_keys::manage::NewKey;
use tower_api_keys::scope::{Scope, Write};
use tower_api_keys::usage::UsageRecorder;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, RequireScope};
use tower_api_keys::{KeyManager, MemoryStore};

const BATCH: u32 = 500;
const SAMPLES: usize = 41;

/// Nanoseconds per request for one batch.
fn batch<S>(runtime: &tokio::runtime::Runtime, service: &S, authorization: &HeaderValue) -> Duration
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..BATCH {
            let response = service
                .clone()
                .oneshot(support::request(authorization))
                .await
                .unwrap();
            black_box(response);
        }
        start.elapsed() / BATCH
    })
}

fn p10(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 10].as_nanos() as f64
}

type Measure<'a> = Box<dyn Fn() -> Duration + 'a>;

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let format = KeyFormat::new("sk");
    let store = MemoryStore::new();
    let manager = KeyManager::new(
        store.clone(),
        CachedVerifier::new(store.clone()),
        format.clone(),
    );
    let key = runtime
        .block_on(manager.create_for_account(
            "acct",
            Environment::LIVE,
            NewKey::named("bench").scopes([Scope::Write]),
        ))
        .unwrap()
        .key;
    // A second key with a balance the bench never spends (leased once, then in memory).
    let metered = runtime
        .block_on(
            manager.create_for_account(
                "acct",
                Environment::LIVE,
                NewKey::named("metered")
                    .scopes([Scope::Write])
                    .credits(Credits::new(MAX_CREDITS)),
            ),
        )
        .unwrap()
        .key;
    let cache = CachedVerifier::builder(store.clone())
        .negative_ttl(Duration::from_secs(3600))
        .build();
    let layer = ApiKeyLayer::new(format.clone(), cache.clone()).environment(Environment::LIVE);
    // The same with usage recording, and with it and metrics into a real recorder
    // (Prometheus's: atomics behind handles registered when the cache and layer are
    // built; a local recorder, so that the other variants keep the no-op one).
    let usage = UsageRecorder::new();
    let with_usage = ApiKeyLayer::new(format.clone(), cache.clone())
        .environment(Environment::LIVE)
        .record_usage(usage.clone());
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metered_layer = metrics::with_local_recorder(&prometheus, || {
        let cache = CachedVerifier::builder(store.clone())
            .negative_ttl(Duration::from_secs(3600))
            .build();
        ApiKeyLayer::new(format.clone(), cache)
            .environment(Environment::LIVE)
            .record_usage(usage.clone())
    });

    let header = |value: String| HeaderValue::from_str(&value).unwrap();
    let hit = header(format!("Bearer {}", key.expose_secret()));
    let metered = header(format!("Bearer {}", metered.expose_secret()));
    let unknown = header(format!(
        "Bearer {}",
        format.generate(&Environment::LIVE).expose_secret()
    ));
    let mut typo = key.expose_secret().to_owned();
    typo.replace_range(10..11, if &typo[10..11] == "x" { "y" } else { "x" });
    let malformed = header(format!("Bearer {typo}"));
    let secret = b"bench secret, 32 bytes long.....";
    let jwt = header(format!("Bearer {}", support::JwtHs256::token(secret)));
    let static_token = header("Bearer static-token-of-similar-length-to-an-api-key-000".into());

    let scoped_router = || Router::new().route("/", get(|_: RequireScope<Write>| async { "ok" }));
    let bare = support::router().with_state(());

    // Around the whole router (ServiceBuilder) …
    let around_static = ServiceBuilder::new()
        .layer(support::StaticBearer::new(
            "static-token-of-similar-length-to-an-api-key-000",
        ))
        .service(bare.clone());
    let around_jwt = ServiceBuilder::new()
        .layer(support::JwtHs256::new(secret))
        .service(bare.clone());
    let around_key = ServiceBuilder::new()
        .layer(layer.clone())
        .service(bare.clone());
    let around_scope = ServiceBuilder::new()
        .layer(layer.clone())
        .service(scoped_router().with_state(()));
    let around_usage = ServiceBuilder::new()
        .layer(with_usage)
        .service(bare.clone());
    let around_metrics = ServiceBuilder::new()
        .layer(metered_layer)
        .service(bare.clone());
    // One in-process rate limit that the bench never exhausts.
    let unlimited = RateLimit::new("requests", u32::MAX, Duration::from_secs(1)).unwrap();
    let around_limited = ServiceBuilder::new()
        .layer(layer.clone().rate_limit(unlimited))
        .service(bare.clone());
    // … and with Router::layer.
    let inside_static = support::router()
        .layer(support::StaticBearer::new(
            "static-token-of-similar-length-to-an-api-key-000",
        ))
        .with_state(());
    let inside_jwt = support::router()
        .layer(support::JwtHs256::new(secret))
        .with_state(());
    let inside_key = support::router().layer(layer.clone()).with_state(());
    let inside_scope = scoped_router().layer(layer.clone()).with_state(());

    // Warm the cache (hit and negative entry) and check every variant answers as meant.
    for (service, auth, status) in [
        (&around_key, &hit, 200),
        (&around_key, &unknown, 401),
        (&around_key, &malformed, 401),
        (&around_limited, &hit, 200),
        (&around_key, &metered, 200),
        (&around_metrics, &hit, 200),
    ] {
        let response = runtime
            .block_on(service.clone().oneshot(support::request(auth)))
            .unwrap();
        assert_eq!(response.status(), status);
    }
    assert_eq!(cache.stats().verifier_calls, 3);
    assert!(
        prometheus
            .handle()
            .render()
            .contains("tower_api_keys_verifications_total{outcome=\"accepted\"} 1"),
        "the metrics variant records into its recorder"
    );

    let m = |service: &'static str| -> Measure<'_> {
        let (runtime, hit, unknown, malformed, jwt, static_token, metered) = (
            &runtime,
            &hit,
            &unknown,
            &malformed,
            &jwt,
            &static_token,
            &metered,
        );
        let (bare, around_static, around_jwt, around_key, around_scope) = (
            &bare,
            &around_static,
            &around_jwt,
            &around_key,
            &around_scope,
        );
        let (inside_static, inside_jwt, inside_key, inside_scope) =
            (&inside_static, &inside_jwt, &inside_key, &inside_scope);
        let around_limited = &around_limited;
        let (around_usage, around_metrics) = (&around_usage, &around_metrics);
        match service {
            "bare" => Box::new(move || batch(runtime, bare, hit)),
            "static_bearer" => Box::new(move || batch(runtime, around_static, static_token)),
            "jwt_hs256" => Box::new(move || batch(runtime, around_jwt, jwt)),
            "api_key_hit" => Box::new(move || batch(runtime, around_key, hit)),
            "api_key_hit_scope" => Box::new(move || batch(runtime, around_scope, hit)),
            "api_key_hit_rate_limit" => Box::new(move || batch(runtime, around_limited, hit)),
            "api_key_hit_credits" => Box::new(move || batch(runtime, around_key, metered)),
            "api_key_hit_usage" => Box::new(move || batch(runtime, around_usage, hit)),
            "api_key_hit_metrics" => Box::new(move || batch(runtime, around_metrics, hit)),
            "api_key_malformed" => Box::new(move || batch(runtime, around_key, malformed)),
            "api_key_unknown_cached" => Box::new(move || batch(runtime, around_key, unknown)),
            "static_bearer (Router::layer)" => {
                Box::new(move || batch(runtime, inside_static, static_token))
            }
            "jwt_hs256 (Router::layer)" => Box::new(move || batch(runtime, inside_jwt, jwt)),
            "api_key_hit (Router::layer)" => Box::new(move || batch(runtime, inside_key, hit)),
            "api_key_hit_scope (Router::layer)" => {
                Box::new(move || batch(runtime, inside_scope, hit))
            }
            "api_key_malformed (Router::layer)" => {
                Box::new(move || batch(runtime, inside_key, malformed))
            }
            "api_key_unknown_cached (Router::layer)" => {
                Box::new(move || batch(runtime, inside_key, unknown))
            }
            other => panic!("unknown variant {other}"),
        }
    };

    // (label, variant, baseline): each ratio is variant / baseline, measured back to back.
    let pairs: &[(&str, &str, &str)] = &[
        ("api_key_hit / bare (around router)", "api_key_hit", "bare"),
        (
            "api_key_hit / bare (Router::layer)",
            "api_key_hit (Router::layer)",
            "bare",
        ),
        (
            "api_key_hit / static_bearer",
            "api_key_hit",
            "static_bearer",
        ),
        ("api_key_hit / jwt_hs256", "api_key_hit", "jwt_hs256"),
        (
            "api_key_hit_rate_limit / api_key_hit",
            "api_key_hit_rate_limit",
            "api_key_hit",
        ),
        (
            "api_key_hit_rate_limit / bare (around router)",
            "api_key_hit_rate_limit",
            "bare",
        ),
        (
            "api_key_hit_credits / api_key_hit",
            "api_key_hit_credits",
            "api_key_hit",
        ),
        (
            "api_key_hit_credits / bare (around router)",
            "api_key_hit_credits",
            "bare",
        ),
        (
            "api_key_hit_usage / api_key_hit",
            "api_key_hit_usage",
            "api_key_hit",
        ),
        (
            "api_key_hit_metrics / api_key_hit",
            "api_key_hit_metrics",
            "api_key_hit",
        ),
        (
            "api_key_hit_metrics / api_key_hit_usage",
            "api_key_hit_metrics",
            "api_key_hit_usage",
        ),
        (
            "api_key_hit_metrics / bare (around router)",
            "api_key_hit_metrics",
            "bare",
        ),
        (
            "static_bearer / bare (around router)",
            "static_bearer",
            "bare",
        ),
        ("jwt_hs256 / bare (around router)", "jwt_hs256", "bare"),
        (
            "api_key_hit_scope / bare (around router)",
            "api_key_hit_scope",
            "bare",
        ),
        (
            "api_key_malformed / bare (around router)",
            "api_key_malformed",
            "bare",
        ),
        (
            "api_key_unknown_cached / bare (around router)",
            "api_key_unknown_cached",
            "bare",
        ),
        (
            "static_bearer / bare (Router::layer)",
            "static_bearer (Router::layer)",
            "bare",
        ),
        (
            "jwt_hs256 / bare (Router::layer)",
            "jwt_hs256 (Router::layer)",
            "bare",
        ),
        (
            "api_key_hit_scope / bare (Router::layer)",
            "api_key_hit_scope (Router::layer)",
            "bare",
        ),
        (
            "api_key_malformed / bare (Router::layer)",
            "api_key_malformed (Router::layer)",
            "bare",
        ),
        (
            "api_key_unknown_cached / bare (Router::layer)",
            "api_key_unknown_cached (Router::layer)",
            "bare",
        ),
    ];
    // `PROFILE=api_key_hit BATCHES=200`: that variant alone, for a profiler
    // (`perf record`, `valgrind --tool=callgrind`): BATCHES batches of 500 requests.
    if let Ok(variant) = std::env::var("PROFILE") {
        let batches: u32 = std::env::var("BATCHES")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(200);
        let run = m(Box::leak(variant.clone().into_boxed_str()));
        let mut total = Duration::ZERO;
        for _ in 0..batches {
            total += run();
        }
        println!(
            "{variant}: {} requests, {:.0} ns per request",
            batches * BATCH,
            total.as_nanos() as f64 / f64::from(batches)
        );
        return;
    }
    // `ONLY=rate_limit` keeps the pairs whose label contains it.
    let only = std::env::var("ONLY").unwrap_or_default();
    let pairs: Vec<_> = pairs
        .iter()
        .filter(|(label, _, _)| label.contains(only.as_str()))
        .collect();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let mut bare_ns = Vec::new();
    for run in 0..runs {
        for (i, (_, variant, baseline)) in pairs.iter().enumerate() {
            let (base, value) = (m(baseline), m(variant));
            let (mut bases, mut values) = (Vec::new(), Vec::new());
            for _ in 0..SAMPLES {
                bases.push(base());
                values.push(value());
            }
            let (base, value) = (p10(bases), p10(values));
            if *baseline == "bare" {
                bare_ns.push(base);
            }
            ratios[i].push(value / base);
        }
        eprintln!("run {}/{runs} done", run + 1);
    }

    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values[values.len() / 2]
    };
    println!(
        "bare router: {:.0} ns per request (median of {} measurements)",
        median(&mut bare_ns),
        bare_ns.len()
    );
    println!();
    println!("| ratio | median | range over {runs} runs |");
    println!("|---|---|---|");
    // Metrics and usage recording on a hit, in units of the bare router: per run,
    // (metrics / hit − 1) × (hit / bare).
    let at = |label: &str| pairs.iter().position(|(l, _, _)| *l == label);
    let overhead: Option<Vec<f64>> = match (
        at("api_key_hit_metrics / api_key_hit"),
        at("api_key_hit / bare (around router)"),
    ) {
        (Some(metrics), Some(hit)) => Some(
            ratios[metrics]
                .iter()
                .zip(&ratios[hit])
                .map(|(metrics, hit)| (metrics - 1.0) * hit)
                .collect(),
        ),
        _ => None,
    };
    for (i, (label, _, _)) in pairs.iter().enumerate() {
        let values = &mut ratios[i];
        let mid = median(values);
        println!(
            "| `{label}` | {mid:.2} | {:.2}–{:.2} |",
            values[0],
            values[values.len() - 1]
        );
    }
    if let Some(mut overhead) = overhead {
        let mid = median(&mut overhead);
        println!();
        println!(
            "metrics + usage recording on a hit: {mid:+.3}× bare (median; range {:+.3} to {:+.3})",
            overhead[0],
            overhead[overhead.len() - 1]
        );
    }
}
