//! The metrics of `tower_api_keys::metrics`, counted exactly for known traffic (through a
//! layer with a debugging recorder, and over HTTP from the quickstart's `GET /metrics`),
//! and the once-per-incident logging of backend faults.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower_api_keys::CachedVerifier;
use tower_api_keys::key::{ApiKey, Environment, KeyId};
use tower_api_keys::metrics::{
    CACHE, COST_OUTCOMES, INVALIDATIONS, OUTCOMES, USAGE_FLUSHES, USAGE_ROWS, VERIFICATIONS,
    VERIFIER_SECONDS,
};
use tower_api_keys::usage::UsageRecorder;

use support::{Counting, app, bearer, body_json, code_of, get_with, keys, live_layer, send};

/// Every metric in a snapshot: name, labels, value.
type Sample = (String, Vec<(String, String)>, DebugValue);

fn samples(snapshotter: &Snapshotter) -> Vec<Sample> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

/// The value of counter `name{label=value}` (0 if it was never registered).
fn counter(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> u64 {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && matches_label(labels, label))
        .map(|(_, _, value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// How many values histogram `name{label=value}` holds.
fn histogram_count(samples: &[Sample], name: &str, label: (&str, &str)) -> usize {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && matches_label(labels, Some(label)))
        .map(|(_, _, value)| match value {
            DebugValue::Histogram(values) => values.len(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn matches_label(labels: &[(String, String)], label: Option<(&str, &str)>) -> bool {
    match label {
        None => labels.is_empty(),
        Some((key, value)) => labels == [(key.to_owned(), value.to_owned())],
    }
}

/// The secrets and identifiers that must never be part of a metric (or a log line).
fn forbidden(key: &ApiKey, key_id: &str, account_id: &str) -> Vec<String> {
    vec![
        key.expose_secret().to_owned(),
        key.hash().to_hex(),
        key_id.to_owned(),
        account_id.to_owned(),
    ]
}

#[tokio::test]
async fn verifications_cache_lookups_invalidations_and_flushes_are_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The handles bind to the recorder in force when the cache and layer are built.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let keys = keys().await;
    let cache = CachedVerifier::new(keys.store.clone());
    let usage = UsageRecorder::new();
    let app = app(live_layer(&keys, cache.clone()).record_usage(usage.clone()));

    // 3 accepted (a miss, then hits), 2 unknown keys (a miss, then a negative hit), 1
    // without a key.
    let read = bearer(&keys.read);
    let first = send(&app, get_with("/whoami", Some(&read))).await;
    assert_eq!(first.status(), StatusCode::OK);
    let me = body_json(first).await;
    for _ in 0..2 {
        let response = send(&app, get_with("/whoami", Some(&read))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let unknown = bearer(&keys.format.generate(&Environment::LIVE));
    for _ in 0..2 {
        let response = send(&app, get_with("/whoami", Some(&unknown))).await;
        assert_eq!(code_of(response).await, "invalid_api_key");
    }
    let response = send(&app, get_with("/whoami", None)).await;
    assert_eq!(code_of(response).await, "missing_api_key");

    assert_eq!(usage.flush(&keys.store).await.unwrap(), 1);
    let (key_id, account_id) = (me["key_id"].as_str().unwrap(), "acct_1");
    cache.invalidate_key_id(&KeyId::new(key_id));
    cache.invalidate_account(account_id);
    cache.invalidate_all();

    let all = samples(&snapshotter);
    let outcome = |code| counter(&all, VERIFICATIONS, Some(("outcome", code)));
    assert_eq!(outcome("accepted"), 3);
    assert_eq!(outcome("invalid_api_key"), 2);
    assert_eq!(outcome("missing_api_key"), 1);
    assert_eq!(
        OUTCOMES.iter().map(|code| outcome(code)).sum::<u64>(),
        6,
        "and no other outcome"
    );
    let cached = |result| counter(&all, CACHE, Some(("result", result)));
    assert_eq!(
        [
            cached("miss"),
            cached("hit"),
            cached("negative_hit"),
            cached("stale")
        ],
        [2, 2, 1, 0]
    );
    let invalidated = |cause| counter(&all, INVALIDATIONS, Some(("cause", cause)));
    assert_eq!(
        [
            invalidated("key"),
            invalidated("account"),
            invalidated("all")
        ],
        [1, 1, 1]
    );
    assert_eq!(histogram_count(&all, VERIFIER_SECONDS, ("result", "ok")), 2);
    assert_eq!(
        histogram_count(&all, VERIFIER_SECONDS, ("result", "error")),
        0
    );
    assert_eq!(counter(&all, USAGE_FLUSHES, Some(("result", "ok"))), 1);
    assert_eq!(counter(&all, USAGE_FLUSHES, Some(("result", "error"))), 0);
    assert_eq!(counter(&all, USAGE_ROWS, None), 1);

    // Names and labels come from fixed sets: no key, hash or id in any of them.
    let secrets = forbidden(&keys.read, key_id, account_id);
    let allowed: Vec<&str> = OUTCOMES
        .iter()
        .chain(COST_OUTCOMES)
        .copied()
        .chain([
            "hit",
            "negative_hit",
            "stale",
            "miss",
            "key",
            "account",
            "all",
            "ok",
            "error",
            "timeout",
        ])
        .collect();
    for (name, labels, _) in &all {
        assert!(name.starts_with("tower_api_keys_"), "{name}");
        for (label, value) in labels {
            assert!(
                ["outcome", "result", "cause"].contains(&label.as_str()),
                "{name}: {label}"
            );
            assert!(
                allowed.contains(&value.as_str()),
                "{name}{{{label}={value}}}"
            );
        }
        let text = format!("{name}{labels:?}");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{text} holds {secret}");
        }
    }
}

#[tokio::test]
async fn a_stale_serve_counts_as_stale_and_its_refresh_as_a_verifier_call() {
    use std::time::Duration;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let keys = keys().await;
    let cache = CachedVerifier::builder(keys.store.clone())
        .positive_ttl(Duration::from_millis(50))
        .build();
    let hash = keys.read.hash();
    assert!(cache.lookup(&hash).await.unwrap().is_some(), "a miss");
    assert!(cache.lookup(&hash).await.unwrap().is_some(), "a hit");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(cache.lookup(&hash).await.unwrap().is_some(), "served stale");
    // A snapshot drains what it reads: the counters now, the refresh's call later.
    let first = samples(&snapshotter);
    let cached = |result| counter(&first, CACHE, Some(("result", result)));
    assert_eq!([cached("miss"), cached("hit"), cached("stale")], [1, 1, 1]);
    let mut timed = histogram_count(&first, VERIFIER_SECONDS, ("result", "ok"));
    support::eventually("the refresh", Duration::from_secs(10), async || {
        timed += histogram_count(&samples(&snapshotter), VERIFIER_SECONDS, ("result", "ok"));
        timed == 2
    })
    .await;
}

/// A writer the test reads back: what a `fmt` subscriber printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn at(&self, level: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| line.split_whitespace().next() == Some(level))
            .collect()
    }
}

#[tokio::test]
async fn fifty_failing_verifications_log_one_error_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let cache = CachedVerifier::new(verifier.clone());
    let app = app(live_layer(&keys, cache.clone()));
    let read = bearer(&keys.read);

    verifier.fail(true);
    for _ in 0..50 {
        let response = send(&app, get_with("/whoami", Some(&read))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(verifier.calls(), 50, "failures are not cached");
    let errors = captured.at("ERROR");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("API key verifier failed"), "{errors:?}");
    let quiet = captured
        .at("DEBUG")
        .into_iter()
        .filter(|line| line.contains("API key verifier failed"))
        .count();
    assert!(quiet >= 49, "the others at debug level: {quiet}");

    // A success ends the incident (said once); the next failure opens a new one.
    verifier.fail(false);
    let response = send(&app, get_with("/whoami", Some(&read))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let warnings = captured.at("WARN");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("answers again"), "{warnings:?}");
    cache.invalidate_all();
    verifier.fail(true);
    for _ in 0..5 {
        let response = send(&app, get_with("/whoami", Some(&read))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(captured.at("ERROR").len(), 2, "one per incident");

    let all = samples(&snapshotter);
    assert_eq!(
        counter(&all, VERIFICATIONS, Some(("outcome", "auth_unavailable"))),
        55
    );
    assert_eq!(
        histogram_count(&all, VERIFIER_SECONDS, ("result", "error")),
        55
    );
    assert_eq!(histogram_count(&all, VERIFIER_SECONDS, ("result", "ok")), 1);

    // And no line holds the key or its hash.
    let lines = captured.lines();
    assert!(lines.len() > 55, "the debug lines were captured");
    for line in &lines {
        assert!(!line.contains(keys.read.expose_secret()), "{line}");
        assert!(!line.contains(&keys.read.hash().to_hex()), "{line}");
    }
}

#[tokio::test]
async fn metrics_without_a_recorder_are_no_ops() {
    // No recorder on this thread (and none global in this binary): the layer works.
    let keys = keys().await;
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    let response = send(&app, get_with("/whoami", Some(&bearer(&keys.read)))).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_checks_are_timed_and_an_outage_logs_one_error_line() {
    use std::time::Duration;
    use tower_api_keys::limit::RateLimit;
    use tower_api_keys::limit::redis::RedisLimiter;
    use tower_api_keys::metrics::REDIS_SECONDS;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let keys = keys().await;
    let read = bearer(&keys.read);
    let hourly = RateLimit::new("requests", 1_000, Duration::from_secs(3_600)).unwrap();
    let instance = |limiter: &RedisLimiter| {
        let layer = live_layer(&keys, CachedVerifier::new(keys.store.clone()))
            .rate_limit(hourly.clone())
            .shared_limits(limiter.clone());
        app(layer)
    };

    // Nothing listens on port 1: every check Redis is asked fails; the requests pass on
    // the in-process limits. Redis is asked again once a second, not per request.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let down = metrics::with_local_recorder(&recorder, || {
        RedisLimiter::new("redis://127.0.0.1:1")
            .unwrap()
            .prefix("tak_test_metrics_down")
    });
    let app_down = instance(&down);
    for _ in 0..5 {
        let response = send(&app_down, get_with("/whoami", Some(&read))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let all = samples(&snapshotter);
    let failed = histogram_count(&all, REDIS_SECONDS, ("result", "error"))
        + histogram_count(&all, REDIS_SECONDS, ("result", "timeout"));
    assert!((1..=5).contains(&failed), "{failed} failed checks timed");
    assert_eq!(histogram_count(&all, REDIS_SECONDS, ("result", "ok")), 0);
    let errors = captured.at("ERROR");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("Redis rate limiter failed"),
        "{errors:?}"
    );

    // A Redis that answers: one timed check per request.
    let Some(url) = support::limits::redis_url("redis_checks_are_timed").await else {
        return;
    };
    let prefix = support::limits::unique("metrics");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let up = metrics::with_local_recorder(&recorder, || {
        RedisLimiter::new(&url).unwrap().prefix(&prefix)
    });
    let app_up = instance(&up);
    for _ in 0..3 {
        let response = send(&app_up, get_with("/whoami", Some(&read))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    support::limits::redis_cleanup(&url, &prefix).await;
    let all = samples(&snapshotter);
    assert_eq!(histogram_count(&all, REDIS_SECONDS, ("result", "ok")), 3);
    assert_eq!(histogram_count(&all, REDIS_SECONDS, ("result", "error")), 0);
}

#[cfg(all(feature = "axum", feature = "sqlite"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_serves_its_metrics_in_the_prometheus_text_format() {
    use support::example_server::ExampleServer;

    let server = ExampleServer::start("quickstart").await;
    let [admin, read] = ["ADMIN_KEY", "READ_KEY"].map(|n| server.credential(n));
    let mut me = serde_json::Value::Null;
    for _ in 0..3 {
        let reply = server.send("GET", "/v1/whoami", Some(&read), &[], "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        me = reply.json();
    }
    for bad in [
        "sk_live_not-a-key",
        "sk_live_0000000000000000000000000000000000",
    ] {
        let reply = server.send("GET", "/v1/whoami", Some(bad), &[], "").await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "invalid_api_key".into())
        );
    }
    let reply = server.send("GET", "/v1/whoami", None, &[], "").await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "missing_api_key".into())
    );

    // Served without a key: the route is outside the key layer.
    let scrape = server.send("GET", "/metrics", None, &[], "").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(
        scrape.head.contains("content-type: text/plain"),
        "{}",
        scrape.head
    );
    let text = &scrape.body;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let verifications = |outcome: &str| {
        value(&format!(
            "tower_api_keys_verifications_total{{outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(verifications("accepted"), 3.0);
    assert_eq!(verifications("invalid_api_key"), 2.0);
    assert_eq!(verifications("missing_api_key"), 1.0);
    assert_eq!(verifications("api_key_revoked"), 0.0, "registered at zero");
    assert!(
        text.contains("# TYPE tower_api_keys_verifications_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# HELP tower_api_keys_verifications_total "),
        "{text}"
    );
    // The malformed keys never reached the cache: three lookups, at least one a miss.
    let cache = |result: &str| {
        value(&format!(
            "tower_api_keys_cache_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!(
        cache("hit") + cache("miss") + cache("negative_hit") + cache("stale"),
        3.0
    );
    assert!(cache("miss") >= 1.0);
    assert!(
        value("tower_api_keys_verifier_seconds_count{result=\"ok\"}") >= 1.0,
        "{text}"
    );

    // No key, hash, key id or account id anywhere in the scrape; every label is from
    // the fixed sets.
    let key_id = me["key_id"].as_str().unwrap();
    let account_id = me["account_id"].as_str().unwrap();
    for key in [&admin, &read] {
        for secret in forbidden(&ApiKey::from_secret(key.clone()), key_id, account_id) {
            assert!(!text.contains(&secret), "the scrape holds {secret}");
        }
    }
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        if line.is_empty() {
            continue;
        }
        assert!(line.starts_with("tower_api_keys_"), "{line}");
        if let Some((_, labels)) = line.split_once('{') {
            let labels = labels.split_once('}').unwrap().0;
            for pair in labels.split(',') {
                let (label, _) = pair.split_once('=').unwrap();
                assert!(
                    ["outcome", "result", "cause", "quantile"].contains(&label),
                    "{line}"
                );
            }
        }
    }
    let mut server = server;
    assert!(server.interrupt().success());
}
