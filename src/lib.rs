//! API-key authentication for [tower] services, [hyper] servers and [axum] routers:
//! the kind SaaS APIs document for their users.
//!
//! - **Keys** like `sk_live_…` / `sk_test_…`: 256 random bits from the OS CSPRNG and a
//!   checksum, so typos and random strings are refused before any lookup
//!   ([`key`]).
//! - **Stored as SHA-256 hashes** only; the plaintext is shown once, at creation
//!   ([`store`]).
//! - **Verified through any async [`KeyVerifier`]** behind a [`CachedVerifier`]: a hit
//!   is a synchronous cache probe; misses are single-flight; unknown keys are cached
//!   briefly; backend failures are 503, never cached.
//! - **An authenticated [`Principal`]** (key, account, project, scopes, environment) in
//!   the request's extensions, and scope guards for handlers ([`RequireScope`]) and
//!   routes ([`guard::ScopeGuardLayer`]).
//! - **Answers that follow RFC 6750**: 400/401/403/503 with a stable `code` and the
//!   right `WWW-Authenticate` challenge ([`AuthError`]).
//!
//! # Example
//!
//! ```
//! use axum::{Json, Router, routing::{get, post}};
//! use tower_api_keys::{manage::NewKey, scope::Write, ApiKeyLayer, CachedVerifier, Environment, KeyFormat, KeyManager, MemoryStore, Principal, RequireScope, Scope};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let format = KeyFormat::new("sk");
//! let store = MemoryStore::new();
//! let cache = CachedVerifier::new(store.clone());
//! let manager = KeyManager::new(store, cache.clone(), format.clone());
//! let created = manager
//!     .create_for_account("acct_1", Environment::LIVE, NewKey::named("quickstart").scopes([Scope::Write]))
//!     .await
//!     .unwrap();
//! println!("your key (shown once): {}", created.key.expose_secret());
//!
//! let app: Router = Router::new()
//!     .route("/v1/whoami", get(|p: Principal| async move { Json(p) }))
//!     .route("/v1/items", post(|_: RequireScope<Write>| async { "created" }))
//!     .layer(ApiKeyLayer::new(format, cache).environment(Environment::LIVE));
//! # let _ = app;
//! # }
//! ```
//!
//! # Responses
//!
//! | status | code | when |
//! |---|---|---|
//! | 401 | `missing_api_key` | no `Authorization` header, or another scheme |
//! | 400 | `invalid_request` | two `Authorization` headers, empty token, illegal characters |
//! | 401 | `invalid_api_key` | wrong format or checksum, unknown key |
//! | 401 | `api_key_revoked` / `api_key_expired` | revoked / past `expires_at` |
//! | 401 | `environment_mismatch` | a key of another environment than the deployment's |
//! | 402 | `payment_required` | the account is past due beyond its grace period |
//! | 403 | `project_forbidden` | a key locked to another project |
//! | 403 | `ip_not_allowed` / `referrer_not_allowed` / `endpoint_not_allowed` | the key's restrictions |
//! | 403 | `insufficient_scope` | a scope guard fails |
//! | 402 | `credits_exhausted` | the request's cost exceeds the key's or its account's credits ([`meter`]) |
//! | 429 | `rate_limited` | a rate limit of the key, its account or the layer ([`limit`]) is spent |
//! | 503 | `auth_unavailable` | the verifier failed and nothing was cached |
//!
//! The rules run in a fixed order; see [`policy`].
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `axum` | yes | the extractors [`Principal`], `Option<Principal>` and [`RequireScope`]; the key-management routes (`manage::KeyRoutes`) |
//! | `sqlite` | yes | `SqliteStore`, the embedded store (bundles SQLite), and [`SqlStore`] |
//! | `postgres` | no | `PostgresStore` and its `RevocationListener` (`LISTEN/NOTIFY`), and [`SqlStore`] |
//! | `redis` | no | `limit::redis::RedisLimiter`: rate limits shared by many instances through Redis |
//! | `cli` | no | the `apikeys` command-line tool (bootstrap keys, list, revoke, account limits, migrate) |
//!
//! The core (keys, verifier, cache, layer, errors, memory store, [`KeyManager`]) builds
//! with `--no-default-features`.
//!
//! # Modules
//!
//! Bottom-up (each uses only those before it; `tests/module_graph.rs` checks): [`audit`]
//! (the hash-chained events every store writes), [`key`],
//! [`scope`] and [`limit`] (rate limits, credits, Redis); [`record`] and [`principal`];
//! [`verify`] and [`cache`]; [`policy`]; [`error`]; [`meter`] (what a request spends,
//! route costs); [`layer`], `extract` and [`guard`]; [`store`]; [`usage`]; [`manage`].
//! [`metrics`] (the metric handles and the once-per-incident logging
//! of backend faults) is below them all.
//!
//! # Metrics and logs
//!
//! Verifications by outcome, cache hits and misses, invalidations, usage flushes, and
//! the latency of the verifier and of Redis are recorded through the `metrics` facade
//! (the application installs the exporter; see [`metrics`] for the
//! table of names and labels). Each request has one span at debug level; backend
//! faults are logged at error level once per incident, not once per request.
//!
//! [tower]: https://docs.rs/tower
//! [hyper]: https://docs.rs/hyper
//! [axum]: https://docs.rs/axum

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
pub mod bearer;
pub mod cache;
pub mod client_ip;
pub mod clock;
pub mod error;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod extract;
pub mod guard;
pub mod key;
pub mod layer;
pub mod limit;
pub mod manage;
pub mod meter;
pub mod metrics;
mod percent;
pub mod policy;
pub mod principal;
pub mod record;
pub mod restriction;
pub mod scope;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod serve;
pub mod store;
pub mod usage;
pub mod verify;

pub use cache::CachedVerifier;
pub use error::AuthError;
#[cfg(feature = "axum")]
pub use extract::RequireScope;
pub use key::{Environment, KeyFormat};
pub use layer::{ApiKeyAuth, ApiKeyLayer};
pub use manage::KeyManager;
pub use principal::Principal;
pub use record::KeyRecord;
pub use scope::Scope;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use store::SqlStore;
pub use store::{KeyStore, MemoryStore};
pub use verify::{KeyVerifier, VerifyError};
