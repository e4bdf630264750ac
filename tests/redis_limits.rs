//! Rate limits shared through Redis (`RedisLimiter`, feature `redis`): two instances
//! share one quota (overshoot at most 1 %), and an outage of Redis (a TCP proxy in the
//! test, cut and restored) falls back to in-process limits without refusing anything,
//! then goes back to the quota Redis kept. Each test has its own key prefix; without
//! `REDIS_URL` (or with Redis unreachable) the tests skip with a note, unless
//! `TOWER_API_KEYS_REQUIRE_REDIS=1`.
#![cfg(feature = "redis")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::limits::{
    all_at_once, call, deadline, new_key, priced_routes, redis_cleanup, redis_connection,
    redis_keys, redis_url, request, tally, unique,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_api_keys::key::KeyFormat;
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::redis::RedisLimiter;
use tower_api_keys::store::MemoryStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

fn hourly(limit: u32) -> RateLimit {
    RateLimit::new("requests", limit, Duration::from_secs(3_600)).unwrap()
}

/// An instance: its own cache and layer over `store`, limits shared through `limiter`.
fn instance(store: &MemoryStore, limit: &RateLimit, limiter: &RedisLimiter) -> axum::Router {
    let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(store.clone()))
        .rate_limit(limit.clone())
        .shared_limits(limiter.clone());
    priced_routes().layer(layer)
}

/// The units Redis holds as spent of `limit` under `key` (from its TAT and Redis's own
/// clock).
async fn spent_in_redis(url: &str, key: &str, limit: &RateLimit) -> u64 {
    let mut connection = redis_connection(url).await.unwrap();
    let tat: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut connection)
        .await
        .unwrap();
    let now = seconds * 1_000_000 + micros;
    let interval = u64::from(limit.window_seconds) * 1_000_000 / u64::from(limit.limit);
    tat.unwrap_or(0).saturating_sub(now).div_ceil(interval)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_quota_through_redis() {
    let Some(url) = redis_url("two_instances_share_one_quota_through_redis").await else {
        return;
    };
    let prefix = unique("two");
    let store = MemoryStore::new();
    let (id, key) = new_key(&store, "acct_redis", "shared").await;
    let limit = hourly(200);
    // A generous timeout: this test is about sharing, not about a loaded machine's
    // latency (a timeout would fall back to each instance's own quota).
    let limiters: Vec<RedisLimiter> = (0..2)
        .map(|_| {
            RedisLimiter::new(&url)
                .unwrap()
                .prefix(&prefix)
                .timeout(Duration::from_secs(5))
        })
        .collect();
    let apps: Vec<axum::Router> = limiters
        .iter()
        .map(|limiter| instance(&store, &limit, limiter))
        .collect();

    let responses = all_at_once(&apps, 600, |_| request("GET", "/cheap", &key)).await;
    let counts = tally(&responses);
    let passed = counts.get(&(200, String::new())).copied().unwrap_or(0);
    let per_instance: Vec<usize> = (0..2)
        .map(|i| {
            responses
                .iter()
                .skip(i)
                .step_by(2)
                .filter(|seen| seen.status == 200)
                .count()
        })
        .collect();
    println!("{passed} of 600 passed (limit 200), per instance {per_instance:?}: {counts:?}");
    assert!(
        limiters.iter().all(|limiter| !limiter.is_down()),
        "Redis answered"
    );
    assert!(
        (200..=202).contains(&passed),
        "{passed} passed: overshoot above 1 %"
    );
    assert_eq!(
        counts.get(&(429, "rate_limited".to_owned())).copied(),
        Some(600 - passed),
        "every other request is 429: {counts:?}"
    );

    let refused = responses.iter().find(|seen| seen.status == 429).unwrap();
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=18).contains(&retry), "one unit per 18 s: {retry}");
    let state = refused.header("ratelimit").unwrap();
    let reset: u64 = state
        .strip_prefix(r#""requests";r=0;t="#)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{state}"));
    assert!((3_500..=3_600).contains(&reset), "{state}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""requests";q=200;w=3600"#)
    );
    // One quota, in Redis, under the test's prefix.
    let redis_key = format!("{prefix}:0:{id}:requests");
    assert_eq!(
        redis_keys(&url, &prefix).await,
        std::slice::from_ref(&redis_key)
    );
    let spent = spent_in_redis(&url, &redis_key, &limit).await;
    assert!((199..=200).contains(&spent), "{spent}");
    redis_cleanup(&url, &prefix).await;
}

/// A TCP proxy to Redis that can be cut (every connection dropped, new ones closed at
/// once) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    open: Arc<AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(watch::channel(true).0);
        let open = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let (up, open) = (Arc::clone(&up), Arc::clone(&open));
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut state = up.subscribe();
                    if !*state.borrow_and_update() {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let open = Arc::clone(&open);
                    open.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = state.wait_for(|up| !*up) => {}
                            }
                        }
                        drop(client);
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Proxy {
            addr,
            up,
            open,
            accepting,
        }
    }

    /// `url` with the proxy in place of Redis's host and port.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{}/{path}", self.addr)
    }

    /// Drops every connection, closes new ones; returns when none is open.
    async fn cut(&self) {
        self.up.send_replace(false);
        let until = deadline(Duration::from_secs(5));
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < until,
                "the proxy's connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.up.send_replace(false);
    }
}

fn upstream_of(url: &str) -> (String, u16) {
    match redis::Client::open(url)
        .unwrap()
        .get_connection_info()
        .addr()
    {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => panic!("REDIS_URL is not plain TCP: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_in_process_and_comes_back_to_the_shared_quota() {
    let test = "a_redis_outage_falls_back_in_process_and_comes_back_to_the_shared_quota";
    let Some(url) = redis_url(test).await else {
        return;
    };
    let prefix = unique("outage");
    let proxy = Proxy::start(upstream_of(&url)).await;
    // Longer than the default 100 ms, so that only the outage makes it fall back.
    let limiter = RedisLimiter::new(&proxy.url(&url))
        .unwrap()
        .prefix(&prefix)
        .timeout(Duration::from_secs(1));
    let store = MemoryStore::new();
    let (id, key) = new_key(&store, "acct_outage", "a").await;
    let (_, probe) = new_key(&store, "acct_outage", "probe").await;
    let limit = hourly(5);
    let app = instance(&store, &limit, &limiter);
    let redis_key = format!("{prefix}:0:{id}:requests");

    // Through Redis: three pass, and Redis holds them.
    for left in [4, 3, 2] {
        let seen = call(&app, request("GET", "/cheap", &key)).await;
        assert_eq!(seen.status, 200, "{}", seen.code);
        let state = seen.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!(r#""requests";r={left};"#)),
            "{state}"
        );
    }
    assert!(!limiter.is_down());
    assert_eq!(
        redis_keys(&url, &prefix).await,
        std::slice::from_ref(&redis_key)
    );
    assert_eq!(spent_in_redis(&url, &redis_key, &limit).await, 3);

    // Redis gone: requests still pass, on the in-process fallback (its own quota).
    proxy.cut().await;
    for i in 0..2 {
        let seen = call(&app, request("GET", "/cheap", &key)).await;
        assert_eq!(seen.status, 200, "request {i} in the outage: {}", seen.code);
        assert!(limiter.is_down(), "request {i} in the outage");
    }
    assert_eq!(
        spent_in_redis(&url, &redis_key, &limit).await,
        3,
        "Redis did not see the requests of the outage"
    );

    // Redis back: within the retry delay (1 s) the limiter asks it again. Polled with
    // another key, so that the key under test spends nothing meanwhile.
    proxy.restore();
    let started = Instant::now();
    let until = deadline(Duration::from_secs(5));
    loop {
        let seen = call(&app, request("GET", "/cheap", &probe)).await;
        assert!(
            seen.status == 200 || seen.status == 429,
            "never an error in the outage: {} {}",
            seen.status,
            seen.code
        );
        if !limiter.is_down() {
            break;
        }
        assert!(
            Instant::now() < until,
            "Redis was not used again within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("Redis used again after {:?}", started.elapsed());

    // The quota is the one Redis kept: 3 of 5 spent, so two more, then 429.
    for left in [1, 0] {
        let seen = call(&app, request("GET", "/cheap", &key)).await;
        assert_eq!(seen.status, 200, "{}", seen.code);
        let state = seen.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!(r#""requests";r={left};"#)),
            "{state}"
        );
    }
    let refused = call(&app, request("GET", "/cheap", &key)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code, "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""requests";q=5;w=3600"#)
    );
    assert!(!limiter.is_down());
    assert_eq!(spent_in_redis(&url, &redis_key, &limit).await, 5);

    // Another instance, straight to Redis with the same prefix, sees the same quota.
    let other = RedisLimiter::new(&url)
        .unwrap()
        .prefix(&prefix)
        .timeout(Duration::from_secs(5));
    let other_app = instance(&store, &limit, &other);
    let seen = call(&other_app, request("GET", "/cheap", &key)).await;
    assert_eq!(seen.status, 429, "{}", seen.code);
    assert!(!other.is_down());
    redis_cleanup(&url, &prefix).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_request_a_route_cost_refuses_through_redis_spends_no_credits() {
    use support::limits::{change, key_remaining};
    use tower_api_keys::limit::credits::Credits;
    use tower_api_keys::store::{KeyChanges, SqliteStore};
    let test = "a_request_a_route_cost_refuses_through_redis_spends_no_credits";
    let Some(url) = redis_url(test).await else {
        return;
    };
    let prefix = unique("refund");
    let db = support::temp_db::TempDb::new("redis-refund");
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let (id, key) = new_key(&store, "acct_refund", "a").await;
    let per_minute = RateLimit::new("requests", 10, Duration::from_secs(60)).unwrap();
    change(
        &store,
        "acct_refund",
        &id,
        KeyChanges::default()
            .credits(Some(Credits::new(100)))
            .ratelimits(vec![per_minute]),
    )
    .await;
    let limiter = RedisLimiter::new(&url)
        .unwrap()
        .prefix(&prefix)
        .timeout(Duration::from_secs(5));
    let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(store.clone()))
        .credit_lease(1)
        .shared_limits(limiter.clone());
    let app = priced_routes().layer(layer.clone());

    // 5 + 1 + 1 of the 10 spent (in Redis): the layer's unit fits, the route's 5 do not.
    let first = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(first.status, 200, "{}", first.code);
    assert_eq!(first.header("ratelimit"), Some(r#""requests";r=5;t=30"#));
    for _ in 0..2 {
        assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    }
    let refused = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code.as_str()),
        (429, "rate_limited")
    );
    assert_eq!(refused.header("retry-after"), Some("12"));
    assert!(!limiter.is_down());
    layer.return_credits().await;
    redis_cleanup(&url, &prefix).await;
    assert_eq!(key_remaining(&store, "acct_refund", &id).await, 93);
}
