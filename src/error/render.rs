//! Rendering rejections: the body format ([`ErrorFormat`]: [`JsonErrorFormat`] by
//! default, or an [`Envelope`](super::Envelope)) and the headers every rejection
//! carries (`WWW-Authenticate`, `Retry-After`).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response};

use super::{AuthError, InvalidRequest};

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
        // The body depends on the code and the message only, both fixed strings: each
        // of the few is rendered once per process and kept (a flood of bad keys then
        // costs no formatting, no allocation and no shared write per rejection).
        static BODIES: [OnceLock<&'static str>; AuthError::KINDS] =
            [const { OnceLock::new() }; AuthError::KINDS];
        let body = BODIES[error.ordinal()].get_or_init(|| {
            // Codes and messages hold no quotes or backslashes (a unit test checks), so
            // plain formatting is valid JSON.
            let body = format!(
                r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
                error.code(),
                error.message()
            );
            Box::leak(body.into_boxed_str())
        });
        ErrorBody::json(Bytes::from_static(body.as_bytes()))
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

    /// The response for `error` with the renderer that `layer` left in a request's
    /// extensions (a layer with a custom realm or format leaves its own), else the
    /// defaults.
    pub(crate) fn respond_with<B: From<Bytes>>(
        layer: Option<&ErrorResponder>,
        error: &AuthError,
    ) -> Response<B> {
        match layer {
            Some(responder) => responder.respond(error),
            None => ErrorResponder::default().respond(error),
        }
    }

    /// The renderer a layer left in `extensions`, if any.
    pub(crate) fn in_extensions(extensions: &http::Extensions) -> Option<Arc<ErrorResponder>> {
        extensions.get::<Arc<ErrorResponder>>().cloned()
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
        if let AuthError::RateLimited(refusal) = error {
            let decision = &refusal.decision;
            headers.insert(RETRY_AFTER, HeaderValue::from(decision.retry_after_secs()));
            if let Ok(policy) = HeaderValue::try_from(refusal.limit.policy_header()) {
                insert_rate_limit(headers, &refusal.limit, decision, policy);
            }
        }
        response
    }
}

/// The `RateLimit` field of `decision` and the `RateLimit-Policy` field `policy` of
/// `limit` (IETF draft-ietf-httpapi-ratelimit-headers).
fn insert_rate_limit(
    headers: &mut http::HeaderMap,
    limit: &crate::limit::RateLimit,
    decision: &crate::limit::Decision,
    policy: HeaderValue,
) {
    crate::limit::insert_fields(headers, decision.header(limit), policy);
}

#[cfg(test)]
pub(crate) mod tests {
    use http::StatusCode;

    use super::*;
    use crate::scope::Scope;

    #[test]
    fn default_body_has_code_and_message() {
        let response: Response<Bytes> = ErrorResponder::default().respond(&AuthError::Revoked);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "api_key_revoked");
        assert_eq!(body["error"]["message"], "The API key has been revoked.");
    }

    /// One of every kind of error the layer answers with (for the tests that must
    /// cover them all).
    pub(crate) fn every_error() -> Vec<AuthError> {
        vec![
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
            AuthError::RateLimited(Box::new(crate::limit::Refusal::new(
                crate::limit::RateLimit::new("requests", 1, Duration::from_secs(1)).unwrap(),
                crate::limit::Decision::default(),
            ))),
            AuthError::CreditsExhausted,
        ]
    }

    #[test]
    fn every_default_body_is_valid_json() {
        let errors = every_error();
        for error in errors {
            let body = JsonErrorFormat.render(&error).body;
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["error"]["code"], error.code());
            assert_eq!(parsed["error"]["message"], error.message());
            assert_eq!(
                JsonErrorFormat.render(&error).body,
                body,
                "kept as rendered"
            );
        }
    }

    /// Each kind has its own ordinal (the key of its kept body), and the list above
    /// holds every kind.
    #[test]
    fn every_kind_has_its_own_ordinal() {
        let mut ordinals: Vec<usize> = every_error().iter().map(AuthError::ordinal).collect();
        ordinals.sort_unstable();
        assert_eq!(ordinals, (0..AuthError::KINDS).collect::<Vec<_>>());
        let mut messages: Vec<&str> = every_error().iter().map(AuthError::message).collect();
        messages.sort_unstable();
        messages.dedup();
        assert_eq!(messages.len(), AuthError::KINDS, "a message for each kind");
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
