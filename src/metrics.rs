//! Metrics through the [`metrics`](https://docs.rs/metrics) facade: the crate records,
//! the application picks the exporter (Prometheus, StatsD, OpenTelemetry, …) by
//! installing a recorder. Without one every metric is a no-op.
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `tower_api_keys_verifications_total` | counter | `outcome`: `accepted`, `anonymous`, `foreign_token`, or the rejection's code: `missing_api_key`, `invalid_request`, `invalid_api_key`, `api_key_revoked`, `api_key_expired`, `environment_mismatch`, `payment_required`, `project_forbidden`, `ip_not_allowed`, `referrer_not_allowed`, `endpoint_not_allowed`, `auth_unavailable`, `rate_limited`, `credits_exhausted` | requests the layer decided, each once |
//! | `tower_api_keys_cost_refusals_total` | counter | `outcome`: `rate_limited`, `credits_exhausted`, `auth_unavailable` | requests the layer accepted that a route's [`Cost`](crate::meter::Cost) then refused |
//! | `tower_api_keys_cache_total` | counter | `result`: `hit` (a known key, fresh), `negative_hit` (an unknown key), `stale` (a known key past its fresh TTL, served), `miss` | cache lookups, each once |
//! | `tower_api_keys_invalidations_total` | counter | `cause`: `key` (by hash or key id), `account`, `all` | invalidation calls |
//! | `tower_api_keys_verifier_seconds` | histogram | `result`: `ok`, `error` (a timeout is an error) | verifier (store) calls on cache misses and refreshes |
//! | `tower_api_keys_usage_flushes_total` | counter | `result`: `ok`, `error` | batches of last-used times sent to the store (an empty flush sends none) |
//! | `tower_api_keys_usage_rows_total` | counter | none | keys whose last-used time a flush wrote |
//! | `tower_api_keys_redis_seconds` | histogram | `result`: `ok`, `error`, `timeout` | rate-limit checks sent to Redis (feature `redis`) |
//!
//! Every label value comes from the fixed sets above: no key, hash, key id or account
//! id is ever a label value or part of a name, so the number of series stays bounded
//! (and the scrape holds no secret).
//!
//! **Install the recorder first.** The cache, the layer, the usage recorder and the
//! Redis limiter register their handles when they are built (hits then only bump an
//! atomic: no lookup, no lock, no allocation), so they report to the recorder that was
//! in force then, as `metrics` handles do: install it before building them
//! (`metrics::set_default_local_recorder` works too, for tests). [`describe`] gives the
//! descriptions and units; building any of them describes its own metrics as well.
//!
//! ```
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyFormat, MemoryStore};
//!
//! // An exporter's recorder first, e.g. metrics-exporter-prometheus:
//! // let handle = PrometheusBuilder::new().install_recorder()?; … handle.render()
//! tower_api_keys::metrics::describe();
//! let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()));
//! ```
//!
//! Backend faults (the verifier, the credit store, Redis, the usage store) are logged
//! once per incident: the first failure at error level, the next ones at debug level,
//! and the first success after them at warn level ("… answers again").

use std::sync::atomic::{AtomicBool, Ordering};

use ::metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram,
};

/// `tower_api_keys_verifications_total{outcome}`: requests the layer decided.
pub const VERIFICATIONS: &str = "tower_api_keys_verifications_total";
/// `tower_api_keys_cost_refusals_total{outcome}`: requests a route's `Cost` refused.
pub const COST_REFUSALS: &str = "tower_api_keys_cost_refusals_total";
/// `tower_api_keys_cache_total{result}`: cache lookups.
pub const CACHE: &str = "tower_api_keys_cache_total";
/// `tower_api_keys_invalidations_total{cause}`: invalidation calls.
pub const INVALIDATIONS: &str = "tower_api_keys_invalidations_total";
/// `tower_api_keys_verifier_seconds{result}`: verifier call latency (histogram).
pub const VERIFIER_SECONDS: &str = "tower_api_keys_verifier_seconds";
/// `tower_api_keys_usage_flushes_total{result}`: usage batches sent to the store.
pub const USAGE_FLUSHES: &str = "tower_api_keys_usage_flushes_total";
/// `tower_api_keys_usage_rows_total`: last-used times written.
pub const USAGE_ROWS: &str = "tower_api_keys_usage_rows_total";
/// `tower_api_keys_redis_seconds{result}`: Redis rate-limit check latency (histogram).
pub const REDIS_SECONDS: &str = "tower_api_keys_redis_seconds";

/// The values of `outcome` in [`VERIFICATIONS`]: `accepted`, the requests let through
/// without a key, then every code the layer refuses with.
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "anonymous",
    "foreign_token",
    "missing_api_key",
    "invalid_request",
    "invalid_api_key",
    "api_key_revoked",
    "api_key_expired",
    "environment_mismatch",
    "payment_required",
    "project_forbidden",
    "ip_not_allowed",
    "referrer_not_allowed",
    "endpoint_not_allowed",
    "auth_unavailable",
    "rate_limited",
    "credits_exhausted",
];

/// The values of `outcome` in [`COST_REFUSALS`].
pub const COST_OUTCOMES: &[&str] = &["rate_limited", "credits_exhausted", "auth_unavailable"];

/// Describes every metric of the table (name, unit, help) to the installed recorder.
/// Optional: building a cache, layer, usage recorder or Redis limiter describes its own.
pub fn describe() {
    describe_verifications();
    describe_cost_refusals();
    describe_cache();
    describe_usage();
    describe_redis();
}

fn describe_verifications() {
    describe_counter!(
        VERIFICATIONS,
        Unit::Count,
        "Requests the API-key layer decided, by outcome (accepted or the rejection code)"
    );
}

fn describe_cost_refusals() {
    describe_counter!(
        COST_REFUSALS,
        Unit::Count,
        "Requests the API-key layer accepted that a route's cost then refused, by code"
    );
}

fn describe_cache() {
    describe_counter!(
        CACHE,
        Unit::Count,
        "API-key cache lookups: hit, negative_hit (unknown key), stale (served past the TTL), miss"
    );
    describe_counter!(
        INVALIDATIONS,
        Unit::Count,
        "API-key cache invalidations, by cause (key, account, all)"
    );
    describe_histogram!(
        VERIFIER_SECONDS,
        Unit::Seconds,
        "Latency of API-key verifier (store) calls, by result (ok, error)"
    );
}

fn describe_usage() {
    describe_counter!(
        USAGE_FLUSHES,
        Unit::Count,
        "Batches of API-key last-used times sent to the store, by result (ok, error)"
    );
    describe_counter!(
        USAGE_ROWS,
        Unit::Count,
        "API keys whose last-used time a usage flush wrote"
    );
}

fn describe_redis() {
    describe_histogram!(
        REDIS_SECONDS,
        Unit::Seconds,
        "Latency of rate-limit checks sent to Redis, by result (ok, error, timeout)"
    );
}

/// One counter per value of a fixed `outcome` set, registered once.
pub(crate) struct Outcomes {
    values: &'static [&'static str],
    counters: Box<[Counter]>,
}

impl Outcomes {
    fn register(name: &'static str, values: &'static [&'static str]) -> Self {
        let counters = values
            .iter()
            .map(|value| counter!(name, "outcome" => *value))
            .collect();
        Outcomes { values, counters }
    }

    /// The counters of [`VERIFICATIONS`].
    pub(crate) fn verifications() -> Self {
        describe_verifications();
        Self::register(VERIFICATIONS, OUTCOMES)
    }

    /// The counters of [`COST_REFUSALS`].
    pub(crate) fn cost_refusals() -> Self {
        describe_cost_refusals();
        Self::register(COST_REFUSALS, COST_OUTCOMES)
    }

    /// Counts an accepted request (the first outcome, without a search).
    pub(crate) fn accepted(&self) {
        self.counters[0].increment(1);
    }

    /// Counts `outcome` (a value of the set; another is not counted: the unit tests
    /// check that every code the layer refuses with is in [`OUTCOMES`]).
    pub(crate) fn count(&self, outcome: &str) {
        if let Some(at) = self.values.iter().position(|value| *value == outcome) {
            self.counters[at].increment(1);
        }
    }
}

impl std::fmt::Debug for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcomes").finish_non_exhaustive()
    }
}

/// The cache's handles: lookups, invalidations, verifier latency.
pub(crate) struct CacheMetrics {
    pub(crate) hit: Counter,
    pub(crate) negative_hit: Counter,
    pub(crate) stale: Counter,
    pub(crate) miss: Counter,
    pub(crate) invalidated_key: Counter,
    pub(crate) invalidated_account: Counter,
    pub(crate) invalidated_all: Counter,
    pub(crate) verifier_ok: Histogram,
    pub(crate) verifier_error: Histogram,
}

impl CacheMetrics {
    pub(crate) fn register() -> Self {
        describe_cache();
        CacheMetrics {
            hit: counter!(CACHE, "result" => "hit"),
            negative_hit: counter!(CACHE, "result" => "negative_hit"),
            stale: counter!(CACHE, "result" => "stale"),
            miss: counter!(CACHE, "result" => "miss"),
            invalidated_key: counter!(INVALIDATIONS, "cause" => "key"),
            invalidated_account: counter!(INVALIDATIONS, "cause" => "account"),
            invalidated_all: counter!(INVALIDATIONS, "cause" => "all"),
            verifier_ok: histogram!(VERIFIER_SECONDS, "result" => "ok"),
            verifier_error: histogram!(VERIFIER_SECONDS, "result" => "error"),
        }
    }
}

/// The usage recorder's handles.
pub(crate) struct UsageMetrics {
    pub(crate) flushed: Counter,
    pub(crate) failed: Counter,
    pub(crate) rows: Counter,
}

impl Default for UsageMetrics {
    fn default() -> Self {
        describe_usage();
        UsageMetrics {
            flushed: counter!(USAGE_FLUSHES, "result" => "ok"),
            failed: counter!(USAGE_FLUSHES, "result" => "error"),
            rows: counter!(USAGE_ROWS),
        }
    }
}

/// The Redis limiter's handles.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone)]
pub(crate) struct RedisMetrics {
    pub(crate) ok: Histogram,
    pub(crate) error: Histogram,
    pub(crate) timeout: Histogram,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl RedisMetrics {
    pub(crate) fn register() -> Self {
        describe_redis();
        RedisMetrics {
            ok: histogram!(REDIS_SECONDS, "result" => "ok"),
            error: histogram!(REDIS_SECONDS, "result" => "error"),
            timeout: histogram!(REDIS_SECONDS, "result" => "timeout"),
        }
    }
}

/// A backend fault that lasts: its first failure is logged at error level, the next
/// ones at debug level, until a success ends it. One atomic load when all is well.
#[derive(Debug, Default)]
pub(crate) struct Incident {
    open: AtomicBool,
}

impl Incident {
    /// A failure: whether it opens the incident (log it at error level; the others at
    /// debug level).
    pub(crate) fn fail(&self) -> bool {
        !self.open.swap(true, Ordering::Relaxed)
    }

    /// A success: whether it ends an incident (say so once).
    pub(crate) fn succeed(&self) -> bool {
        self.open.load(Ordering::Relaxed) && self.open.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthError;

    #[test]
    fn an_incident_opens_once_and_ends_once() {
        let incident = Incident::default();
        assert!(!incident.succeed(), "nothing to end");
        assert!(incident.fail(), "the first failure opens it");
        assert!((0..49).all(|_| !incident.fail()), "the next ones do not");
        assert!(incident.succeed());
        assert!(!incident.succeed());
        assert!(incident.fail(), "a new incident");
    }

    #[test]
    fn every_code_the_layer_refuses_with_is_an_outcome() {
        use crate::error::InvalidRequest;
        let refusals = [
            AuthError::MissingKey,
            AuthError::InvalidRequest(InvalidRequest::DuplicateHeader),
            AuthError::InvalidKey,
            AuthError::Revoked,
            AuthError::Expired,
            AuthError::EnvironmentMismatch,
            AuthError::PaymentRequired,
            AuthError::ProjectForbidden,
            AuthError::IpNotAllowed,
            AuthError::ReferrerNotAllowed,
            AuthError::EndpointNotAllowed,
            AuthError::Unavailable,
            AuthError::CreditsExhausted,
        ];
        for error in &refusals {
            assert!(OUTCOMES.contains(&error.code()), "{}", error.code());
        }
        assert!(OUTCOMES.contains(&"rate_limited"));
        // Distinct, and none is a key, a hash or an id.
        let mut seen = std::collections::HashSet::new();
        assert!(OUTCOMES.iter().all(|outcome| seen.insert(outcome)));
        assert!(
            COST_OUTCOMES
                .iter()
                .all(|outcome| OUTCOMES.contains(outcome))
        );
    }
}
