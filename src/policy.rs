//! The request-time rules for a known key, as plain functions, and [`Policy`], which
//! applies them in a fixed order.
//!
//! The whole order, the first failing rule deciding the answer:
//!
//! | # | rule | answer |
//! |---|---|---|
//! | 1 | format and checksum ([`KeyFormat::parse`](crate::key::KeyFormat::parse)) | 401 `invalid_api_key` |
//! | 2 | lookup (unknown key) | 401 `invalid_api_key` |
//! | 3 | `check_revoked` | 401 `api_key_revoked` |
//! | 4 | `check_expiry` | 401 `api_key_expired` |
//! | 5 | `check_environment` | 401 `environment_mismatch` |
//! | 6 | `check_standing` (past due beyond the grace period) | 402 `payment_required` |
//! | 7 | `check_project` | 403 `project_forbidden` |
//! | 8 | `check_ip`, `check_referrer`, `check_endpoint` | 403 `ip_not_allowed`, `referrer_not_allowed`, `endpoint_not_allowed` |
//! | 9 | scope, per route ([`RequireScope`](crate::RequireScope), [`ScopeGuardLayer`](crate::guard::ScopeGuardLayer)) | 403 `insufficient_scope` |
//!
//! Rules 1–8 run in the layer; rule 9 belongs to each route.
//!
//! ```
//! use tower_api_keys::{AuthError, KeyRecord, key::{Environment, KeyId}};
//! use tower_api_keys::policy::{Policy, RequestView};
//!
//! let policy = Policy::new().environment(Environment::LIVE);
//! let record = KeyRecord::new(KeyId::new("ak_1"), "k", "acct", Environment::TEST);
//! let request = http::Request::new(());
//! assert_eq!(policy.check(&record, &RequestView::of(&request)), Err(AuthError::EnvironmentMismatch));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Request, Uri};
use ipnet::IpNet;
use time::OffsetDateTime;

use crate::client_ip::client_ip;
use crate::clock::{Clock, SystemClock};
use crate::error::AuthError;
use crate::key::Environment;
use crate::record::{AccountStanding, KeyRecord};

/// What the rules may read of a request: borrowed, never copied.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'r> {
    /// The method.
    pub method: &'r Method,
    /// The URI.
    pub uri: &'r Uri,
    /// The headers.
    pub headers: &'r HeaderMap,
    /// The extensions (where the server put the peer address).
    pub extensions: &'r Extensions,
}

impl<'r> RequestView<'r> {
    /// A view of `request`.
    #[must_use]
    pub fn of<B>(request: &'r Request<B>) -> Self {
        RequestView {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// Tells the layer which project a request addresses, so keys locked to another
/// project get 403 `project_forbidden`.
///
/// [`ProjectFromPath`] covers `/…/projects/{project_id}/…`; implement the trait for
/// anything else (a header, a subdomain).
pub trait ProjectResolver: Send + Sync + 'static {
    /// The project the request addresses, if any.
    fn project_id<'r>(&self, request: &RequestView<'r>) -> RequestedProject<'r>;
}

/// The project a request addresses, as a [`ProjectResolver`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedProject<'r> {
    /// The route names no project: every key passes.
    None,
    /// The route names this project: keys locked to another are refused.
    Named(Cow<'r, str>),
    /// The request could name a project in more than one way (or unreadably): keys
    /// locked to a project are refused, keys without one pass.
    Ambiguous,
}

impl RequestedProject<'_> {
    /// The same, owning its project id.
    #[must_use]
    pub fn into_owned(self) -> RequestedProject<'static> {
        match self {
            RequestedProject::None => RequestedProject::None,
            RequestedProject::Named(id) => RequestedProject::Named(Cow::Owned(id.into_owned())),
            RequestedProject::Ambiguous => RequestedProject::Ambiguous,
        }
    }
}

/// The path segment after a fixed one: `ProjectFromPath::after("projects")` reads
/// `proj_1` from `/v1/projects/proj_1/jobs`.
///
/// The rule, which is how axum's router reads a `/projects/{project_id}` route: the
/// path is split at `/`; the segment equal to `after` (compared as sent, like a route's
/// fixed segments) is followed by the project id, percent-decoded like axum's `Path`
/// parameters (`proj%201` is `proj 1`). A path where `after` occurs more than once, or
/// whose id does not decode to UTF-8, is [ambiguous](RequestedProject::Ambiguous):
/// keys locked to a project are refused there. No such segment, or an empty id: no
/// project.
///
/// The layer sees the path as the router it wraps sees it: put the layer on the
/// outermost router (or match on the path inside a `nest`).
#[derive(Debug, Clone)]
pub struct ProjectFromPath {
    after: Box<str>,
}

impl ProjectFromPath {
    /// The segment following `segment`.
    #[must_use]
    pub fn after(segment: &str) -> Self {
        ProjectFromPath {
            after: segment.into(),
        }
    }
}

impl ProjectResolver for ProjectFromPath {
    fn project_id<'r>(&self, request: &RequestView<'r>) -> RequestedProject<'r> {
        let path = request.uri.path();
        let mut segments = path.split('/');
        if segments
            .by_ref()
            .find(|segment| **segment == *self.after)
            .is_none()
        {
            return RequestedProject::None;
        }
        let id = segments.next().unwrap_or_default();
        if id == &*self.after || segments.any(|segment| *segment == *self.after) {
            return RequestedProject::Ambiguous;
        }
        if id.is_empty() {
            return RequestedProject::None;
        }
        match crate::percent::decode(id) {
            Some(id) => RequestedProject::Named(id),
            None => RequestedProject::Ambiguous,
        }
    }
}

/// Tells the layer which environment a request is served in, when that depends on the
/// request (a host per environment, say): keys of another environment get 401
/// `environment_mismatch`. `None`: no environment is served here, and every key is
/// refused with that code.
///
/// [`EnvironmentByHost`] covers one host per environment.
pub trait EnvironmentResolver: Send + Sync + 'static {
    /// The environment `request` is served in.
    fn environment<'s>(&'s self, request: &RequestView<'_>) -> Option<&'s Environment>;
}

/// The environment by the request's host (the URI's authority in HTTP/2, else the
/// `Host` header), ignoring the port and ASCII case; `X-Forwarded-Host` is not read:
///
/// ```
/// use tower_api_keys::key::Environment;
/// use tower_api_keys::policy::{EnvironmentByHost, EnvironmentResolver, RequestView};
///
/// let hosts = EnvironmentByHost::new()
///     .host("api.bytekit.com", Environment::LIVE)
///     .host("api-stg.bytekit.com", Environment::TEST);
/// let request = http::Request::get("/v1/scrape").header("host", "API-stg.bytekit.com:443").body(()).unwrap();
/// assert_eq!(hosts.environment(&RequestView::of(&request)), Some(&Environment::TEST));
/// let elsewhere = http::Request::get("/").header("host", "localhost").body(()).unwrap();
/// assert_eq!(hosts.environment(&RequestView::of(&elsewhere)), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnvironmentByHost {
    hosts: Vec<(Box<str>, Environment)>,
    otherwise: Option<Environment>,
}

impl EnvironmentByHost {
    /// No host yet: every key is refused until hosts are added.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests to `host` (a name without port) are served in `environment`.
    #[must_use]
    pub fn host(mut self, host: &str, environment: Environment) -> Self {
        self.hosts
            .push((host.to_ascii_lowercase().into(), environment));
        self
    }

    /// Requests to any other host (or without one) are served in `environment`; by
    /// default they serve none, and every key is refused there.
    #[must_use]
    pub fn otherwise(mut self, environment: Environment) -> Self {
        self.otherwise = Some(environment);
        self
    }
}

/// The host a request was sent to, without port: the URI's authority (HTTP/2, or an
/// absolute-form HTTP/1.1 target, where it wins over `Host`), else `Host`.
/// `X-Forwarded-Host` is not read.
fn request_host<'r>(request: &RequestView<'r>) -> Option<&'r str> {
    let authority = match request.uri.authority() {
        Some(authority) => authority.as_str(),
        None => request.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        &authority[..rest.find(']')? + 2]
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host)
    };
    Some(host.strip_suffix('.').unwrap_or(host))
}

impl EnvironmentResolver for EnvironmentByHost {
    fn environment<'s>(&'s self, request: &RequestView<'_>) -> Option<&'s Environment> {
        let host = request_host(request);
        host.and_then(|host| {
            self.hosts
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(host))
                .map(|(_, environment)| environment)
        })
        .or(self.otherwise.as_ref())
    }
}

/// Rule 3: a revoked key is refused.
pub(crate) fn check_revoked(record: &KeyRecord) -> Result<(), AuthError> {
    if record.is_revoked() {
        Err(AuthError::Revoked)
    } else {
        Ok(())
    }
}

/// Rule 4: a key is refused from its `expires_at` on.
pub(crate) fn check_expiry(record: &KeyRecord, now: OffsetDateTime) -> Result<(), AuthError> {
    if record.is_expired_at(now) {
        Err(AuthError::Expired)
    } else {
        Ok(())
    }
}

/// Rule 5: a deployment serving one environment refuses keys of another.
pub(crate) fn check_environment(
    record: &KeyRecord,
    deployment: Option<&Environment>,
) -> Result<(), AuthError> {
    match deployment {
        Some(env) if *env != record.environment => Err(AuthError::EnvironmentMismatch),
        _ => Ok(()),
    }
}

/// Rule 6: an account past due keeps full access through its grace period (up to and
/// including `past_due_since + grace_days`), then gets 402.
pub(crate) fn check_standing(
    standing: &AccountStanding,
    now: OffsetDateTime,
) -> Result<(), AuthError> {
    match standing.past_due_since {
        Some(since) if now > since + time::Duration::days(i64::from(standing.grace_days)) => {
            Err(AuthError::PaymentRequired)
        }
        _ => Ok(()),
    }
}

/// Rule 7: a key locked to a project is refused on another project's routes, and on
/// routes where the project is ambiguous. A key without a project, or a route naming
/// none, passes.
pub(crate) fn check_project(
    record: &KeyRecord,
    requested: &RequestedProject<'_>,
) -> Result<(), AuthError> {
    match (record.project_id.as_deref(), requested) {
        (None, _) | (_, RequestedProject::None) => Ok(()),
        (Some(own), RequestedProject::Named(requested)) if own == requested => Ok(()),
        _ => Err(AuthError::ProjectForbidden),
    }
}

/// Rule 8a: the client's address must be in the key's ranges, if it has any.
pub(crate) fn check_ip(record: &KeyRecord, client: Option<IpAddr>) -> Result<(), AuthError> {
    if record.restrictions.allows_ip(client) {
        Ok(())
    } else {
        Err(AuthError::IpNotAllowed)
    }
}

/// Rule 8b: the request's origin must be one of the key's, if it has any.
pub(crate) fn check_referrer(record: &KeyRecord, headers: &HeaderMap) -> Result<(), AuthError> {
    if record.restrictions.allows_referrer(headers) {
        Ok(())
    } else {
        Err(AuthError::ReferrerNotAllowed)
    }
}

/// Rule 8c: the endpoint must be one of the key's, if it has any.
pub(crate) fn check_endpoint(
    record: &KeyRecord,
    method: &Method,
    path: &str,
) -> Result<(), AuthError> {
    if record.restrictions.allows_endpoint(method, path) {
        Ok(())
    } else {
        Err(AuthError::EndpointNotAllowed)
    }
}

/// Which environments a deployment serves.
#[derive(Clone)]
enum Deployment {
    Any,
    One(Environment),
    PerRequest(Arc<dyn EnvironmentResolver>),
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deployment::Any => f.write_str("Any"),
            Deployment::One(environment) => f.debug_tuple("One").field(environment).finish(),
            Deployment::PerRequest(_) => f.write_str("PerRequest"),
        }
    }
}

/// The layer's rules and what they need: the deployment's environment, the clock, the
/// project resolver, the trusted proxies. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    environment: Deployment,
    clock: Arc<dyn Clock>,
    project: Option<Arc<dyn ProjectResolver>>,
    trusted_proxies: Arc<[IpNet]>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("environment", &self.environment)
            .field("projects", &self.project.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy {
    /// Every environment, the system clock, no project routes, no trusted proxy.
    #[must_use]
    pub fn new() -> Self {
        Policy {
            environment: Deployment::Any,
            clock: Arc::new(SystemClock),
            project: None,
            trusted_proxies: Arc::new([]),
        }
    }

    /// The environment this deployment serves.
    #[must_use]
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Deployment::One(environment);
        self
    }

    /// The environment each request is served in, by `resolver` (replaces
    /// [`environment`](Self::environment)).
    #[must_use]
    pub fn environment_by(mut self, resolver: impl EnvironmentResolver) -> Self {
        self.environment = Deployment::PerRequest(Arc::new(resolver));
        self
    }

    /// The clock for expiry and grace periods.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Where requests name their project.
    #[must_use]
    pub fn projects(mut self, resolver: impl ProjectResolver) -> Self {
        self.project = Some(Arc::new(resolver));
        self
    }

    /// Proxies whose `X-Forwarded-For` entries are believed.
    #[must_use]
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies = ranges.into_iter().collect();
        self
    }

    /// The client's address of `request`: the peer, or behind the trusted proxies the
    /// right-most untrusted `X-Forwarded-For` entry (see [`client_ip`]).
    #[must_use]
    pub fn client_ip_of(&self, request: &RequestView<'_>) -> Option<std::net::IpAddr> {
        client_ip(request.extensions, request.headers, &self.trusted_proxies)
    }

    /// The current time by this policy's clock.
    #[must_use]
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Applies rules 3–8 in order. The clock is read only for keys with an expiry or
    /// accounts past due; restrictions are looked at only when the key has some.
    pub fn check(&self, record: &KeyRecord, request: &RequestView<'_>) -> Result<(), AuthError> {
        check_revoked(record)?;
        let needs_time = record.expires_at.is_some() || record.standing.past_due_since.is_some();
        let now = needs_time.then(|| self.clock.now());
        if let Some(now) = now {
            check_expiry(record, now)?;
        }
        match &self.environment {
            Deployment::Any => {}
            Deployment::One(environment) => check_environment(record, Some(environment))?,
            Deployment::PerRequest(resolver) => match resolver.environment(request) {
                Some(environment) => check_environment(record, Some(environment))?,
                None => return Err(AuthError::EnvironmentMismatch),
            },
        }
        if let Some(now) = now {
            check_standing(&record.standing, now)?;
        }
        if let Some(resolver) = &self.project {
            check_project(record, &resolver.project_id(request))?;
        }
        if !record.restrictions.is_empty() {
            let client = if record.restrictions.allowed_ips.is_empty() {
                None
            } else {
                client_ip(request.extensions, request.headers, &self.trusted_proxies)
            };
            check_ip(record, client)?;
            check_referrer(record, request.headers)?;
            check_endpoint(record, request.method, request.uri.path())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::PeerAddr;
    use crate::clock::ManualClock;
    use crate::key::KeyId;
    use crate::restriction::Restrictions;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 0:00 UTC);

    fn key(env: Environment) -> KeyRecord {
        KeyRecord::new(KeyId::new("ak_1"), "k", "a", env)
    }

    fn get(path: &str) -> Request<()> {
        let mut request = Request::get(path).body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("198.51.100.1:4000".parse().unwrap()));
        request
    }

    fn policy() -> Policy {
        Policy::new()
            .environment(Environment::LIVE)
            .clock(ManualClock::new(NOW))
            .projects(ProjectFromPath::after("projects"))
    }

    /// Found by `cargo mutants`: IPv6 hosts, the grace period's last instant, Debug.
    #[test]
    fn ipv6_hosts_and_the_end_of_the_grace_period() {
        let by_host = EnvironmentByHost::new().host("[::1]", Environment::TEST);
        let request = Request::get("/")
            .header(http::header::HOST, "[::1]:8080")
            .body(())
            .unwrap();
        assert_eq!(
            by_host.environment(&RequestView::of(&request)),
            Some(&Environment::TEST)
        );
        let standing = AccountStanding::past_due(NOW).with_grace_days(7);
        let last = NOW + time::Duration::days(7);
        assert!(
            check_standing(&standing, last).is_ok(),
            "the last instant is in"
        );
        assert!(check_standing(&standing, last + time::Duration::nanoseconds(1)).is_err());
        let debug = format!("{:?}", policy());
        assert!(
            debug.contains("One(\"live\")") && debug.contains("projects: true"),
            "{debug}"
        );
        let debug = format!("{:?}", Policy::new().environment_by(by_host));
        assert!(debug.contains("PerRequest"), "{debug}");
        assert!(format!("{:?}", Policy::new()).contains("Any"));
    }

    #[test]
    fn hosts_choose_the_environment() {
        let hosts = EnvironmentByHost::new()
            .host("api.example.com", Environment::LIVE)
            .host("::1", Environment::TEST);
        let host = |value: &str| {
            let request = Request::get("/").header("host", value).body(()).unwrap();
            hosts.environment(&RequestView::of(&request)).cloned()
        };
        assert_eq!(host("api.example.com"), Some(Environment::LIVE));
        assert_eq!(host("API.Example.COM:8443"), Some(Environment::LIVE));
        assert_eq!(host("api.example.com."), Some(Environment::LIVE));
        assert_eq!(
            host("[::1]:3100"),
            None,
            "the brackets stay: hosts name IPv6 with them"
        );
        assert_eq!(host("evil.api.example.com"), None);
        assert_eq!(host("api.example.com.evil"), None);
        assert_eq!(host(""), None);
        // HTTP/2 has no Host header: the URI's authority counts.
        let h2 = Request::get("https://api.example.com/v1").body(()).unwrap();
        assert_eq!(
            hosts.environment(&RequestView::of(&h2)),
            Some(&Environment::LIVE)
        );
        let anywhere = hosts.clone().otherwise(Environment::TEST);
        let request = Request::get("/")
            .header("host", "localhost")
            .body(())
            .unwrap();
        assert_eq!(
            anywhere.environment(&RequestView::of(&request)),
            Some(&Environment::TEST)
        );
    }

    #[test]
    fn a_host_without_environment_refuses_every_key() {
        let policy = Policy::new().environment_by(
            EnvironmentByHost::new().host("api-stg.example.com", Environment::TEST),
        );
        let at = |host: &str| Request::get("/").header("host", host).body(()).unwrap();
        let test_key = key(Environment::TEST);
        let live_key = key(Environment::LIVE);
        let staging = at("api-stg.example.com");
        assert_eq!(policy.check(&test_key, &RequestView::of(&staging)), Ok(()));
        assert_eq!(
            policy.check(&live_key, &RequestView::of(&staging)),
            Err(AuthError::EnvironmentMismatch)
        );
        let unknown = at("localhost");
        assert_eq!(
            policy.check(&test_key, &RequestView::of(&unknown)),
            Err(AuthError::EnvironmentMismatch)
        );
    }

    #[test]
    fn the_first_failing_rule_decides() {
        let policy = policy();
        let request = get("/v1/projects/proj_b/jobs");
        let view = RequestView::of(&request);
        let past = Some(datetime!(2026-05-01 0:00 UTC));
        // Wrong in every way: each fix uncovers the next rule, in the documented order.
        let mut record = key(Environment::TEST)
            .with_revoked_at(past)
            .with_expires_at(past)
            .with_standing(AccountStanding::past_due(datetime!(2026-01-01 0:00 UTC)))
            .with_project("proj_a");
        record.restrictions = Restrictions::none()
            .ips(["203.0.113.0/24".parse().unwrap()])
            .referrers(["https://app.example.com".parse().unwrap()])
            .endpoints(["GET /v1/other".parse().unwrap()]);
        let expected = [
            AuthError::Revoked,
            AuthError::Expired,
            AuthError::EnvironmentMismatch,
            AuthError::PaymentRequired,
            AuthError::ProjectForbidden,
            AuthError::IpNotAllowed,
            AuthError::ReferrerNotAllowed,
            AuthError::EndpointNotAllowed,
        ];
        for (step, error) in expected.into_iter().enumerate() {
            assert_eq!(policy.check(&record, &view), Err(error), "step {step}");
            match step {
                0 => record.revoked_at = None,
                1 => record.expires_at = None,
                2 => record.environment = Environment::LIVE,
                3 => record.standing = AccountStanding::good(),
                4 => record.project_id = Some("proj_b".into()),
                5 => record.restrictions.allowed_ips.clear(),
                6 => record.restrictions.allowed_referrers.clear(),
                _ => record.restrictions.allowed_endpoints.clear(),
            }
        }
        assert_eq!(policy.check(&record, &view), Ok(()));
    }

    #[test]
    fn expiry_is_exclusive_of_the_last_second() {
        let key = key(Environment::LIVE).with_expires_at(Some(NOW + time::Duration::seconds(1)));
        assert_eq!(check_expiry(&key, NOW), Ok(()));
        assert_eq!(
            check_expiry(&key, NOW + time::Duration::seconds(1)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn the_grace_period_boundaries() {
        let failed = datetime!(2026-05-01 12:00 UTC);
        let standing = AccountStanding::past_due(failed);
        let week = time::Duration::days(7);
        let second = time::Duration::seconds(1);
        assert_eq!(check_standing(&standing, failed), Ok(()));
        assert_eq!(check_standing(&standing, failed + week - second), Ok(()));
        assert_eq!(
            check_standing(&standing, failed + week + second),
            Err(AuthError::PaymentRequired)
        );
        let short = standing.with_grace_days(0);
        assert_eq!(
            check_standing(&short, failed + second),
            Err(AuthError::PaymentRequired)
        );
        assert_eq!(
            check_standing(&AccountStanding::good(), failed + week * 100),
            Ok(())
        );
    }

    #[test]
    fn project_locks() {
        let locked = key(Environment::LIVE).with_project("proj_a");
        let free = key(Environment::LIVE);
        let named = |id: &'static str| RequestedProject::Named(Cow::Borrowed(id));
        assert_eq!(check_project(&locked, &named("proj_a")), Ok(()));
        assert_eq!(
            check_project(&locked, &named("proj_b")),
            Err(AuthError::ProjectForbidden)
        );
        assert_eq!(
            check_project(&locked, &RequestedProject::None),
            Ok(()),
            "account routes"
        );
        assert_eq!(
            check_project(&locked, &RequestedProject::Ambiguous),
            Err(AuthError::ProjectForbidden)
        );
        assert_eq!(check_project(&free, &named("proj_b")), Ok(()));
        assert_eq!(check_project(&free, &RequestedProject::Ambiguous), Ok(()));

        let resolver = ProjectFromPath::after("projects");
        let read = |path: &str| {
            resolver
                .project_id(&RequestView::of(&get(path)))
                .into_owned()
        };
        assert_eq!(read("/v1/projects/proj_9/runs/1"), named("proj_9"));
        for path in ["/v1/projects", "/v1/projects/", "/v1/items/projects_x"] {
            assert_eq!(read(path), RequestedProject::None, "{path}");
        }
        // Percent-decoded as axum decodes `Path` parameters.
        assert_eq!(read("/v1/projects/proj%5Fa/x"), named("proj_a"));
        assert_eq!(read("/v1/projects/proj%201"), named("proj 1"));
        assert_eq!(read("/v1/projects/100%25"), named("100%"));
        assert_eq!(read("/v1/projects/50%zz"), named("50%zz"));
        // Ambiguous: the marker twice (`/orgs/projects/projects/b` could be org
        // "projects"), or an id that is not UTF-8.
        assert_eq!(
            read("/v1/orgs/projects/projects/proj_b"),
            RequestedProject::Ambiguous
        );
        assert_eq!(
            read("/v1/projects/proj_a/projects/proj_b"),
            RequestedProject::Ambiguous
        );
        assert_eq!(read("/v1/projects/%FF"), RequestedProject::Ambiguous);
    }

    #[test]
    fn a_forged_forwarded_for_from_an_untrusted_peer_does_not_pass_an_ip_allowlist() {
        let mut record = key(Environment::LIVE);
        record.restrictions = Restrictions::none().ips(["203.0.113.0/24".parse().unwrap()]);
        let mut request = get("/v1/x");
        request
            .headers_mut()
            .insert("x-forwarded-for", "203.0.113.10".parse().unwrap());
        let trusting = policy().trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            trusting.check(&record, &RequestView::of(&request)),
            Err(AuthError::IpNotAllowed)
        );
        // From a trusted proxy, the same header is believed.
        request
            .extensions_mut()
            .insert(PeerAddr("10.0.0.1:4000".parse().unwrap()));
        assert_eq!(trusting.check(&record, &RequestView::of(&request)), Ok(()));
        // Without trusted proxies, never.
        assert_eq!(
            policy().check(&record, &RequestView::of(&request)),
            Err(AuthError::IpNotAllowed)
        );
    }

    #[test]
    fn ipv6_ranges() {
        let mut record = key(Environment::LIVE);
        record.restrictions = Restrictions::none().ips(["2001:db8:abcd::/48".parse().unwrap()]);
        assert_eq!(
            check_ip(&record, Some("2001:db8:abcd:12::1".parse().unwrap())),
            Ok(())
        );
        assert_eq!(
            check_ip(&record, Some("2001:db8:abce::1".parse().unwrap())),
            Err(AuthError::IpNotAllowed)
        );
        assert_eq!(check_ip(&record, None), Err(AuthError::IpNotAllowed));
    }
}
