//! The client's IP address, for IP restrictions.
//!
//! The address is the connection's peer: axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`), or a [`PeerAddr`] you insert
//! into the request's extensions with hyper or tower. Behind proxies you declare trusted,
//! it is the right-most `X-Forwarded-For` entry that is not a trusted proxy; a header
//! sent by an untrusted peer is ignored, so a client cannot forge its address.
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use http::{Request, header::HeaderValue};
//! use tower_api_keys::client_ip::{PeerAddr, client_ip};
//!
//! let proxies = ["10.0.0.0/8".parse().unwrap()];
//! let mut request = Request::new(());
//! request.extensions_mut().insert(PeerAddr("10.0.0.2:5000".parse().unwrap()));
//! request.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 198.51.100.7, 10.0.0.9"));
//! let ip = client_ip(request.extensions(), request.headers(), &proxies);
//! assert_eq!(ip, Some("198.51.100.7".parse::<IpAddr>().unwrap()));
//! ```

use std::net::{IpAddr, SocketAddr};

use http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// The connection's remote address, for services without axum's `ConnectInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The connection's peer address, if the server recorded it.
#[must_use]
pub fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

/// The client's address: the peer, or behind `trusted_proxies` the right-most
/// untrusted `X-Forwarded-For` entry. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as
/// dual-stack sockets report IPv4 peers) are their IPv4 address, for the trust check
/// and in the answer. `None` if unknown or if the header is unreadable
/// (an IP restriction then refuses the request).
#[must_use]
pub fn client_ip(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer_ip(extensions)?.to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let value = value.to_str().ok()?;
        for entry in value.rsplit(',') {
            let ip = entry.trim().parse::<IpAddr>().ok()?.to_canonical();
            if !trusted(&ip) {
                return Some(ip);
            }
            client = ip;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn request(peer: &str, forwarded: &[&str]) -> (Extensions, HeaderMap) {
        let mut extensions = Extensions::new();
        extensions.insert(PeerAddr(format!("{peer}:1234").parse().unwrap()));
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        (extensions, headers)
    }

    #[test]
    fn an_untrusted_peer_cannot_forge_its_address() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        let (ext, headers) = request("198.51.100.9", &["203.0.113.5"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("198.51.100.9".parse().unwrap())
        );
        assert_eq!(
            client_ip(&ext, &headers, &[]),
            Some("198.51.100.9".parse().unwrap())
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_wins() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        // The client forged the left-most entry; the proxy appended the real one.
        let (ext, headers) = request("10.1.1.1", &["203.0.113.5, 198.51.100.7", "10.2.2.2"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("198.51.100.7".parse().unwrap())
        );
        let (ext, headers) = request("10.1.1.1", &["10.3.3.3"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("10.3.3.3".parse().unwrap())
        );
        let (ext, headers) = request("10.1.1.1", &["garbage"]);
        assert_eq!(client_ip(&ext, &headers, &proxies), None);
        let (ext, headers) = request("10.1.1.1", &[]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("10.1.1.1".parse().unwrap())
        );
    }

    #[test]
    fn ipv4_mapped_peers_and_entries_are_ipv4() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        // A dual-stack socket reports the IPv4 proxy as ::ffff:10.0.0.1: still trusted.
        let (ext, headers) = request("[::ffff:10.0.0.1]", &["198.51.100.7"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("198.51.100.7".parse().unwrap())
        );
        // A mapped trusted entry is skipped like its IPv4 form; the client is IPv4.
        let (ext, headers) = request("10.0.0.1", &["::ffff:203.0.113.5, ::ffff:10.9.9.9"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("203.0.113.5".parse().unwrap())
        );
        // An untrusted mapped peer is itself, as IPv4.
        let (ext, headers) = request("[::ffff:198.51.100.9]", &["203.0.113.5"]);
        assert_eq!(
            client_ip(&ext, &headers, &proxies),
            Some("198.51.100.9".parse().unwrap())
        );
    }

    #[test]
    fn no_peer_no_address() {
        assert_eq!(client_ip(&Extensions::new(), &HeaderMap::new(), &[]), None);
    }
}
