//! Per-key restrictions: where a key may be used from, and for what.
//!
//! - `allowed_ips`: CIDR ranges, IPv4 or IPv6 (`203.0.113.0/24`, `2001:db8::/32`); the
//!   client's address is the connection's peer, or, behind proxies you declare trusted
//!   ([`ApiKeyLayer::trusted_proxies`](crate::ApiKeyLayer::trusted_proxies)), the
//!   right-most untrusted `X-Forwarded-For` entry.
//! - `allowed_referrers`: exact origins (`https://app.example.com`) or host wildcards
//!   (`*.example.com`: any subdomain, any scheme), matched against the `Origin` header,
//!   else the `Referer` header's origin.
//! - `allowed_endpoints`: a method (or `*`) and a path pattern where `*` matches one
//!   segment and a final `**` any rest: `GET /v1/users/*`, `* /v1/reports/**`.
//!
//! An empty list restricts nothing. Violations answer 403 `ip_not_allowed`,
//! `referrer_not_allowed`, `endpoint_not_allowed`.
//!
//! ```
//! use tower_api_keys::restriction::Restrictions;
//!
//! let restrictions: Restrictions = serde_json::from_str(r#"{
//!     "allowed_ips": ["203.0.113.0/24", "2001:db8::/32"],
//!     "allowed_referrers": ["https://app.example.com", "*.example.org"],
//!     "allowed_endpoints": ["GET /v1/users/*"]
//! }"#).unwrap();
//! assert!(restrictions.allows_ip(Some("203.0.113.9".parse().unwrap())));
//! assert!(!restrictions.allows_ip(Some("198.51.100.1".parse().unwrap())));
//! assert!(restrictions.allows_endpoint(&http::Method::GET, "/v1/users/usr_123"));
//! assert!(!restrictions.allows_endpoint(&http::Method::DELETE, "/v1/users/usr_123"));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{ORIGIN, REFERER};
use http::{HeaderMap, Method};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The restrictions of one key. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Restrictions {
    /// Client address ranges the key may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Origins the key may be used from (browser keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_referrers: Vec<ReferrerPattern>,
    /// Endpoints the key may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_endpoints: Vec<EndpointPattern>,
}

impl Restrictions {
    /// No restriction.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether nothing is restricted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.allowed_ips.is_empty()
            && self.allowed_referrers.is_empty()
            && self.allowed_endpoints.is_empty()
    }

    /// Allows only these address ranges.
    #[must_use]
    pub fn ips(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_ips = ranges.into_iter().collect();
        self
    }

    /// Allows only these origins.
    #[must_use]
    pub fn referrers(mut self, patterns: impl IntoIterator<Item = ReferrerPattern>) -> Self {
        self.allowed_referrers = patterns.into_iter().collect();
        self
    }

    /// Allows only these endpoints.
    #[must_use]
    pub fn endpoints(mut self, patterns: impl IntoIterator<Item = EndpointPattern>) -> Self {
        self.allowed_endpoints = patterns.into_iter().collect();
        self
    }

    /// Whether a client at `ip` may use the key (`None`: the address is unknown, which
    /// passes only when no range is set).
    #[must_use]
    pub fn allows_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let Some(ip) = ip.map(canonical) else {
            return false;
        };
        self.allowed_ips.iter().any(|net| net.contains(&ip))
    }

    /// Whether a request with these headers comes from an allowed origin.
    #[must_use]
    pub fn allows_referrer(&self, headers: &HeaderMap) -> bool {
        if self.allowed_referrers.is_empty() {
            return true;
        }
        let Some(origin) = request_origin(headers) else {
            return false;
        };
        self.allowed_referrers
            .iter()
            .any(|pattern| pattern.matches(&origin))
    }

    /// Whether the key may call `method path`.
    #[must_use]
    pub fn allows_endpoint(&self, method: &Method, path: &str) -> bool {
        self.allowed_endpoints.is_empty()
            || self
                .allowed_endpoints
                .iter()
                .any(|pattern| pattern.matches(method, path))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:203.0.113.9`, as dual-stack sockets report
/// IPv4 peers) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A restriction could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid restriction {0:?}")]
pub struct InvalidRestriction(pub String);

/// An origin, lowercased: `scheme://host[:port]`.
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn parse_origin(value: &str) -> Option<Origin> {
    let (scheme, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    // `[v6]` or `[v6]:port`; else `host` or `host:port`. An empty port is no port.
    let (host, port) = if authority.starts_with('[') {
        let (host, rest) = authority.split_at(authority.find(']')? + 1);
        match rest {
            "" => (host, ""),
            _ => (host, rest.strip_prefix(':')?),
        }
    } else {
        authority.rsplit_once(':').unwrap_or((authority, ""))
    };
    let port = match port {
        "" => None,
        port => Some(port.parse::<u16>().ok()?),
    };
    if scheme.is_empty() || host.is_empty() {
        return None;
    }
    Some(Origin {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn request_origin(headers: &HeaderMap) -> Option<Origin> {
    [ORIGIN, REFERER]
        .iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .find(|value| *value != "null")
        .and_then(parse_origin)
}

/// An allowed origin: exact (`https://app.example.com`) or any subdomain
/// (`*.example.com`).
#[derive(Clone, PartialEq, Eq)]
pub enum ReferrerPattern {
    /// Exactly this scheme, host and port.
    Origin {
        /// `https`, `http`, …
        scheme: String,
        /// The host, lowercase.
        host: String,
        /// The port, if given.
        port: Option<u16>,
    },
    /// Any subdomain of this domain (not the domain itself), any scheme.
    Subdomains(String),
}

impl ReferrerPattern {
    fn matches(&self, origin: &Origin) -> bool {
        match self {
            ReferrerPattern::Origin { scheme, host, port } => {
                *scheme == origin.scheme && *host == origin.host && *port == origin.port
            }
            ReferrerPattern::Subdomains(domain) => origin
                .host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        }
    }
}

impl FromStr for ReferrerPattern {
    type Err = InvalidRestriction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRestriction(s.chars().take(200).collect());
        if let Some(domain) = s.strip_prefix("*.") {
            let valid = !domain.is_empty()
                && domain.contains('.')
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            return valid
                .then(|| ReferrerPattern::Subdomains(domain.to_ascii_lowercase()))
                .ok_or_else(invalid);
        }
        let origin = parse_origin(s).ok_or_else(invalid)?;
        Ok(ReferrerPattern::Origin {
            scheme: origin.scheme,
            host: origin.host,
            port: origin.port,
        })
    }
}

impl fmt::Display for ReferrerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferrerPattern::Origin {
                scheme,
                host,
                port: Some(port),
            } => write!(f, "{scheme}://{host}:{port}"),
            ReferrerPattern::Origin {
                scheme,
                host,
                port: None,
            } => write!(f, "{scheme}://{host}"),
            ReferrerPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// An allowed endpoint: `GET /v1/users/*`, `* /v1/reports/**`.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointPattern {
    method: Option<Method>,
    segments: Vec<String>,
}

impl EndpointPattern {
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let mut path = path.trim_start_matches('/').split('/');
        for (i, segment) in self.segments.iter().enumerate() {
            if segment == "**" && i + 1 == self.segments.len() {
                return true;
            }
            match path.next() {
                Some(actual) if segment == "*" && !actual.is_empty() => {}
                Some(actual) if actual == segment => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }
}

impl FromStr for EndpointPattern {
    type Err = InvalidRestriction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRestriction(s.chars().take(200).collect());
        let (method, path) = s.trim().split_once(' ').ok_or_else(invalid)?;
        let method = match method {
            "*" => None,
            m => {
                Some(Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| invalid())?)
            }
        };
        let path = path.trim();
        if !path.starts_with('/') || path.len() > 1000 {
            return Err(invalid());
        }
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        if segments
            .iter()
            .enumerate()
            .any(|(i, s)| s == "**" && i + 1 != segments.len())
        {
            return Err(invalid());
        }
        Ok(EndpointPattern { method, segments })
    }
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(method) => write!(f, "{method} /{}", self.segments.join("/")),
            None => write!(f, "* /{}", self.segments.join("/")),
        }
    }
}

macro_rules! string_serde {
    ($($ty:ty),*) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.to_string(), f)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

string_serde!(ReferrerPattern, EndpointPattern);

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo mutants`: subdomain patterns and the path length bound.
    #[test]
    fn subdomain_patterns_and_path_lengths_at_their_bounds() {
        assert!("*.my-site.com".parse::<ReferrerPattern>().is_ok());
        assert!("*.exa mple.com".parse::<ReferrerPattern>().is_err());
        let pattern: ReferrerPattern = "*.example.com".parse().unwrap();
        let origin = |value: &str| parse_origin(value).expect("an origin");
        assert!(pattern.matches(&origin("https://a.example.com")));
        assert!(
            !pattern.matches(&origin("https://.example.com")),
            "no empty label"
        );
        let path = |len: usize| format!("GET /{}", "a".repeat(len - 1));
        assert!(path(1000).parse::<EndpointPattern>().is_ok());
        assert!(path(1001).parse::<EndpointPattern>().is_err());
    }
    use http::HeaderValue;

    fn headers(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn ip_ranges_v4_and_v6() {
        let r = Restrictions::none().ips([
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(r.allows_ip(Some("203.0.113.200".parse().unwrap())));
        assert!(!r.allows_ip(Some("203.0.114.1".parse().unwrap())));
        assert!(r.allows_ip(Some("2001:db8:1::5".parse().unwrap())));
        assert!(!r.allows_ip(Some("2001:db9::1".parse().unwrap())));
        assert!(
            r.allows_ip(Some("::ffff:203.0.113.7".parse().unwrap())),
            "v4-mapped"
        );
        assert!(!r.allows_ip(None));
        assert!(Restrictions::none().allows_ip(None));
    }

    #[test]
    fn referrers_exact_and_wildcard() {
        let r = Restrictions::none().referrers([
            "https://app.example.com".parse().unwrap(),
            "*.example.org".parse().unwrap(),
        ]);
        assert!(r.allows_referrer(&headers(ORIGIN, "https://app.example.com")));
        assert!(r.allows_referrer(&headers(REFERER, "https://APP.example.com/page?x=1")));
        assert!(
            !r.allows_referrer(&headers(ORIGIN, "http://app.example.com")),
            "scheme matters"
        );
        assert!(
            !r.allows_referrer(&headers(ORIGIN, "https://app.example.com:8443")),
            "port matters"
        );
        assert!(!r.allows_referrer(&headers(ORIGIN, "https://evil-app.example.com")));
        assert!(r.allows_referrer(&headers(ORIGIN, "https://a.b.example.org")));
        assert!(
            !r.allows_referrer(&headers(ORIGIN, "https://example.org")),
            "not the apex"
        );
        assert!(!r.allows_referrer(&headers(ORIGIN, "https://notexample.org")));
        assert!(!r.allows_referrer(&headers(ORIGIN, "https://example.org.evil.com")));
        assert!(!r.allows_referrer(&HeaderMap::new()));
        assert!(!r.allows_referrer(&headers(ORIGIN, "null")));
        assert!("*.com-".parse::<ReferrerPattern>().is_err());
        assert!("not a url".parse::<ReferrerPattern>().is_err());
    }

    #[test]
    fn origins_with_ports_users_and_ipv6_hosts() {
        let origin = |value: &str| parse_origin(value).map(|o| (o.scheme, o.host, o.port));
        let some = |scheme: &str, host: &str, port: Option<u16>| {
            Some((scheme.to_owned(), host.to_owned(), port))
        };
        assert_eq!(
            origin("HTTPS://App.Example.com:8443/x"),
            some("https", "app.example.com", Some(8443))
        );
        assert_eq!(
            origin("https://app.example.com:"),
            some("https", "app.example.com", None)
        );
        assert_eq!(
            origin("https://user:pw@app.example.com/x?y#z"),
            some("https", "app.example.com", None)
        );
        assert_eq!(
            origin("https://[::1]:8443"),
            some("https", "[::1]", Some(8443))
        );
        assert_eq!(origin("https://[::1]"), some("https", "[::1]", None));
        assert_eq!(origin("https://[::1]/path"), some("https", "[::1]", None));
        for bad in [
            "https://app.example.com:port",
            "https://app.example.com:99999",
            "https://[::1",
            "https://[::1]x",
            "https://:8443",
            "://host",
            "host",
        ] {
            assert!(origin(bad).is_none(), "{bad}");
        }
        // An IPv6 origin can be allowed, with and without its port.
        let r = Restrictions::none().referrers(["http://[::1]:3000".parse().unwrap()]);
        assert!(r.allows_referrer(&headers(ORIGIN, "http://[::1]:3000")));
        assert!(!r.allows_referrer(&headers(ORIGIN, "http://[::1]")));
    }

    #[test]
    fn emptiness_is_no_restriction_at_all() {
        assert!(Restrictions::none().is_empty());
        assert_eq!(Restrictions::none(), Restrictions::default());
        let ip = Restrictions::none().ips(["10.0.0.0/8".parse().unwrap()]);
        let referrer = Restrictions::none().referrers(["*.example.com".parse().unwrap()]);
        let endpoint = Restrictions::none().endpoints(["GET /x".parse().unwrap()]);
        for restricted in [ip, referrer, endpoint] {
            assert!(!restricted.is_empty(), "{restricted:?}");
        }
    }

    #[test]
    fn endpoints_by_method_and_segments() {
        let r = Restrictions::none().endpoints([
            "GET /v1/users/*".parse().unwrap(),
            "* /v1/reports/**".parse().unwrap(),
        ]);
        assert!(r.allows_endpoint(&Method::GET, "/v1/users/usr_1"));
        assert!(!r.allows_endpoint(&Method::GET, "/v1/users/usr_1/keys"));
        assert!(!r.allows_endpoint(&Method::GET, "/v1/users/"));
        assert!(!r.allows_endpoint(&Method::GET, "/v1/users"));
        assert!(!r.allows_endpoint(&Method::POST, "/v1/users/usr_1"));
        assert!(r.allows_endpoint(&Method::DELETE, "/v1/reports/2026/q1"));
        assert!(r.allows_endpoint(&Method::GET, "/v1/reports"));
        assert!(!r.allows_endpoint(&Method::GET, "/v1/other"));
        assert!("GET v1".parse::<EndpointPattern>().is_err());
        assert!("GET /a/**/b".parse::<EndpointPattern>().is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let json = r#"{"allowed_ips":["203.0.113.0/24"],"allowed_referrers":["https://app.example.com","*.example.org"],"allowed_endpoints":["GET /v1/users/*"]}"#;
        let r: Restrictions = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
        assert_eq!(serde_json::to_string(&Restrictions::none()).unwrap(), "{}");
        assert!(serde_json::from_str::<Restrictions>(r#"{"allowed_ips":["nope"]}"#).is_err());
        assert!(serde_json::from_str::<Restrictions>(r#"{"unknown":[]}"#).is_err());
    }
}
