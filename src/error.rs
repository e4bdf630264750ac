//! Rejections: [`AuthError`], its status, stable code, RFC 6750 header and body.
//!
//! The status, the `code` and the `WWW-Authenticate` header of each rejection are fixed
//! (clients and SDKs branch on them); the body's format is yours to replace with an
//! [`ErrorFormat`]. The default body is
//!
//! ```json
//! {"error": {"code": "invalid_api_key", "message": "The API key is not valid."}}
//! ```
//!
//! A body never holds the presented key, its hash, or a backend's error text; those
//! details go to `tracing` (without the key).
//!
//! ```
//! use bytes::Bytes;
//! use http::HeaderValue;
//! use tower_api_keys::{AuthError, error::ErrorBody};
//!
//! // An envelope of your own: {"success": false, "error": "invalid_api_key"}
//! let format = |error: &AuthError| {
//!     let body = serde_json::json!({"success": false, "error": error.code()});
//!     ErrorBody::json(Bytes::from(body.to_string()))
//! };
//! # let _: &dyn tower_api_keys::error::ErrorFormat = &format;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::scope::Scope;

/// Why a request was not let through. One variant per row of the response table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header, or one with another scheme. 401 `missing_api_key`.
    #[error("no API key was provided")]
    MissingKey,
    /// The `Authorization` header is malformed. 400 `invalid_request`.
    #[error("malformed Authorization header: {0}")]
    InvalidRequest(InvalidRequest),
    /// The key is malformed, fails its checksum, or is unknown. 401 `invalid_api_key`.
    #[error("the API key is not valid")]
    InvalidKey,
    /// The key was revoked. 401 `api_key_revoked`.
    #[error("the API key was revoked")]
    Revoked,
    /// The key is past its expiry. 401 `api_key_expired`.
    #[error("the API key has expired")]
    Expired,
    /// A key of another environment (`sk_test_` on a live deployment, or the reverse).
    /// 401 `environment_mismatch`.
    #[error("the API key belongs to another environment")]
    EnvironmentMismatch,
    /// The account is past due beyond its grace period. 402 `payment_required`.
    #[error("the account is past due")]
    PaymentRequired,
    /// The key is locked to another project than the one the request addresses. 403
    /// `project_forbidden`.
    #[error("the API key is locked to another project")]
    ProjectForbidden,
    /// The client's address is outside the key's ranges. 403 `ip_not_allowed`.
    #[error("the client address is not allowed for this API key")]
    IpNotAllowed,
    /// The request's origin is not one of the key's. 403 `referrer_not_allowed`.
    #[error("the request origin is not allowed for this API key")]
    ReferrerNotAllowed,
    /// The endpoint is not one of the key's. 403 `endpoint_not_allowed`.
    #[error("the endpoint is not allowed for this API key")]
    EndpointNotAllowed,
    /// The key lacks the scope a route requires. 403 `insufficient_scope`.
    #[error("the API key lacks the {required} scope")]
    InsufficientScope {
        /// The scope that was required.
        required: Scope,
    },
    /// The verifier's backend failed and nothing usable was cached. 503
    /// `auth_unavailable`, with `Retry-After`.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

/// What is wrong with a malformed `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    DuplicateHeader,
    /// `Bearer` with no token.
    #[error("empty bearer token")]
    EmptyToken,
    /// The token holds characters outside RFC 6750's `b64token`.
    #[error("illegal characters in the bearer token")]
    IllegalCharacters,
}

impl AuthError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::MissingKey
            | AuthError::InvalidKey
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::EnvironmentMismatch => StatusCode::UNAUTHORIZED,
            AuthError::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
            AuthError::ProjectForbidden
            | AuthError::IpNotAllowed
            | AuthError::ReferrerNotAllowed
            | AuthError::EndpointNotAllowed
            | AuthError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable, machine-readable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingKey => "missing_api_key",
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::InvalidKey => "invalid_api_key",
            AuthError::Revoked => "api_key_revoked",
            AuthError::Expired => "api_key_expired",
            AuthError::EnvironmentMismatch => "environment_mismatch",
            AuthError::PaymentRequired => "payment_required",
            AuthError::ProjectForbidden => "project_forbidden",
            AuthError::IpNotAllowed => "ip_not_allowed",
            AuthError::ReferrerNotAllowed => "referrer_not_allowed",
            AuthError::EndpointNotAllowed => "endpoint_not_allowed",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::Unavailable => "auth_unavailable",
        }
    }

    /// A human-readable message, safe to show to the caller.
    #[must_use]
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::MissingKey => {
                "No API key provided. Send it as `Authorization: Bearer <key>`."
            }
            AuthError::InvalidRequest(InvalidRequest::DuplicateHeader) => {
                "Send exactly one Authorization header."
            }
            AuthError::InvalidRequest(InvalidRequest::EmptyToken) => {
                "The Authorization header holds no key."
            }
            AuthError::InvalidRequest(InvalidRequest::IllegalCharacters) => {
                "The Authorization header holds characters a key cannot contain."
            }
            AuthError::InvalidKey => "The API key is not valid.",
            AuthError::Revoked => "The API key has been revoked.",
            AuthError::Expired => "The API key has expired.",
            AuthError::EnvironmentMismatch => {
                "The API key belongs to another environment than this endpoint."
            }
            AuthError::PaymentRequired => {
                "The account is past due. Update the payment method to restore access."
            }
            AuthError::ProjectForbidden => "The API key is locked to another project.",
            AuthError::IpNotAllowed => "The API key may not be used from this address.",
            AuthError::ReferrerNotAllowed => "The API key may not be used from this origin.",
            AuthError::EndpointNotAllowed => "The API key may not call this endpoint.",
            AuthError::InsufficientScope { .. } => {
                "The API key does not have the scope this request requires."
            }
            AuthError::Unavailable => "Authentication is temporarily unavailable. Retry shortly.",
        }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge for this rejection, if it has one.
    #[must_use]
    pub fn www_authenticate(&self, realm: &str) -> Option<HeaderValue> {
        let error = match self {
            AuthError::MissingKey => None,
            AuthError::InvalidRequest(_) => Some("invalid_request"),
            AuthError::InvalidKey
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::EnvironmentMismatch => Some("invalid_token"),
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
            AuthError::PaymentRequired
            | AuthError::ProjectForbidden
            | AuthError::IpNotAllowed
            | AuthError::ReferrerNotAllowed
            | AuthError::EndpointNotAllowed
            | AuthError::Unavailable => return None,
        };
        let mut value = format!("Bearer realm=\"{realm}\"");
        if let Some(error) = error {
            value.push_str(", error=\"");
            value.push_str(error);
            value.push('"');
        }
        if let AuthError::InsufficientScope { required } = self {
            value.push_str(", scope=\"");
            value.push_str(required.as_str());
            value.push('"');
        }
        // The realm is checked at configuration time and scopes are a restricted
        // charset, so the value is always a valid header value.
        HeaderValue::try_from(value).ok()
    }
}

/// A rendered error body and its content type.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    /// The `Content-Type` of `body`.
    pub content_type: HeaderValue,
    /// The body bytes.
    pub body: Bytes,
}

impl ErrorBody {
    /// A JSON body.
    #[must_use]
    pub fn json(body: Bytes) -> Self {
        ErrorBody {
            content_type: HeaderValue::from_static("application/json"),
            body,
        }
    }
}

/// Renders the body of a rejection. Implemented for `Fn(&AuthError) -> ErrorBody`.
///
/// The status, the `WWW-Authenticate` and `Retry-After` headers are set by the crate and
/// cannot be changed here.
pub trait ErrorFormat: Send + Sync + 'static {
    /// The body for `error`.
    fn render(&self, error: &AuthError) -> ErrorBody;
}

impl<F> ErrorFormat for F
where
    F: Fn(&AuthError) -> ErrorBody + Send + Sync + 'static,
{
    fn render(&self, error: &AuthError) -> ErrorBody {
        self(error)
    }
}

/// The default body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonErrorFormat;

impl ErrorFormat for JsonErrorFormat {
    fn render(&self, error: &AuthError) -> ErrorBody {
        // Codes and messages are fixed strings without quotes or backslashes (a unit
        // test checks), so plain formatting is valid JSON: one allocation per rejection.
        let body = format!(
            r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
            error.code(),
            error.message()
        );
        ErrorBody::json(Bytes::from(body))
    }
}

/// The default realm in `WWW-Authenticate`.
pub(crate) const DEFAULT_REALM: &str = "api";
/// The default `Retry-After` on 503.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Turns [`AuthError`]s into responses: the layer's realm, retry hint and body format.
#[derive(Clone)]
pub(crate) struct ErrorResponder {
    realm: Arc<str>,
    retry_after: Duration,
    format: Arc<dyn ErrorFormat>,
    /// The challenges for missing keys, malformed requests and bad tokens, built once
    /// per realm: rejections stay cheap under a flood of bad keys.
    challenges: [HeaderValue; 3],
}

fn challenges(realm: &str) -> [HeaderValue; 3] {
    [
        AuthError::MissingKey,
        AuthError::InvalidRequest(InvalidRequest::EmptyToken),
        AuthError::InvalidKey,
    ]
    .map(|error| error.www_authenticate(realm).expect("a checked realm"))
}

impl fmt::Debug for ErrorResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponder")
            .field("realm", &self.realm)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl Default for ErrorResponder {
    fn default() -> Self {
        ErrorResponder {
            realm: DEFAULT_REALM.into(),
            retry_after: DEFAULT_RETRY_AFTER,
            format: Arc::new(JsonErrorFormat),
            challenges: challenges(DEFAULT_REALM),
        }
    }
}

/// Put into the extensions of a rejection that an extractor or guard rendered with
/// the defaults, so that the enclosing [`ApiKeyAuth`](crate::ApiKeyAuth) renders it
/// again with its own realm and body format.
#[derive(Debug, Clone)]
pub(crate) struct RenderedByDefault(pub(crate) AuthError);

impl ErrorResponder {
    /// # Panics
    /// If the realm holds `"`, `\` or characters not allowed in a header value.
    pub(crate) fn set_realm(&mut self, realm: &str) {
        assert!(
            !realm.contains(['"', '\\']) && HeaderValue::from_str(realm).is_ok(),
            "the realm must be a valid header value without quotes or backslashes"
        );
        self.realm = realm.into();
        self.challenges = challenges(realm);
    }

    pub(crate) fn set_retry_after(&mut self, after: Duration) {
        self.retry_after = after;
    }

    pub(crate) fn set_format(&mut self, format: Arc<dyn ErrorFormat>) {
        self.format = format;
    }

    /// The response for `error`.
    pub(crate) fn respond<B: From<Bytes>>(&self, error: &AuthError) -> Response<B> {
        let ErrorBody { content_type, body } = self.format.render(error);
        let mut response = Response::new(B::from(body));
        *response.status_mut() = error.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        let challenge = match error {
            AuthError::MissingKey => Some(self.challenges[0].clone()),
            AuthError::InvalidRequest(_) => Some(self.challenges[1].clone()),
            AuthError::InvalidKey
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::EnvironmentMismatch => Some(self.challenges[2].clone()),
            other => other.www_authenticate(&self.realm),
        };
        if let Some(challenge) = challenge {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if matches!(error, AuthError::Unavailable) {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(self.retry_after.as_secs().max(1)),
            );
        }
        response
    }

    /// The default response for `error`, marked so that an enclosing layer re-renders it.
    pub(crate) fn respond_by_default<B: From<Bytes>>(error: AuthError) -> Response<B> {
        let mut response = ErrorResponder::default().respond(&error);
        response.extensions_mut().insert(RenderedByDefault(error));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        let header = |e: AuthError| {
            e.www_authenticate("api")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header(AuthError::MissingKey).unwrap(),
            r#"Bearer realm="api""#
        );
        assert_eq!(
            header(AuthError::InvalidKey).unwrap(),
            r#"Bearer realm="api", error="invalid_token""#
        );
        assert_eq!(
            header(AuthError::InvalidRequest(InvalidRequest::EmptyToken)).unwrap(),
            r#"Bearer realm="api", error="invalid_request""#
        );
        assert_eq!(
            header(AuthError::InsufficientScope {
                required: Scope::Write
            })
            .unwrap(),
            r#"Bearer realm="api", error="insufficient_scope", scope="write""#
        );
        assert_eq!(header(AuthError::Unavailable), None);
    }

    #[test]
    fn default_body_has_code_and_message() {
        let response: Response<Bytes> = ErrorResponder::default().respond(&AuthError::Revoked);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "api_key_revoked");
        assert_eq!(body["error"]["message"], "The API key has been revoked.");
    }

    #[test]
    fn every_default_body_is_valid_json() {
        let errors = [
            AuthError::MissingKey,
            AuthError::InvalidRequest(InvalidRequest::DuplicateHeader),
            AuthError::InvalidRequest(InvalidRequest::EmptyToken),
            AuthError::InvalidRequest(InvalidRequest::IllegalCharacters),
            AuthError::InvalidKey,
            AuthError::Revoked,
            AuthError::Expired,
            AuthError::EnvironmentMismatch,
            AuthError::PaymentRequired,
            AuthError::ProjectForbidden,
            AuthError::IpNotAllowed,
            AuthError::ReferrerNotAllowed,
            AuthError::EndpointNotAllowed,
            AuthError::InsufficientScope {
                required: Scope::Admin,
            },
            AuthError::Unavailable,
        ];
        for error in errors {
            let body = JsonErrorFormat.render(&error).body;
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["error"]["code"], error.code());
            assert_eq!(parsed["error"]["message"], error.message());
        }
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let mut responder = ErrorResponder::default();
        responder.set_retry_after(Duration::from_secs(7));
        let response: Response<Bytes> = responder.respond(&AuthError::Unavailable);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
    }

    #[test]
    #[should_panic(expected = "realm")]
    fn a_realm_with_quotes_is_refused() {
        ErrorResponder::default().set_realm("a\"b");
    }
}

/// A handler or guard asked for the [`Principal`](crate::Principal) but no
/// [`ApiKeyLayer`](crate::ApiKeyLayer) ran before it: a setup mistake, answered with
/// 500 (like axum's missing `Extension`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no ApiKeyLayer ran for this request: add `.layer(ApiKeyLayer::new(..))` \
     around the routes that read the Principal"
)]
pub struct MissingApiKeyLayer;

impl MissingApiKeyLayer {
    pub(crate) fn respond<B: From<Bytes>>(self) -> Response<B> {
        tracing::error!("{self}");
        let mut response = Response::new(B::from(Bytes::from(self.to_string())));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Why a handler or guard could not get a [`Principal`](crate::Principal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalRejection {
    /// No layer ran (500).
    #[error(transparent)]
    MissingApiKeyLayer(#[from] MissingApiKeyLayer),
    /// The caller is not allowed (no key behind an optional layer: 401; missing scope:
    /// 403).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl PrincipalRejection {
    pub(crate) fn respond<B: From<Bytes>>(self) -> Response<B> {
        match self {
            PrincipalRejection::MissingApiKeyLayer(missing) => missing.respond(),
            PrincipalRejection::Auth(error) => ErrorResponder::respond_by_default(error),
        }
    }
}
