//! Rejections: [`AuthError`] (this file: the taxonomy, each variant's status, stable
//! code and RFC 6750 challenge), their rendering ([`ErrorFormat`], [`Envelope`], in
//! `render` and `envelope`) and the extractors' rejections ([`PrincipalRejection`], in
//! `rejection`).
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

mod envelope;
mod rejection;
mod render;
#[cfg(test)]
pub(crate) use render::tests::every_error;

pub use envelope::Envelope;
pub use rejection::{MissingApiKeyLayer, PrincipalRejection};
pub(crate) use render::ErrorResponder;
pub use render::{ErrorBody, ErrorFormat, JsonErrorFormat};

use http::{HeaderValue, StatusCode};

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
    /// A rate limit of the key is spent. 429 `rate_limited`, with `Retry-After`,
    /// `RateLimit` and `RateLimit-Policy`.
    #[error("the API key's rate limit {:?} is spent", .0.limit.name)]
    RateLimited(Box<crate::limit::Refusal>),
    /// The request's cost exceeds the remaining credits of the key or its account. 402
    /// `credits_exhausted`; nothing was spent.
    #[error("the API key's credits are exhausted")]
    CreditsExhausted,
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
            AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AuthError::CreditsExhausted => StatusCode::PAYMENT_REQUIRED,
        }
    }

    /// How many distinct (code, message) pairs there are: the range of
    /// [`ordinal`](Self::ordinal).
    pub(crate) const KINDS: usize = 17;

    /// This error's place among the distinct (code, message) pairs, below
    /// [`KINDS`](Self::KINDS): what a body that depends on nothing else is kept by.
    pub(crate) fn ordinal(&self) -> usize {
        match self {
            AuthError::MissingKey => 0,
            AuthError::InvalidRequest(InvalidRequest::DuplicateHeader) => 1,
            AuthError::InvalidRequest(InvalidRequest::EmptyToken) => 2,
            AuthError::InvalidRequest(InvalidRequest::IllegalCharacters) => 3,
            AuthError::InvalidKey => 4,
            AuthError::Revoked => 5,
            AuthError::Expired => 6,
            AuthError::EnvironmentMismatch => 7,
            AuthError::PaymentRequired => 8,
            AuthError::ProjectForbidden => 9,
            AuthError::IpNotAllowed => 10,
            AuthError::ReferrerNotAllowed => 11,
            AuthError::EndpointNotAllowed => 12,
            AuthError::InsufficientScope { .. } => 13,
            AuthError::Unavailable => 14,
            AuthError::RateLimited(_) => 15,
            AuthError::CreditsExhausted => 16,
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
            AuthError::RateLimited(_) => "rate_limited",
            AuthError::CreditsExhausted => "credits_exhausted",
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
            AuthError::RateLimited(_) => {
                "Too many requests with this API key. Retry after the time in Retry-After."
            }
            AuthError::CreditsExhausted => {
                "The API key has not enough credits left for this request."
            }
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
            | AuthError::Unavailable
            | AuthError::RateLimited(_)
            | AuthError::CreditsExhausted => return None,
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
}
