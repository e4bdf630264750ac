//! The key-management page (feature `dashboard`): one HTML page, its script and its
//! style, compiled into the crate, calling the management routes from the browser.
//!
//! The page creates keys (showing each once, in a dialog that asks before it closes),
//! lists them with their use of the last 24 hours and their credits, renames, rotates
//! (with an overlap), revokes (confirmed by typing the key's name) and shows a key's
//! audit events. It works with both callers of the routes: an application's session
//! (a [`KeyOwner`](super::KeyOwner) that your middleware puts in the request, cookies
//! sent same-origin), or, once a call answers 401, an admin key pasted into a field
//! labelled "API key" and kept in the page's memory only.
//!
//! Everything is served from your application, with `Content-Security-Policy:
//! default-src 'self'` and `X-Frame-Options: DENY`: no external request, no inline
//! script or style, API data written as text only.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::scope::Scope;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// What the page's answers carry besides their body.
const CSP: &str = "default-src 'self'";

/// The key-management page, ready to [`router`](Self::router) at a path.
///
/// ```
/// use axum::Router;
/// use tower_api_keys::manage::Dashboard;
/// use tower_api_keys::scope::Scope;
///
/// // The page at /dashboard (outside the key layer: it holds no data), calling the
/// // management routes mounted at /v1/account (behind it).
/// let page: Router = Dashboard::new([Scope::Read, Scope::Write, Scope::Admin])
///     .api_base("/v1/account")
///     .router("/dashboard");
/// ```
///
/// [`KeyRoutes::dashboard`](super::KeyRoutes::dashboard) starts one with the scopes of
/// the routes' manager.
#[derive(Debug, Clone)]
pub struct Dashboard {
    title: String,
    api_base: String,
    scopes: Vec<String>,
    rotation: bool,
    renames: bool,
    session_only: bool,
}

impl Dashboard {
    /// A page offering `scopes` as checkboxes when creating a key, calling routes next
    /// to it (see [`api_base`](Self::api_base)), titled "API keys".
    #[must_use]
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Dashboard {
            title: "API keys".to_owned(),
            api_base: String::new(),
            scopes: scopes.into_iter().map(|s| s.as_str().to_owned()).collect(),
            rotation: true,
            renames: true,
            session_only: false,
        }
    }

    /// Whether the page offers rotation (default yes; as
    /// [`KeyRoutes::rotation`](super::KeyRoutes::rotation)).
    #[must_use]
    pub fn rotation(mut self, enabled: bool) -> Self {
        self.rotation = enabled;
        self
    }

    /// Whether the page offers renaming (default yes; as
    /// [`KeyRoutes::renames`](super::KeyRoutes::renames)).
    #[must_use]
    pub fn renames(mut self, allowed: bool) -> Self {
        self.renames = allowed;
        self
    }

    /// For routes that only a signed-in user may call: the page never asks for an API
    /// key, and a 401 tells the user to sign in again.
    #[must_use]
    pub fn session_only(mut self) -> Self {
        self.session_only = true;
        self
    }

    /// The page's title and heading.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Where the management routes are mounted, as the browser resolves it from the
    /// page's URL: an absolute path (`/v1/account`) or a relative one (the default, `""`:
    /// the page's siblings, so a page at `/projects/p1/dashboard` calls
    /// `/projects/p1/api-keys`).
    #[must_use]
    pub fn api_base(mut self, base: impl Into<String>) -> Self {
        let mut base = base.into();
        if !base.is_empty() && !base.ends_with('/') {
            base.push('/');
        }
        self.api_base = base;
        self
    }

    /// The page at `path`, its script at `{path}/app.js` and its style at
    /// `{path}/style.css`. Merge it into your router, or nest it (the page refers to its
    /// assets relative to its own URL, so any prefix works).
    ///
    /// # Panics
    /// If `path` does not start with `/` or its last segment is empty or a path
    /// parameter (the page finds its assets through that segment).
    pub fn router(self, path: &str) -> Router {
        let last = path.rsplit('/').next().unwrap_or_default();
        assert!(
            path.starts_with('/') && !last.is_empty() && !last.contains(['{', '}']),
            "the dashboard's path must end in a literal segment, got {path:?}"
        );
        let page = Bytes::from(self.render(last));
        Router::new()
            .route(
                path,
                get(move || {
                    let page = page.clone();
                    async move {
                        let mut page = asset("text/html; charset=utf-8", page);
                        // Not kept for the back button either: a key may be on show.
                        page.headers_mut()
                            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        page
                    }
                }),
            )
            .route(
                &format!("{path}/app.js"),
                get(|| async { asset("text/javascript; charset=utf-8", Bytes::from(SCRIPT)) }),
            )
            .route(
                &format!("{path}/style.css"),
                get(|| async { asset("text/css; charset=utf-8", Bytes::from(STYLE)) }),
            )
    }

    /// What the page offers, as its script reads it.
    fn features(&self) -> String {
        [
            (self.rotation, "rotate"),
            (self.renames, "rename"),
            (self.session_only, "session"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// The page with its placeholders filled (escaped for HTML attributes and text).
    fn render(&self, last_segment: &str) -> String {
        PAGE.replace("{{TITLE}}", &escape(&self.title))
            .replace("{{ASSETS}}", &escape(last_segment))
            .replace("{{API_BASE}}", &escape(&self.api_base))
            .replace("{{SCOPES}}", &escape(&self.scopes.join(" ")))
            .replace("{{FEATURES}}", &self.features())
    }
}

/// An asset's answer, with the headers every one of them carries.
fn asset(content_type: &'static str, body: Bytes) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (http::StatusCode, http::HeaderMap, String) {
        let request = http::Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn page_script_and_style_carry_the_security_headers() {
        let router = Dashboard::new([Scope::Read, Scope::Admin]).router("/dashboard");
        let (_, headers, _) = get(&router, "/dashboard").await;
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        for (path, kind) in [
            ("/dashboard", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
        ] {
            let (status, headers, _) = get(&router, path).await;
            assert_eq!(status, 200, "{path}");
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(kind)
            );
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                "default-src 'self'"
            );
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_stays_within_its_size_budget() {
        let total = PAGE.len() + SCRIPT.len() + STYLE.len();
        assert!(total < 60 * 1024, "the page's files weigh {total} bytes");
    }

    #[test]
    fn the_page_holds_no_inline_script_style_or_handler() {
        let page = PAGE.to_ascii_lowercase();
        assert!(!page.contains("<style"), "inline style element");
        assert!(!page.contains(" style="), "inline style attribute");
        let handler = page.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
        for script in page.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap();
            assert!(tag.contains("src="), "an inline script");
        }
        for external in ["http://", "https://", "//cdn"] {
            assert!(!page.contains(external), "an external reference {external}");
            assert!(
                !STYLE.contains(external),
                "an external reference {external}"
            );
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "API data must be written as text"
        );
        assert!(!SCRIPT.contains("localStorage") && !SCRIPT.contains("sessionStorage"));
        assert!(!SCRIPT.contains("document.cookie"));
    }

    #[tokio::test]
    async fn placeholders_are_filled_and_escaped() {
        let router = Dashboard::new([Scope::Read, Scope::custom("jobs:read")])
            .title("Keys <\"&'>")
            .api_base("/v1/account")
            .router("/ui/keys");
        let (_, _, page) = get(&router, "/ui/keys").await;
        assert!(!page.contains("{{"), "a placeholder left: {page}");
        assert!(page.contains("Keys &lt;&quot;&amp;&#39;&gt;"));
        assert!(page.contains(r#"content="/v1/account/""#));
        assert!(page.contains(r#"content="read jobs:read""#));
        assert!(page.contains(r#"src="./keys/app.js""#), "{page}");
        assert!(page.contains(r#"content="rotate rename""#), "{page}");
        let (status, _, _) = get(&router, "/ui/keys/app.js").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn the_page_offers_only_what_the_routes_do() {
        let router = Dashboard::new([Scope::Read])
            .rotation(false)
            .renames(false)
            .session_only()
            .router("/keys");
        let (_, _, page) = get(&router, "/keys").await;
        assert!(page.contains(r#"<meta name="api-keys-features" content="session">"#));
    }

    #[test]
    #[should_panic(expected = "literal segment")]
    fn a_path_ending_in_a_parameter_is_refused() {
        let _ = Dashboard::new([Scope::Read]).router("/projects/{id}");
    }
}
