//! Credits through the layer, on every store: exact under a race (one instance, and two
//! instances on one PostgreSQL database), an account's balance shared by its keys,
//! route costs (`Cost`) on credits and rate limits, a monthly refill on day 31 applied
//! by the store, and rate limits stored with a key or its account. Balances and limits
//! are given through the store directly (`KeyStore::update`, `set_account_limits`).
//! The PostgreSQL tests skip (with a note) without `DATABASE_URL`.
#![cfg(feature = "sqlite")]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::limits::{
    account_remaining, all_at_once, call, change, key_remaining, new_key, priced_routes, request,
    tally,
};
use support::temp_db::TempDb;
use time::OffsetDateTime;
use tower_api_keys::key::KeyFormat;
use tower_api_keys::key::KeyHash;
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::{
    CreditError, CreditGrant, CreditStore, CreditSubject, Credits, Refill,
};
use tower_api_keys::record::{AccountLimits, KeyRecord};
use tower_api_keys::store::{KeyChanges, KeyStore, MemoryStore, SqliteStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};
use tower_api_keys::{KeyVerifier, VerifyError};

async fn sqlite(name: &str) -> (SqliteStore, TempDb) {
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

#[cfg(feature = "postgres")]
async fn postgres(test: &str) -> Option<(tower_api_keys::store::PostgresStore, String)> {
    let (pool, schema) = support::postgres::schema_pool(test).await?;
    let store =
        tower_api_keys::store::PostgresStore::from_pool(pool).with_revocation_channel(&schema);
    store.migrate().await.unwrap();
    Some((store, schema))
}

fn layer_over<S: KeyStore + Clone>(store: &S, lease: Option<u64>) -> ApiKeyLayer<S> {
    let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(store.clone()));
    match lease {
        Some(block) => layer.credit_lease(block),
        None => layer,
    }
}

fn counts(pairs: &[(u16, &str, usize)]) -> BTreeMap<(u16, String), usize> {
    pairs
        .iter()
        .map(|(status, code, n)| ((*status, (*code).to_owned()), *n))
        .collect()
}

fn per_minute(name: &str, limit: u32) -> RateLimit {
    RateLimit::new(name, limit, Duration::from_secs(60)).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Exact under a race: 500 credits, 1,000 requests at once.

async fn exact_under_a_race<S: KeyStore + Clone>(store: S, lease: Option<u64>) {
    let (id, key) = new_key(&store, "acct_race", "racer").await;
    change(
        &store,
        "acct_race",
        &id,
        KeyChanges::default().credits(Some(Credits::new(500))),
    )
    .await;
    // The layer is made after the change: its cache has never seen the key.
    let layer = layer_over(&store, lease);
    let app = priced_routes().layer(layer.clone());

    let responses = all_at_once(&[app], 1_000, |_| request("GET", "/cheap", &key)).await;
    assert_eq!(
        tally(&responses),
        counts(&[(200, "", 500), (402, "credits_exhausted", 500)]),
        "lease {lease:?}"
    );
    layer.return_credits().await;
    assert_eq!(key_remaining(&store, "acct_race", &id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spends_exactly_its_credits_under_a_race() {
    exact_under_a_race(MemoryStore::new(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spends_exactly_its_credits_under_a_race_with_a_lease_of_one() {
    exact_under_a_race(MemoryStore::new(), Some(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_spends_exactly_its_credits_under_a_race() {
    let (store, _db) = sqlite("credits-race").await;
    exact_under_a_race(store, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_spends_exactly_its_credits_under_a_race_with_a_lease_of_one() {
    let (store, _db) = sqlite("credits-race-1").await;
    exact_under_a_race(store, Some(1)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_spends_exactly_its_credits_under_a_race() {
    let Some((store, _)) = postgres("credits_race").await else {
        return;
    };
    exact_under_a_race(store, None).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_spends_exactly_its_credits_under_a_race_with_a_lease_of_one() {
    let Some((store, _)) = postgres("credits_race_lease1").await else {
        return;
    };
    exact_under_a_race(store, Some(1)).await;
}

// ---------------------------------------------------------------------------------------
// 2. Two instances (two pools, caches and layers) on one PostgreSQL database.

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_spend_one_balance_exactly() {
    use tower_api_keys::store::PostgresStore;
    let Some((first, schema)) = postgres("credits_two_instances").await else {
        return;
    };
    let second = PostgresStore::from_pool(
        support::postgres::pool_in(&support::postgres::url(), &schema).await,
    )
    .with_revocation_channel(&schema);
    let (id, key) = new_key(&first, "acct_two", "shared").await;
    change(
        &first,
        "acct_two",
        &id,
        KeyChanges::default().credits(Some(Credits::new(500))),
    )
    .await;
    let layers = [layer_over(&first, None), layer_over(&second, None)];
    let apps = [
        priced_routes().layer(layers[0].clone()),
        priced_routes().layer(layers[1].clone()),
    ];

    // Request i goes to instance i % 2: 500 each.
    let responses = all_at_once(&apps, 1_000, |_| request("GET", "/cheap", &key)).await;
    let per_instance: Vec<usize> = (0..2)
        .map(|instance| {
            responses
                .iter()
                .skip(instance)
                .step_by(2)
                .filter(|seen| seen.status == 200)
                .count()
        })
        .collect();
    println!("successes per instance: {per_instance:?}");
    assert_eq!(
        tally(&responses),
        counts(&[(200, "", 500), (402, "credits_exhausted", 500)])
    );
    for layer in &layers {
        layer.return_credits().await;
    }
    assert_eq!(key_remaining(&second, "acct_two", &id).await, 0);
}

// ---------------------------------------------------------------------------------------
// 3. An account's balance, shared by its keys.

async fn account_balance_is_shared<S: KeyStore + Clone>(store: S) {
    let (_, a) = new_key(&store, "acct_shared", "a").await;
    let (_, b) = new_key(&store, "acct_shared", "b").await;
    let (_, other) = new_key(&store, "acct_other", "other").await;
    store
        .set_account_limits(
            "acct_shared",
            &AccountLimits::none().credits(Credits::new(10)),
        )
        .await
        .unwrap();
    let layer = layer_over(&store, None);
    let app = priced_routes().layer(layer.clone());

    let mut passed = Vec::new();
    for i in 0..20 {
        let key = if i % 2 == 0 { &a } else { &b };
        let seen = call(&app, request("GET", "/cheap", key)).await;
        match seen.status.as_u16() {
            200 => passed.push(i),
            402 => assert_eq!(seen.code, "credits_exhausted"),
            status => panic!("request {i}: {status} {}", seen.code),
        }
    }
    assert_eq!(
        passed,
        (0..10).collect::<Vec<_>>(),
        "the first ten, both keys"
    );
    // Another account has no balance: it spends nothing.
    assert_eq!(
        call(&app, request("GET", "/cheap", &other)).await.status,
        200
    );
    layer.return_credits().await;
    assert_eq!(account_remaining(&store, "acct_shared").await, 0);
}

#[tokio::test]
async fn memory_account_balance_is_shared_by_its_keys() {
    account_balance_is_shared(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_account_balance_is_shared_by_its_keys() {
    let (store, _db) = sqlite("credits-account").await;
    account_balance_is_shared(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_account_balance_is_shared_by_its_keys() {
    let Some((store, _)) = postgres("credits_account").await else {
        return;
    };
    account_balance_is_shared(store).await;
}

// ---------------------------------------------------------------------------------------
// 4. Route costs.

/// A key of `acct_costs` with `credits` and, if given, stored rate limits; the layer
/// (lease 1) and the app, made after.
async fn priced<S: KeyStore + Clone>(
    store: &S,
    credits: u64,
    ratelimits: Option<Vec<RateLimit>>,
) -> (
    tower_api_keys::key::KeyId,
    tower_api_keys::key::ApiKey,
    ApiKeyLayer<S>,
    axum::Router,
) {
    let (id, key) = new_key(store, "acct_costs", "priced").await;
    let mut changes = KeyChanges::default().credits(Some(Credits::new(credits)));
    if let Some(limits) = ratelimits {
        changes = changes.ratelimits(limits);
    }
    change(store, "acct_costs", &id, changes).await;
    let layer = layer_over(store, Some(1));
    let app = priced_routes().layer(layer.clone());
    (id, key, layer, app)
}

/// [`priced`], with the routes' costs also declared on the layer (`route_costs`), so
/// that they are known before routing.
async fn priced_declared<S: KeyStore + Clone>(
    store: &S,
    credits: u64,
    ratelimits: Option<Vec<RateLimit>>,
) -> (tower_api_keys::key::ApiKey, axum::Router) {
    let (_, key, layer, _) = priced(store, credits, ratelimits).await;
    let layer = layer.route_costs(|method, path| match (method.as_str(), path) {
        (_, "/free") => Some(0),
        ("POST", "/items") => Some(5),
        _ => None,
    });
    (key, priced_routes().layer(layer))
}

#[tokio::test]
async fn a_route_cost_spends_its_units_of_credits_and_a_refusal_spends_none() {
    let (store, _db) = sqlite("credits-costs").await;
    let (id, key, layer, app) = priced(&store, 12, None).await;

    for _ in 0..2 {
        let seen = call(&app, request("POST", "/items", &key)).await;
        assert_eq!(seen.status, 200, "{}", seen.code);
    }
    let refused = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(refused.status, 402);
    assert_eq!(refused.code, "credits_exhausted");
    assert!(refused.headers.get("ratelimit").is_none());
    // Ten spent; the instance holds what the refused request leased (lease 1: what it
    // took before knowing the route's cost), the store the rest, and together 2.
    layer.return_credits().await;
    assert_eq!(key_remaining(&store, "acct_costs", &id).await, 2);

    for _ in 0..2 {
        let seen = call(&app, request("GET", "/cheap", &key)).await;
        assert_eq!(seen.status, 200, "{}", seen.code);
    }
    let spent = call(&app, request("GET", "/cheap", &key)).await;
    assert_eq!(
        (spent.status.as_u16(), spent.code.as_str()),
        (402, "credits_exhausted")
    );
    layer.return_credits().await;
    assert_eq!(key_remaining(&store, "acct_costs", &id).await, 0);
}

#[tokio::test]
async fn a_free_route_spends_no_credits() {
    let (store, _db) = sqlite("credits-free").await;
    let (id, key, layer, app) = priced(&store, 3, None).await;
    for _ in 0..5 {
        let seen = call(&app, request("GET", "/free", &key)).await;
        assert_eq!(seen.status, 200, "{}", seen.code);
    }
    layer.return_credits().await;
    assert_eq!(key_remaining(&store, "acct_costs", &id).await, 3);
    // The three are all there: three requests of cost 1, then none.
    for _ in 0..3 {
        assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    }
    assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 402);
}

#[tokio::test]
async fn a_free_route_passes_when_the_credits_are_spent() {
    let (store, _db) = sqlite("credits-free-spent").await;
    // Without the declaration the layer refuses before routing: it has spent its unit.
    let (_, key, _layer, app) = priced(&store, 1, None).await;
    assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    assert_eq!(call(&app, request("GET", "/free", &key)).await.status, 402);
    let (key, app) = priced_declared(&store, 1, None).await;
    assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    let spent = call(&app, request("GET", "/cheap", &key)).await;
    assert_eq!(
        (spent.status.as_u16(), spent.code.as_str()),
        (402, "credits_exhausted")
    );
    let free = call(&app, request("GET", "/free", &key)).await;
    assert_eq!(free.status, 200, "{}", free.code);
}

#[tokio::test]
async fn a_route_cost_spends_its_units_of_the_rate_limit_too() {
    let (store, _db) = sqlite("credits-cost-limit").await;
    let (_, key, _layer, app) = priced(&store, 100, Some(vec![per_minute("requests", 10)])).await;

    let first = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(first.status, 200, "{}", first.code);
    assert_eq!(first.header("ratelimit"), Some(r#""requests";r=5;t=30"#));
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""requests";q=10;w=60"#)
    );
    let second = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(second.status, 200, "{}", second.code);
    assert_eq!(second.header("ratelimit"), Some(r#""requests";r=0;t=60"#));

    let refused = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code, "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("ratelimit"), Some(r#""requests";r=0;t=60"#));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""requests";q=10;w=60"#)
    );
}

#[tokio::test]
async fn a_request_a_route_cost_refuses_for_its_rate_limit_spends_no_credits() {
    let (store, _db) = sqlite("credits-cost-limit-refund").await;
    let (id, key, layer, app) = priced(&store, 100, Some(vec![per_minute("requests", 10)])).await;
    // 5 + 1 + 1 of the 10 spent: the layer's unit fits, the route's 5 do not.
    assert_eq!(
        call(&app, request("POST", "/items", &key)).await.status,
        200
    );
    for _ in 0..2 {
        assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    }
    let refused = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code.as_str()),
        (429, "rate_limited")
    );
    // 42 s ahead of 60; 5 more units (30 s) fit in 12 s.
    assert_eq!(refused.header("retry-after"), Some("12"));
    layer.return_credits().await;
    assert_eq!(key_remaining(&store, "acct_costs", &id).await, 93);
}

#[tokio::test]
async fn a_costly_request_refused_for_its_rate_limit_is_told_when_its_cost_fits() {
    let (store, _db) = sqlite("credits-cost-retry").await;
    let (key, app) = priced_declared(&store, 100, Some(vec![per_minute("requests", 10)])).await;
    for _ in 0..2 {
        assert_eq!(
            call(&app, request("POST", "/items", &key)).await.status,
            200
        );
    }
    let refused = call(&app, request("POST", "/items", &key)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("30"));
}

#[tokio::test]
async fn a_free_route_passes_when_the_rate_limit_is_spent() {
    let (store, _db) = sqlite("credits-free-limited").await;
    let (key, app) = priced_declared(&store, 100, Some(vec![per_minute("requests", 10)])).await;
    for _ in 0..2 {
        assert_eq!(
            call(&app, request("POST", "/items", &key)).await.status,
            200
        );
    }
    assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 429);
    let free = call(&app, request("GET", "/free", &key)).await;
    assert_eq!(free.status, 200, "{}", free.code);
}

// ---------------------------------------------------------------------------------------
// 5. A monthly refill on day 31, applied by the store.

async fn refills_on_day_31<S: KeyStore + Clone>(store: S) {
    let refill = Refill::monthly(100, 31);
    let (id, _) = new_key(&store, "acct_refill", "monthly").await;
    change(
        &store,
        "acct_refill",
        &id,
        KeyChanges::default().credits(Some(Credits::new(3).with_refill(refill))),
    )
    .await;
    // The store set the balance (and its refill schedule) at its own now, just before.
    let set_at = OffsetDateTime::now_utc();
    let next = refill.next_after(set_at);
    assert_eq!(next.time(), time::Time::MIDNIGHT);
    assert_eq!(
        next.day(),
        31.min(time::util::days_in_month(next.month(), next.year())),
        "day 31, or the last day of a shorter month: {next}"
    );
    let subject = CreditSubject::Key(id.as_str());

    let grant = store.take_credits(subject, 10, set_at).await.unwrap();
    assert!(grant.limited);
    assert_eq!(grant.granted, 3, "before the refill: what is left");
    assert_eq!(grant.until, Some(next), "a lease ends at the next refill");
    let just_before = next - time::Duration::seconds(1);
    let grant = store.take_credits(subject, 10, just_before).await.unwrap();
    assert_eq!(grant.granted, 0, "a second before the refill: nothing");

    let after = next + time::Duration::seconds(1);
    let grant = store.take_credits(subject, 1_000, after).await.unwrap();
    assert_eq!(
        grant.granted, 100,
        "refilled to the amount (nothing carried over)"
    );
    assert_eq!(grant.until, Some(refill.next_after(next)));
    let grant = store
        .take_credits(subject, 1, after + time::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(grant.granted, 0, "refilled once, not at every take");
    assert_eq!(key_remaining(&store, "acct_refill", &id).await, 0);
}

#[tokio::test]
async fn sqlite_refills_monthly_on_day_31() {
    let (store, _db) = sqlite("credits-refill").await;
    refills_on_day_31(store).await;
}

#[tokio::test]
async fn memory_refills_monthly_on_day_31() {
    refills_on_day_31(MemoryStore::new()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_refills_monthly_on_day_31() {
    let Some((store, _)) = postgres("credits_refill").await else {
        return;
    };
    refills_on_day_31(store).await;
}

// ---------------------------------------------------------------------------------------
// 6. Rate limits stored with a key, and with its account.

async fn a_keys_stored_limit<S: KeyStore + Clone>(store: S) {
    let (id, key) = new_key(&store, "acct_limited", "limited").await;
    let (_, free) = new_key(&store, "acct_limited", "free").await;
    change(
        &store,
        "acct_limited",
        &id,
        KeyChanges::default().ratelimits(vec![per_minute("requests", 2)]),
    )
    .await;
    let app = priced_routes().layer(layer_over(&store, None));

    let first = call(&app, request("GET", "/cheap", &key)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit"), Some(r#""requests";r=1;t=30"#));
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""requests";q=2;w=60"#)
    );
    assert_eq!(call(&app, request("GET", "/cheap", &key)).await.status, 200);
    let refused = call(&app, request("GET", "/cheap", &key)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code, "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert_eq!(refused.header("ratelimit"), Some(r#""requests";r=0;t=60"#));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""requests";q=2;w=60"#)
    );
    // The limit is the key's: another key of the account has none.
    let other = call(&app, request("GET", "/cheap", &free)).await;
    assert_eq!(other.status, 200);
    assert!(other.header("ratelimit").is_none());
}

async fn an_accounts_stored_limit<S: KeyStore + Clone>(store: S) {
    let (_, a) = new_key(&store, "acct_team", "a").await;
    let (_, b) = new_key(&store, "acct_team", "b").await;
    let (_, outsider) = new_key(&store, "acct_elsewhere", "c").await;
    let cache = CachedVerifier::new(store.clone());
    let app = priced_routes().layer(ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone()));
    // Cached before the account has a limit: no fields.
    let before = call(&app, request("GET", "/cheap", &a)).await;
    assert_eq!(before.status, 200);
    assert!(before.header("ratelimit").is_none());

    store
        .set_account_limits(
            "acct_team",
            &AccountLimits::none().ratelimit(per_minute("team", 3)),
        )
        .await
        .unwrap();
    cache.invalidate_account("acct_team");
    let mut statuses = Vec::new();
    for key in [&a, &b, &a] {
        statuses.push(
            call(&app, request("GET", "/cheap", key))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200]);
    for key in [&b, &a] {
        let refused = call(&app, request("GET", "/cheap", key)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(
            refused.header("ratelimit-policy"),
            Some(r#""team";q=3;w=60"#)
        );
        assert_eq!(refused.header("retry-after"), Some("20"));
    }
    // Another account's keys do not share it.
    assert_eq!(
        call(&app, request("GET", "/cheap", &outsider)).await.status,
        200
    );
}

#[tokio::test]
async fn memory_keeps_a_keys_stored_rate_limit() {
    a_keys_stored_limit(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_keeps_a_keys_stored_rate_limit() {
    let (store, _db) = sqlite("credits-key-limit").await;
    a_keys_stored_limit(store).await;
}

#[tokio::test]
async fn memory_shares_an_accounts_stored_rate_limit() {
    an_accounts_stored_limit(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_shares_an_accounts_stored_rate_limit() {
    let (store, _db) = sqlite("credits-account-limit").await;
    an_accounts_stored_limit(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_shares_an_accounts_stored_rate_limit() {
    let Some((store, _)) = postgres("credits_account_limit").await else {
        return;
    };
    an_accounts_stored_limit(store).await;
}

// ---------------------------------------------------------------------------------------
// 7. An empty balance costs the store nothing per request.

/// The store's credit side, counting takes.
struct CountingCredits {
    inner: MemoryStore,
    takes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl CreditStore for CountingCredits {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        self.takes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.take_credits(subject, want, now).await
    }

    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError> {
        self.inner
            .return_credits(subject, units, epoch, until)
            .await
    }
}

/// A verifier whose credit store counts.
struct Counted(MemoryStore, std::sync::Arc<CountingCredits>);

#[async_trait::async_trait]
impl KeyVerifier for Counted {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        self.0.verify(hash).await
    }

    fn credit_store(&self) -> Option<std::sync::Arc<dyn CreditStore>> {
        Some(self.1.clone())
    }
}

#[tokio::test]
async fn refusals_of_an_empty_balance_do_not_ask_the_store_each_time() {
    let store = MemoryStore::new();
    let (id, key) = new_key(&store, "acct_empty", "empty").await;
    change(
        &store,
        "acct_empty",
        &id,
        KeyChanges::default().credits(Some(Credits::new(3))),
    )
    .await;
    let counting = std::sync::Arc::new(CountingCredits {
        inner: store.clone(),
        takes: Default::default(),
    });
    let layer = ApiKeyLayer::new(
        KeyFormat::new("sk"),
        CachedVerifier::new(Counted(store.clone(), counting.clone())),
    );
    let app = priced_routes().layer(layer);
    let mut statuses = BTreeMap::new();
    for _ in 0..200 {
        let seen = call(&app, request("GET", "/cheap", &key)).await;
        *statuses.entry(seen.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 3), (402, 197)]));
    let takes = counting.takes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(takes <= 4, "{takes} takes for 3 credits and 197 refusals");
}
