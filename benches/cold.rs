//! Cold misses at scale: with `KEYS` keys in the table (default 1,000,000), a real
//! server on loopback (axum::serve, the layer around the router) answers
//!
//! - first requests of keys, one at a time over one keep-alive connection: p50/p99
//!   latency, against hits on the same connection in the same run;
//! - a burst of `BURST` distinct valid keys (default 10,000), each sent twice at once
//!   over 64 connections: requests per second, p99, and the store queries issued (at
//!   most one per key: concurrent misses share one).
//!
//! On SQLite (a temporary file) and on PostgreSQL (`DATABASE_URL`, its own schema).
//! `cargo bench --all-features --bench cold` (`KEYS=100000` for a quicker run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::serve::RouterExt as _;
use tower_api_keys::store::{PostgresStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyVerifier};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p) as usize]
}

/// `n` keys of `format`, with their SHA-256 hashes.
fn keys(format: &KeyFormat, n: usize) -> Vec<(String, [u8; 32])> {
    (0..n)
        .map(|_| {
            let key = format.generate(&Environment::LIVE);
            let hash = *key.hash().as_bytes();
            (key.expose_secret().to_owned(), hash)
        })
        .collect()
}

const ACCOUNT: &str = "acct_cold";

async fn fill_sqlite(store: &SqliteStore, keys: &[(String, [u8; 32])]) {
    let pool = store.pool();
    sqlx::query("INSERT OR IGNORE INTO accounts (id) VALUES (?)")
        .bind(ACCOUNT)
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    for (i, (_, hash)) in keys.iter().enumerate() {
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, name, key_hash, hint, prefix, environment, scopes, created_at) \
             VALUES (?, ?, ?, ?, 'hint', 'sk_live', 'live', 'read', 0)",
        )
        .bind(format!("ak_cold{i}"))
        .bind(ACCOUNT)
        .bind(format!("k{i}"))
        .bind(&hash[..])
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn fill_postgres(store: &PostgresStore, keys: &[(String, [u8; 32])]) {
    let pool = store.pool();
    sqlx::query("INSERT INTO accounts (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(ACCOUNT)
        .execute(pool)
        .await
        .unwrap();
    for (chunk_at, chunk) in keys.chunks(20_000).enumerate() {
        let ids: Vec<String> = (0..chunk.len())
            .map(|i| format!("ak_cold{}", chunk_at * 20_000 + i))
            .collect();
        let hashes: Vec<Vec<u8>> = chunk.iter().map(|(_, h)| h.to_vec()).collect();
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, name, key_hash, hint, prefix, environment, scopes, created_at) \
             SELECT id, $2, id, h, 'hint', 'sk_live', 'live', 'read', now() FROM UNNEST($1::text[], $3::bytea[]) AS t(id, h)",
        )
        .bind(&ids)
        .bind(ACCOUNT)
        .bind(&hashes)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn send(client: &HttpClient, url: &hyper::Uri, key: &str) -> u16 {
    let request = http::Request::get(url.clone())
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

async fn measure<V: KeyVerifier + Clone>(
    store_name: &str,
    verifier: V,
    keys: &[(String, [u8; 32])],
) {
    let cache = CachedVerifier::builder(verifier)
        .max_capacity(2_000_000)
        .build();
    let layer = ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone());
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.with_api_keys(layer)).await });
    let url: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();

    // First requests of 2,000 keys spread over the table, one at a time, alternating
    // with a hit of one warm key.
    let samples = 2_000.min(keys.len() / 2);
    let step = keys.len() / samples;
    let warm = &keys[keys.len() - 1].0;
    assert_eq!(send(&client, &url, warm).await, 200);
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let key = &keys[i * step].0;
        let started = Instant::now();
        assert_eq!(send(&client, &url, key).await, 200);
        misses.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(send(&client, &url, warm).await, 200);
        hits.push(started.elapsed());
    }
    let (m50, m99) = (percentile(&mut misses, 0.5), percentile(&mut misses, 0.99));
    let (h50, h99) = (percentile(&mut hits, 0.5), percentile(&mut hits, 0.99));
    println!(
        "{store_name}: miss p50 {:.0} µs, p99 {:.0} µs; hit p50 {:.0} µs, p99 {:.0} µs ({samples} keys of {})",
        m50.as_secs_f64() * 1e6,
        m99.as_secs_f64() * 1e6,
        h50.as_secs_f64() * 1e6,
        h99.as_secs_f64() * 1e6,
        keys.len()
    );

    // A burst of distinct keys never seen, each sent twice at once.
    let burst = env_usize("BURST", 10_000).min(keys.len() / 2);
    let fresh: Vec<String> = (0..keys.len() - 1)
        .filter(|j| j % step != 0)
        .take(burst)
        .map(|j| keys[j].0.clone())
        .collect();
    let calls_before = cache.stats().verifier_calls;
    // Each key twice, adjacent: two tasks send it at once (concurrent misses).
    let work: Arc<Vec<String>> =
        Arc::new(fresh.iter().flat_map(|k| [k.clone(), k.clone()]).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, work, next) = (
                client.clone(),
                url.clone(),
                Arc::clone(&work),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(key) = work.get(i) else {
                        break;
                    };
                    let sent = Instant::now();
                    assert_eq!(send(&client, &url, key).await, 200);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let queries = cache.stats().verifier_calls - calls_before;
    let p99 = percentile(&mut latencies, 0.99);
    println!(
        "{store_name}: burst of {burst} new keys × 2: {:.0} req/s, p99 {:.0} µs, {queries} store queries ({:.2} per key)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        p99.as_secs_f64() * 1e6,
        queries as f64 / burst as f64
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let n = env_usize("KEYS", 1_000_000);
        let format = KeyFormat::new("sk");
        let started = Instant::now();
        let keys = keys(&format, n);
        eprintln!("{n} keys generated in {:?}", started.elapsed());

        let path = std::env::temp_dir().join(format!("tak-cold-{}.db", std::process::id()));
        let sqlite = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        sqlite.migrate().await.unwrap();
        let started = Instant::now();
        fill_sqlite(&sqlite, &keys).await;
        eprintln!("SQLite filled in {:?}", started.elapsed());
        measure("SQLite", sqlite, &keys).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }

        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => {
                let schema = format!("cold_{}", std::process::id());
                let admin = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                let scoped = format!(
                    "{url}{}options=-csearch_path%3D{schema}",
                    if url.contains('?') { "&" } else { "?" }
                );
                let store = PostgresStore::connect(&scoped).await.unwrap();
                store.migrate().await.unwrap();
                let started = Instant::now();
                fill_postgres(&store, &keys).await;
                sqlx::query("ANALYZE api_keys")
                    .execute(store.pool())
                    .await
                    .unwrap();
                eprintln!("PostgreSQL filled in {:?}", started.elapsed());
                measure("PostgreSQL", store, &keys).await;
                sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
            _ => eprintln!("PostgreSQL skipped: set DATABASE_URL=postgres://…"),
        }
    });
}
