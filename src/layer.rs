//! The middleware: [`ApiKeyLayer`], [`ApiKeyAuth`] and its [`ResponseFuture`].
//!
//! Per request: read the bearer token, check its format (a malformed key stops here),
//! hash it, look the hash up in the [`CachedVerifier`] (synchronously on a hit), apply
//! the [`policy`](crate::policy) rules, put the [`Principal`] into the request's
//! extensions and call the inner service. A rejection is a response (`Ok`), never an
//! error: see [`AuthError`] for the statuses and codes.
//!
//! It wraps any `tower::Service<http::Request<_>>` whose response body can be built
//! from [`Bytes`] (axum's `Body`, `http_body_util::Full<Bytes>`, …):
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal, key::KeyFormat, store::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()));
//! let service = ServiceBuilder::new().layer(layer).service_fn(|req: Request<()>| async move {
//!     let principal = req.extensions().get::<Principal>().unwrap();
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(principal.account_id().to_owned()))))
//! });
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;

use crate::bearer::{bearer_bytes, checked_token};
use crate::cache::{CachedVerifier, Lookup};
use crate::clock::Clock;
use crate::error::{AuthError, ErrorFormat, ErrorResponder};
use crate::key::{Environment, KeyFormat, KeyHash};
use crate::limit::{RateLimit, Slot};
use crate::meter::{DEFAULT_COST, LayerSlot, Meter, Per, Quota, SpendFuture, Spent};
use crate::metrics::Outcomes;
use crate::policy::{EnvironmentResolver, Policy, ProjectResolver, RequestView};
use crate::principal::{Anonymous, ForeignToken, Principal};
use crate::usage::UsageRecorder;
use crate::verify::KeyVerifier;

/// Everything the service shares between requests, behind one `Arc`.
struct Shared<V> {
    format: KeyFormat,
    /// This layer's format, as the cache's token index tells formats apart: a token
    /// indexed for one format is not an answer for a layer of another sharing the cache.
    format_tag: u64,
    cache: CachedVerifier<V>,
    policy: Policy,
    optional: bool,
    pass_foreign: bool,
    responder: Arc<ErrorResponder>,
    /// Whether `responder` differs from the defaults: then it travels in the request's
    /// extensions, so that extractors and guards answer in the same format.
    custom_responses: bool,
    usage: Option<UsageRecorder>,
    /// Rate limits and credits.
    meter: Arc<Meter>,
    /// Costs known before routing (else [`DEFAULT_COST`], until a route's `Cost`).
    costs: Option<Arc<RouteCosts>>,
    /// Verifications by outcome, registered when the layer is built.
    outcomes: Arc<Outcomes>,
}

/// What [`ApiKeyLayer::route_costs`] takes.
type RouteCosts = dyn Fn(&http::Method, &str) -> Option<u32> + Send + Sync;

impl<V> Clone for Shared<V> {
    fn clone(&self) -> Self {
        Shared {
            format: self.format.clone(),
            format_tag: self.format_tag,
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            optional: self.optional,
            pass_foreign: self.pass_foreign,
            responder: Arc::clone(&self.responder),
            custom_responses: self.custom_responses,
            usage: self.usage.clone(),
            meter: Arc::clone(&self.meter),
            costs: self.costs.clone(),
            outcomes: Arc::clone(&self.outcomes),
        }
    }
}

impl<V> Shared<V> {
    /// The response refusing a request, noted in its span.
    fn refuse(&self, span: &tracing::Span, error: &AuthError) -> Response<Bytes> {
        self.outcomes.count(error.code());
        span.record("outcome", error.code());
        tracing::debug!(parent: span, code = error.code(), "API key rejected");
        self.responder.respond(error)
    }

    /// Puts a custom renderer into the request's extensions, for the extractors and
    /// guards behind the layer (the default needs none: they fall back to it).
    fn lend_responder<B>(&self, request: &mut Request<B>) {
        if self.custom_responses {
            request.extensions_mut().insert(Arc::clone(&self.responder));
        }
    }

    /// The meter, to change while configuring (before the layer is cloned into a
    /// service; a clone made earlier keeps the meter it had).
    fn meter_mut(&mut self) -> &mut Meter {
        if Arc::get_mut(&mut self.meter).is_none() {
            let old = &self.meter;
            let mut meter = Meter::new(None);
            meter.slots = Arc::clone(&old.slots);
            meter.ledger = Arc::clone(&old.ledger);
            meter.limiter = old.limiter.clone();
            #[cfg(feature = "redis")]
            {
                meter.redis.clone_from(&old.redis);
            }
            self.meter = Arc::new(meter);
        }
        Arc::get_mut(&mut self.meter).expect("unique after the copy")
    }
}

impl<V: KeyVerifier> Shared<V> {
    /// Lookup → policy → principal, and what it spends (rate limits, credits).
    #[inline]
    fn decide(
        &self,
        found: Lookup,
        request: &RequestView<'_>,
    ) -> Result<(Principal, Spent), AuthError> {
        match found {
            Lookup::Unknown => Err(AuthError::InvalidKey),
            Lookup::Found(record) => {
                if let Err(error) = self.policy.check(&record, request) {
                    self.count(&record, request, error.code());
                    return Err(error);
                }
                let cost = self.cost_of(request);
                let spent = match self.meter.spend(&record, cost, 0) {
                    Spent::Now(Err(error)) => {
                        self.count(&record, request, error.code());
                        return Err(error);
                    }
                    spent => spent,
                };
                if matches!(spent, Spent::Now(_)) {
                    self.count(&record, request, "accepted");
                }
                Ok((Principal::new(record), spent))
            }
        }
    }

    /// Counts a request that reached `record`'s key, by outcome, for its hourly usage
    /// (when the layer records usage).
    fn count(
        &self,
        record: &Arc<crate::record::KeyRecord>,
        request: &RequestView<'_>,
        outcome: &'static str,
    ) {
        if let Some(usage) = &self.usage {
            let ip = self.policy.client_ip_of(request);
            usage.count(record, self.policy.now(), outcome, ip);
        }
    }

    /// [`count`](Self::count) for a spend that had to wait: `principal`'s request ended
    /// as `outcome`.
    fn count_spent<B, T>(
        &self,
        principal: &Principal,
        request: &Request<B>,
        outcome: &Result<T, AuthError>,
    ) {
        let code = outcome
            .as_ref()
            .map_or_else(AuthError::code, |_| "accepted");
        self.count(&principal.shared_record(), &RequestView::of(request), code);
    }

    /// What `request` costs before routing: its cost by
    /// [`route_costs`](ApiKeyLayer::route_costs), else the default.
    fn cost_of(&self, request: &RequestView<'_>) -> u32 {
        match &self.costs {
            Some(costs) => costs(request.method, request.uri.path()).unwrap_or(DEFAULT_COST),
            None => DEFAULT_COST,
        }
    }

    /// Puts the principal (and, when the key spends anything, the ticket a route's
    /// `Cost` adjusts) into the request.
    #[inline]
    fn admit<B>(&self, request: &mut Request<B>, principal: Principal) {
        if crate::meter::costs_in_use() && self.meter.applies(principal.record()) {
            let cost = self.cost_of(&RequestView::of(request));
            request.extensions_mut().insert(self.meter.ticket(cost));
        }
        request.extensions_mut().insert(principal);
    }
}

/// Adds API-key authentication to a service. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use tower_api_keys::{ApiKeyLayer, CachedVerifier, key::{Environment, KeyFormat}, store::MemoryStore};
///
/// let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()))
///     .environment(Environment::LIVE) // sk_test_ keys get 401 environment_mismatch
///     .realm("example")
///     .retry_after(Duration::from_secs(10));
/// ```
pub struct ApiKeyLayer<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for ApiKeyLayer<V> {
    fn clone(&self) -> Self {
        ApiKeyLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<V> fmt::Debug for ApiKeyLayer<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("format", &self.shared.format)
            .field("policy", &self.shared.policy)
            .field("optional", &self.shared.optional)
            .field("pass_foreign_tokens", &self.shared.pass_foreign)
            .field("responder", &self.shared.responder)
            .finish_non_exhaustive()
    }
}

impl<V: KeyVerifier> ApiKeyLayer<V> {
    /// Authenticates keys of `format`, looked up through `cache`.
    ///
    /// Keep a clone of `cache` to invalidate entries when keys are revoked.
    #[must_use]
    pub fn new(format: KeyFormat, cache: CachedVerifier<V>) -> Self {
        static FORMATS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        ApiKeyLayer {
            shared: Arc::new(Shared {
                format,
                format_tag: FORMATS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                policy: Policy::new(),
                optional: false,
                pass_foreign: false,
                responder: Arc::new(ErrorResponder::default()),
                custom_responses: false,
                usage: None,
                meter: Arc::new(Meter::new(cache.verifier().credit_store())),
                costs: None,
                outcomes: Arc::new(Outcomes::verifications()),
                cache,
            }),
        }
    }

    fn with_shared(mut self, change: impl FnOnce(&mut Shared<V>)) -> Self {
        change(Arc::make_mut(&mut self.shared));
        self
    }

    fn with_responder(self, change: impl FnOnce(&mut ErrorResponder)) -> Self {
        self.with_shared(|shared| {
            change(Arc::make_mut(&mut shared.responder));
            shared.custom_responses = true;
        })
    }

    /// The environment this deployment serves: keys of any other environment get 401
    /// `environment_mismatch`. By default every environment is accepted.
    #[must_use]
    pub fn environment(self, environment: Environment) -> Self {
        self.with_shared(|shared| shared.policy = shared.policy.clone().environment(environment))
    }

    /// The environment each request is served in, chosen by `resolver` (such as
    /// [`EnvironmentByHost`](crate::policy::EnvironmentByHost): one host per
    /// environment): keys of another environment get 401 `environment_mismatch`.
    /// Replaces [`environment`](Self::environment).
    #[must_use]
    pub fn environment_by(self, resolver: impl EnvironmentResolver) -> Self {
        self.with_shared(|shared| shared.policy = shared.policy.clone().environment_by(resolver))
    }

    /// Lets requests without a key through with no [`Principal`] (handlers take
    /// `Option<Principal>`). A key that is present but bad is still rejected.
    #[must_use]
    pub fn optional(self) -> Self {
        self.with_shared(|shared| shared.optional = true)
    }

    /// Hands requests whose bearer token is not an API key at all (it does not start
    /// with the format's `{prefix}_`: a session JWT, an OAuth token) on to the inner
    /// service without a [`Principal`] and with a
    /// [`ForeignToken`] marker, so one `Authorization`
    /// header can carry either a key or another credential that the service checks
    /// itself. A token that does start with the prefix is a key, and a bad one is
    /// still refused with 401 `invalid_api_key`.
    ///
    /// **Every route behind the layer must then authenticate a request without a
    /// [`Principal`] itself**: any non-key bearer token gets through. Put the layer with
    /// this option only on the routes that check the other credential (extract
    /// `Option<Principal>` and verify the token when it is `None`), and a plain layer
    /// on the others.
    #[must_use]
    pub fn pass_foreign_tokens(self) -> Self {
        self.with_shared(|shared| shared.pass_foreign = true)
    }

    /// The realm in `WWW-Authenticate` challenges (default `api`).
    ///
    /// # Panics
    /// If the realm contains `"`, `\` or characters not allowed in a header value.
    #[must_use]
    pub fn realm(self, realm: &str) -> Self {
        self.with_responder(|responder| responder.set_realm(realm))
    }

    /// The `Retry-After` sent with 503 `auth_unavailable` (default 5 s).
    #[must_use]
    pub fn retry_after(self, after: Duration) -> Self {
        self.with_responder(|responder| responder.set_retry_after(after))
    }

    /// Replaces the body format of rejections (default
    /// [`JsonErrorFormat`](crate::error::JsonErrorFormat); an
    /// [`Envelope`](crate::error::Envelope) for other shapes). Applies to the
    /// extractors' and guards' rejections too.
    #[must_use]
    pub fn error_format(self, format: impl ErrorFormat) -> Self {
        let format: Arc<dyn ErrorFormat> = Arc::new(format);
        self.with_responder(|responder| responder.set_format(format))
    }

    /// The clock for expiry and grace periods (default: the system clock).
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.with_shared(|shared| shared.policy = shared.policy.clone().clock(clock))
    }

    /// Where requests name their project: keys locked to another project get 403
    /// `project_forbidden`. For example `ProjectFromPath::after("projects")`.
    #[must_use]
    pub fn projects(self, resolver: impl ProjectResolver) -> Self {
        self.with_shared(|shared| shared.policy = shared.policy.clone().projects(resolver))
    }

    /// Proxies (CIDR ranges) whose `X-Forwarded-For` entries are believed when
    /// checking keys' IP restrictions. By default none: the peer address counts.
    #[must_use]
    pub fn trusted_proxies(self, ranges: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        let ranges: Vec<_> = ranges.into_iter().collect();
        self.with_shared(|shared| shared.policy = shared.policy.clone().trusted_proxies(ranges))
    }

    /// Notes each accepted key's use in `recorder`, to be flushed to the store in
    /// batches (see [`usage`](crate::usage)).
    #[must_use]
    pub fn record_usage(self, recorder: UsageRecorder) -> Self {
        self.with_shared(|shared| shared.usage = Some(recorder))
    }

    /// Adds a rate limit that every key has, each on its own (at most
    /// [`MAX_LIMITS`](crate::limit::MAX_LIMITS) of them, names unique). Every accepted
    /// request spends one unit; a key that has spent a limit gets 429 `rate_limited`
    /// with `Retry-After`, `RateLimit` and `RateLimit-Policy`, and accepted responses
    /// carry `RateLimit`/`RateLimit-Policy` for the limit closest to exhaustion. The
    /// state is in this process (see [`limit`](crate::limit)).
    ///
    /// # Panics
    /// If the limits would be more than five, or a name repeats.
    #[must_use]
    pub fn rate_limit(self, limit: RateLimit) -> Self {
        self.add_limit(limit, Per::Key)
    }

    /// Adds a rate limit that every account has, shared by all its keys (the keys of
    /// one account spend one quota); otherwise like [`rate_limit`](Self::rate_limit),
    /// and counted in the same five.
    ///
    /// # Panics
    /// If the limits would be more than five, or a name repeats.
    #[must_use]
    pub fn rate_limit_per_account(self, limit: RateLimit) -> Self {
        self.add_limit(limit, Per::Account)
    }

    fn add_limit(self, limit: RateLimit, per: Per) -> Self {
        self.with_shared(|shared| {
            let meter = shared.meter_mut();
            let mut all: Vec<RateLimit> =
                meter.slots.iter().map(|s| s.slot.limit.clone()).collect();
            all.push(limit.clone());
            if let Err(error) = RateLimit::check_all(&all) {
                panic!("{error}");
            }
            let slot = Slot::new(limit);
            let mut slots: Vec<LayerSlot> = meter
                .slots
                .iter()
                .map(|old| LayerSlot {
                    per: old.per,
                    slot: old.slot.clone(),
                })
                .collect();
            slots.push(LayerSlot { per, slot });
            meter.slots = slots.into();
        })
    }

    /// Shares rate limits with every instance using the same Redis (feature `redis`):
    /// each check is one atomic script; when Redis fails the layer falls back to its
    /// in-process limiter (see [`limit::redis`](crate::limit::redis)).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[must_use]
    pub fn shared_limits(self, redis: crate::limit::redis::RedisLimiter) -> Self {
        self.with_shared(|shared| shared.meter_mut().redis = Some(redis))
    }

    /// Costs that are known before routing: `costs(method, path)` is the cost of a
    /// request (`None`: the default, 1). A route's [`Cost`](crate::meter::Cost) layer
    /// still has the last word, but it runs after the layer has spent the cost known
    /// here: so a route that must pass when a key's limits or credits are spent (cost
    /// 0: a status or billing page) is declared here, and so is a costly route whose
    /// refusals should say when its whole cost fits (`Retry-After`).
    ///
    /// ```
    /// use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyFormat, MemoryStore};
    ///
    /// let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()))
    ///     .route_costs(|method, path| match (method.as_str(), path) {
    ///         (_, "/v1/usage") => Some(0),
    ///         ("POST", "/v1/items") => Some(5),
    ///         _ => None,
    ///     });
    /// ```
    #[must_use]
    pub fn route_costs(
        self,
        costs: impl Fn(&http::Method, &str) -> Option<u32> + Send + Sync + 'static,
    ) -> Self {
        let costs: Arc<RouteCosts> = Arc::new(costs);
        self.with_shared(|shared| shared.costs = Some(costs))
    }

    /// How many credits an instance takes from the store at a time (default 100; at
    /// least 1). Larger blocks write the store less often and widen the window in
    /// which one instance holds credits that another cannot spend (see
    /// [`meter`](crate::meter)); 1 writes once per request.
    #[must_use]
    pub fn credit_lease(self, block: u64) -> Self {
        self.shared.meter.ledger.set_block(block);
        self
    }

    /// Gives the credits this instance leased back to the store: call it on shutdown,
    /// after the server has stopped taking requests.
    pub async fn return_credits(&self) {
        self.shared.meter.ledger.return_all().await;
    }

    /// The cache this layer looks keys up through.
    #[must_use]
    pub fn cache(&self) -> &CachedVerifier<V> {
        &self.shared.cache
    }
}

impl<S, V> Layer<S> for ApiKeyLayer<V> {
    type Service = ApiKeyAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`ApiKeyLayer`] wraps around `S`.
pub struct ApiKeyAuth<S, V> {
    inner: S,
    shared: Arc<Shared<V>>,
}

impl<S: Clone, V> Clone for ApiKeyAuth<S, V> {
    fn clone(&self) -> Self {
        ApiKeyAuth {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Clone, V> ApiKeyAuth<S, V> {
    /// A copy whose shared handle is an allocation of its own, over the same cache,
    /// store, limits and metrics: what a server gives each connection, so that the
    /// clone it makes per request counts a reference only that connection's thread
    /// touches.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn for_connection(&self) -> Self {
        ApiKeyAuth {
            inner: self.inner.clone(),
            shared: Arc::new((*self.shared).clone()),
        }
    }
}

impl<S: fmt::Debug, V> fmt::Debug for ApiKeyAuth<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field(
                "layer",
                &ApiKeyLayer {
                    shared: Arc::clone(&self.shared),
                },
            )
            .finish()
    }
}

impl<S, V, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyAuth<S, V>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes>,
    V: KeyVerifier,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        // With no subscriber ever set nobody wants the span, and a disabled one would
        // still do the `log` crate's work when made, recorded and dropped (tracing's
        // `log` feature), which `Span::none` skips. With a subscriber the span is made
        // as usual (filters on its name keep working) and kept only if enabled.
        let span = if tracing::dispatcher::has_been_set() {
            let span = tracing::debug_span!(
                "api_key_auth",
                key_id = Empty,
                account_id = Empty,
                outcome = Empty
            );
            if span.is_disabled() {
                tracing::Span::none()
            } else {
                span
            }
        } else {
            tracing::Span::none()
        };
        let found = match bearer_bytes(request.headers()) {
            // A token the cache knows: no character, format or checksum check, no
            // SHA-256 (it passed them when it was indexed).
            Ok(Some(raw)) => match shared.cache.get_by_token(shared.format_tag, raw) {
                Ok(found) => found,
                Err(miss) => {
                    let token = match checked_token(raw) {
                        Ok(token) => token,
                        Err(error) => return self.reject(&span, error),
                    };
                    match shared.format.parse(token) {
                        Ok(parsed) => {
                            let hash = parsed.hash();
                            let tag = parsed.environment();
                            match shared.cache.get_cached_for(&hash, miss, tag) {
                                Some(found) if !found.agrees_with(tag) => {
                                    return self.reject(&span, disagreeing(&span));
                                }
                                Some(found) => found,
                                None => {
                                    let tag = tag.clone();
                                    return self.verify_then_call(request, hash, tag, span);
                                }
                            }
                        }
                        Err(_) if shared.pass_foreign && !shared.format.looks_like_key(token) => {
                            shared.outcomes.count("foreign_token");
                            span.record("outcome", "foreign_token");
                            request.extensions_mut().insert(ForeignToken);
                            return self.call_inner(request);
                        }
                        Err(reason) => {
                            tracing::debug!(parent: &span, %reason, "malformed API key");
                            return self.reject(&span, AuthError::InvalidKey);
                        }
                    }
                }
            },
            Ok(None) if shared.optional => {
                shared.outcomes.count("anonymous");
                span.record("outcome", "anonymous");
                request.extensions_mut().insert(Anonymous);
                return self.call_inner(request);
            }
            Ok(None) => return self.reject(&span, AuthError::MissingKey),
            Err(error) => return self.reject(&span, error),
        };

        match shared.decide(found, &RequestView::of(&request)) {
            Ok((principal, Spent::Now(quota))) => {
                record_accepted(shared, &span, &principal);
                shared.admit(&mut request, principal);
                self.call_limited(request, quota.ok().flatten())
            }
            Ok((principal, Spent::Later(spending))) => {
                shared.admit(&mut request, principal);
                self.spend_then_call(request, spending, span)
            }
            Err(error) => self.reject(&span, error),
        }
    }
}

impl<S, V: KeyVerifier> ApiKeyAuth<S, V> {
    fn call_inner<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        self.call_limited(request, None)
    }

    /// The response future of a request decided by `verification`: the ready service
    /// goes into the future, `self` keeps a fresh clone.
    fn deferred<ReqBody>(
        &mut self,
        verification: VerifyFuture<ReqBody>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>> + Clone,
    {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Verify {
                fut: verification,
                inner: Some(inner),
            },
        }
    }

    /// The key is known but its spend waits for Redis or the credit store.
    fn spend_then_call<ReqBody, ResBody>(
        &mut self,
        mut request: Request<ReqBody>,
        spending: SpendFuture,
        span: tracing::Span,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ReqBody: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let verification: VerifyFuture<ReqBody> = Box::pin(async move {
            let outcome = spending.await;
            if let Some(principal) = request.extensions().get::<Principal>() {
                shared.count_spent(principal, &request, &outcome);
            }
            match outcome {
                Ok(quota) => {
                    if let Some(principal) = request.extensions().get::<Principal>() {
                        record_accepted(&shared, &span, principal);
                    }
                    shared.lend_responder(&mut request);
                    Verified(Outcome::Accepted(request, quota))
                }
                Err(error) => Verified(Outcome::Rejected(shared.refuse(&span, &error))),
            }
        });
        self.deferred(verification)
    }

    /// Calls the inner service; its response gets the `quota`'s headers.
    #[inline]
    fn call_limited<ReqBody, ResBody>(
        &mut self,
        mut request: Request<ReqBody>,
        quota: Option<Quota>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        self.shared.lend_responder(&mut request);
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(request),
                quota,
            },
        }
    }

    fn reject<ReqBody, ResBody>(
        &self,
        span: &tracing::Span,
        error: AuthError,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: From<Bytes>,
    {
        self.shared.outcomes.count(error.code());
        span.record("outcome", error.code());
        tracing::debug!(parent: span, code = error.code(), "API key rejected");
        ResponseFuture {
            state: State::Reject {
                response: Some(self.shared.responder.respond(&error)),
            },
        }
    }

    /// The cache missed: ask the verifier, then call the inner service.
    fn verify_then_call<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        hash: KeyHash,
        tag: Environment,
        span: tracing::Span,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ReqBody: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let verification: VerifyFuture<ReqBody> = Box::pin(async move {
            let mut request = request;
            let decision = match shared.cache.load(hash).await {
                Ok(found) if !found.agrees_with(&tag) => Err(disagreeing(&span)),
                Ok(found) => match shared.decide(found, &RequestView::of(&request)) {
                    Ok((principal, Spent::Now(quota))) => quota.map(|quota| (principal, quota)),
                    Ok((principal, Spent::Later(spending))) => {
                        let outcome = spending.await;
                        shared.count_spent(&principal, &request, &outcome);
                        outcome.map(|quota| (principal, quota))
                    }
                    Err(error) => Err(error),
                },
                Err(error) => {
                    // At error level once per incident, by the cache.
                    tracing::debug!(parent: &span, %error, "API key verifier failed");
                    Err(AuthError::Unavailable)
                }
            };
            match decision {
                Ok((principal, quota)) => {
                    record_accepted(&shared, &span, &principal);
                    shared.admit(&mut request, principal);
                    shared.lend_responder(&mut request);
                    Verified(Outcome::Accepted(request, quota))
                }
                Err(error) => Verified(Outcome::Rejected(shared.refuse(&span, &error))),
            }
        });
        self.deferred(verification)
    }
}

/// The refusal of a key whose record is of another environment than its tag names (an
/// imported hash given the wrong environment): not valid as presented.
fn disagreeing(span: &tracing::Span) -> AuthError {
    tracing::debug!(
        parent: span,
        "the API key's tag names another environment than its record"
    );
    AuthError::InvalidKey
}

#[inline]
fn record_accepted<V>(shared: &Shared<V>, span: &tracing::Span, principal: &Principal) {
    shared.outcomes.accepted();
    // Recording into a disabled span still builds its value set: skip it.
    if span.is_disabled() {
        return;
    }
    span.record("key_id", principal.key_id().as_str());
    span.record("account_id", principal.account_id());
    span.record("outcome", "accepted");
}

/// The outcome of a verification that had to go to the verifier (opaque).
#[derive(Debug)]
pub(crate) struct Verified<B>(Outcome<B>);

#[derive(Debug)]
enum Outcome<B> {
    Accepted(Request<B>, Option<Quota>),
    Rejected(Response<Bytes>),
}

/// The boxed future of a cache miss: verifier lookup and policy checks.
pub(crate) type VerifyFuture<B> = Pin<Box<dyn Future<Output = Verified<B>> + Send + 'static>>;

pin_project! {
    /// The response future of [`ApiKeyAuth`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Verify {
            fut: VerifyFuture<ReqBody>,
            inner: Option<S>,
        },
        Inner {
            #[pin]
            fut: S::Future,
            quota: Option<Quota>,
        },
        Reject {
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Verify { .. } => "Verify",
            State::Inner { .. } => "Inner",
            State::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Verify { fut, inner } => match ready!(fut.as_mut().poll(cx)) {
                    Verified(Outcome::Accepted(request, quota)) => {
                        let mut inner = inner.take().expect("polled after completion");
                        let fut = inner.call(request);
                        state.set(State::Inner { fut, quota });
                    }
                    Verified(Outcome::Rejected(response)) => {
                        return Poll::Ready(Ok(response.map(ResBody::from)));
                    }
                },
                StateProj::Inner { fut, quota } => {
                    let mut response = ready!(fut.poll(cx))?;
                    if let Some(quota) = quota.take() {
                        let status = response.status();
                        quota.insert_into(status, response.headers_mut());
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Reject { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Environment;
    use crate::scope::Scopes;
    use crate::store::{KeyStore as _, MemoryStore, create_for_test};
    use tower::ServiceExt as _;

    type Body = http_body_util::Full<Bytes>;

    /// An inner service that answers 200 to anything.
    fn ok() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::default()))
        })
    }

    fn shas() -> u64 {
        crate::key::tests::SHA_CALLS.with(std::cell::Cell::get)
    }

    async fn status<S>(service: &S, token: &str) -> u16
    where
        S: Service<Request<Body>, Response = Response<Body>> + Clone,
        S::Error: fmt::Debug,
    {
        let request = Request::get("/")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::default())
            .unwrap();
        service
            .clone()
            .oneshot(request)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cache_hit_computes_no_sha256_and_a_revocation_still_stops_it() {
        let store = MemoryStore::new();
        let created = create_for_test(&store, "acct", "k", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let cache = CachedVerifier::new(store.clone());
        let layer = ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone());
        let service = layer.layer(ok());
        let token = created.key.expose_secret();
        // A miss, then a hit by hash (which fills the token index).
        assert_eq!(status(&service, token).await, 200);
        assert_eq!(status(&service, token).await, 200);
        let before = shas();
        for _ in 0..100 {
            assert_eq!(status(&service, token).await, 200);
        }
        assert_eq!(shas() - before, 0, "hits hashed the token");

        // Revoked by id (what revocation knows): stops at once, hot or not.
        store.revoke("acct", &created.info.id).await.unwrap();
        cache.invalidate_key_id(&created.info.id);
        assert_eq!(status(&service, token).await, 401);

        // A malformed token is refused without a hash and without the store.
        let calls = cache.stats().verifier_calls;
        let before = shas();
        let mut typo = token.to_owned();
        typo.pop();
        typo.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(status(&service, &typo).await, 401);
        assert_eq!(shas() - before, 0);
        assert_eq!(cache.stats().verifier_calls, calls);
    }

    /// A connection's copy has a handle of its own over the same cache: what one
    /// copy's cache learns or forgets, every copy does.
    #[tokio::test(flavor = "current_thread")]
    async fn a_copy_for_a_connection_shares_the_cache_but_not_the_handle() {
        let store = MemoryStore::new();
        let created = create_for_test(&store, "acct", "k", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let cache = CachedVerifier::new(store.clone());
        let service = ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone()).layer(ok());
        let copy = service.for_connection();
        assert!(!Arc::ptr_eq(&service.shared, &copy.shared));
        let token = created.key.expose_secret();
        assert_eq!(status(&service, token).await, 200);
        let calls = cache.stats().verifier_calls;
        assert_eq!(status(&copy, token).await, 200);
        assert_eq!(
            cache.stats().verifier_calls,
            calls,
            "the copy's cache is the same"
        );
        store.revoke("acct", &created.info.id).await.unwrap();
        cache.invalidate_key_id(&created.info.id);
        assert_eq!(status(&copy, token).await, 401);
    }

    /// Threads hitting one hot key each get their own copy of its record (the count
    /// of references a request takes is then one no other thread writes), and the
    /// copies share the record's runtime state: its stored rate limit stays exact.
    #[test]
    fn threads_get_their_own_copy_of_a_hot_record_and_share_its_limits() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let store = MemoryStore::new();
        let created = runtime().block_on(async {
            let created = create_for_test(&store, "acct", "k", Environment::LIVE, Scopes::none())
                .await
                .unwrap();
            let limit =
                crate::limit::RateLimit::new("requests", 150, std::time::Duration::from_secs(3600))
                    .unwrap();
            let changes = crate::store::KeyChanges {
                ratelimits: Some(vec![limit]),
                ..Default::default()
            };
            store
                .update("acct", &created.info.id, &changes)
                .await
                .unwrap();
            created
        });
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&records);
        let service = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(store)).layer(
            tower::service_fn(move |request: Request<Body>| {
                let record = request
                    .extensions()
                    .get::<Principal>()
                    .unwrap()
                    .shared_record();
                seen.lock().unwrap().push(record);
                async { Ok::<_, std::convert::Infallible>(Response::new(Body::default())) }
            }),
        );
        let token = created.key.expose_secret();
        let statuses: Vec<Vec<u16>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let service = service.clone();
                    scope.spawn(move || {
                        let runtime = runtime();
                        (0..100)
                            .map(|_| runtime.block_on(status(&service, token)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let all: Vec<u16> = statuses.concat();
        assert_eq!(
            all.iter().filter(|s| **s == 200).count(),
            150,
            "the limit, exact"
        );
        assert_eq!(all.iter().filter(|s| **s == 429).count(), 50);
        let records = records.lock().unwrap();
        let distinct: std::collections::HashSet<usize> = records
            .iter()
            .map(|record| Arc::as_ptr(record) as usize)
            .collect();
        // The first requests go the long way (the cache's own record); each thread's
        // hits then take its stripe's copy (two, unless the threads share a stripe).
        assert!(
            (2..=3).contains(&distinct.len()),
            "{} distinct records",
            distinct.len()
        );
        assert!(records.iter().all(|record| **record == *records[0]));
    }

    /// Two layers of different formats on one cache: a key one of them accepts (and
    /// indexes) is still refused by the other, as its format check would.
    #[tokio::test(flavor = "current_thread")]
    async fn a_token_indexed_for_one_format_is_refused_by_another() {
        let store = MemoryStore::new();
        let created = create_for_test(&store, "acct", "k", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let cache = CachedVerifier::new(store.clone());
        let sk = ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone()).layer(ok());
        let pk = ApiKeyLayer::new(KeyFormat::new("pk"), cache.clone()).layer(ok());
        let token = created.key.expose_secret();
        for _ in 0..3 {
            assert_eq!(status(&sk, token).await, 200);
        }
        assert_eq!(status(&pk, token).await, 401, "another format's key");
    }

    /// A key the cache evicted for size, still answered by the token index, stops at
    /// once when revoked by id (the cache no longer knows its hash).
    #[tokio::test(flavor = "current_thread")]
    async fn a_hot_key_evicted_for_size_stops_when_revoked_by_id() {
        let store = MemoryStore::new();
        let mut keys = Vec::new();
        for name in ["a", "b", "c"] {
            keys.push(
                create_for_test(&store, "acct", name, Environment::LIVE, Scopes::none())
                    .await
                    .unwrap(),
            );
        }
        let cache = CachedVerifier::builder(store.clone())
            .max_capacity(1)
            .build();
        let layer = ApiKeyLayer::new(KeyFormat::new("sk"), cache.clone());
        let service = layer.layer(ok());
        let hot = keys[0].key.expose_secret();
        for _ in 0..3 {
            assert_eq!(status(&service, hot).await, 200);
        }
        // Others push it out of the cache (for size); the index still answers for it.
        for key in &keys[1..] {
            assert_eq!(status(&service, key.key.expose_secret()).await, 200);
            cache.run_pending_tasks();
        }
        // An invalidation of something uncached, before the revocation.
        cache.invalidate_key_id(&crate::key::KeyId::new("ak_nothing"));
        store.revoke("acct", &keys[0].info.id).await.unwrap();
        cache.invalidate_key_id(&keys[0].info.id);
        assert_eq!(
            status(&service, hot).await,
            401,
            "served after its revocation"
        );
    }
}
