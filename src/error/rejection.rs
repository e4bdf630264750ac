//! What an extractor or guard answers when it cannot hand out a
//! [`Principal`](crate::Principal): rendered once, with the format of the
//! [`ApiKeyLayer`](crate::ApiKeyLayer) that ran (it leaves its renderer in the request's
//! extensions when it is not the default), or 500 when no layer ran.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};

use super::{AuthError, ErrorResponder};

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

/// Why a handler or guard could not get a [`Principal`](crate::Principal): no layer ran
/// (500), or the caller is not allowed (no key behind an optional layer: 401; a missing
/// scope: 403). Answered in the format of the layer that ran.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct PrincipalRejection {
    reason: Reason,
    /// The renderer of the layer that ran, when it is not the default.
    responder: Option<Arc<ErrorResponder>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Reason {
    #[error(transparent)]
    MissingApiKeyLayer(MissingApiKeyLayer),
    #[error(transparent)]
    Auth(AuthError),
}

impl PrincipalRejection {
    /// No layer ran for this request.
    pub(crate) fn missing_layer() -> Self {
        PrincipalRejection {
            reason: Reason::MissingApiKeyLayer(MissingApiKeyLayer),
            responder: None,
        }
    }

    /// The caller is refused with `error`, to be answered in the format of the layer
    /// that left its renderer in `extensions`.
    pub(crate) fn auth(error: AuthError, extensions: &http::Extensions) -> Self {
        PrincipalRejection {
            reason: Reason::Auth(error),
            responder: ErrorResponder::in_extensions(extensions),
        }
    }

    /// The authentication error, unless no layer ran.
    #[must_use]
    pub fn auth_error(&self) -> Option<&AuthError> {
        match &self.reason {
            Reason::Auth(error) => Some(error),
            Reason::MissingApiKeyLayer(_) => None,
        }
    }

    /// Whether no [`ApiKeyLayer`](crate::ApiKeyLayer) ran for the request (a setup
    /// mistake, answered with 500).
    #[must_use]
    pub fn is_missing_layer(&self) -> bool {
        matches!(self.reason, Reason::MissingApiKeyLayer(_))
    }

    /// The response: 500 without a layer, else the error in the layer's format.
    pub(crate) fn respond<B: From<Bytes>>(self) -> Response<B> {
        match self.reason {
            Reason::MissingApiKeyLayer(missing) => missing.respond(),
            Reason::Auth(error) => ErrorResponder::respond_with(self.responder.as_deref(), &error),
        }
    }
}

impl From<MissingApiKeyLayer> for PrincipalRejection {
    fn from(_: MissingApiKeyLayer) -> Self {
        PrincipalRejection::missing_layer()
    }
}

#[cfg(feature = "axum")]
mod axum_responses {
    use axum::response::{IntoResponse, Response};

    use super::{MissingApiKeyLayer, PrincipalRejection};
    use crate::error::{AuthError, ErrorResponder};

    /// The default rendering. A handler that returns an `AuthError` gets the default
    /// format; extractor rejections get the layer's.
    impl IntoResponse for AuthError {
        fn into_response(self) -> Response {
            ErrorResponder::respond_with(None, &self)
        }
    }

    impl IntoResponse for MissingApiKeyLayer {
        fn into_response(self) -> Response {
            self.respond()
        }
    }

    impl IntoResponse for PrincipalRejection {
        fn into_response(self) -> Response {
            self.respond()
        }
    }
}
