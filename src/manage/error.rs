//! Why a management request was refused: [`ManageError`], each with a status and a
//! stable code; the 422 codes are the [`Invalid`] enum.

use http::StatusCode;

use crate::error::AuthError;
use crate::store::StoreError;

/// Which rule of a management request's input was broken (422, with [`code`](Self::code)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalid {
    /// `invalid_body`: the body is not a JSON object, or asks for nothing.
    Body,
    /// `invalid_name`: missing, not a string, empty, or over
    /// [`MAX_NAME_LEN`](super::MAX_NAME_LEN) characters.
    Name,
    /// `rename_not_allowed`: renaming is turned off.
    RenameNotAllowed,
    /// `invalid_scope`: not a string, not one of the manager's scopes, or none.
    Scope,
    /// `invalid_project`: not a non-empty string, or not the caller's project.
    Project,
    /// `invalid_expiry`: not RFC 3339, not in the future, or past the caller's own.
    Expiry,
    /// `invalid_environment`: keys of that environment are not issued here.
    Environment,
    /// `invalid_restrictions`: unreadable, or differing from a restricted caller's own.
    Restrictions,
    /// `invalid_overlap`: not a whole number of seconds up to 90 days.
    Overlap,
    /// `invalid_owner`: `owner_id` not a string of 1 to
    /// [`MAX_OWNER_LEN`](super::MAX_OWNER_LEN) characters.
    Owner,
    /// `invalid_metadata`: not a JSON object, or over
    /// [`MAX_METADATA_BYTES`](crate::record::MAX_METADATA_BYTES) as JSON.
    Metadata,
    /// `invalid_ratelimits`: not an array of `{"name", "limit", "window_seconds"}`, a
    /// number that is not a positive whole number, more than five, or a name twice.
    RateLimits,
    /// `invalid_credits`: not `{"remaining", "refill"?}`, a negative or too large
    /// number, an unknown interval, or a day outside 1–31.
    Credits,
    /// `invalid_query`: a query parameter that is unknown or malformed.
    Query,
}

impl Invalid {
    /// Every rule, for documentation and tests.
    pub const ALL: [Invalid; 14] = [
        Invalid::Body,
        Invalid::Name,
        Invalid::RenameNotAllowed,
        Invalid::Scope,
        Invalid::Project,
        Invalid::Expiry,
        Invalid::Environment,
        Invalid::Restrictions,
        Invalid::Overlap,
        Invalid::Owner,
        Invalid::Metadata,
        Invalid::RateLimits,
        Invalid::Credits,
        Invalid::Query,
    ];

    /// The stable code.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Invalid::Body => "invalid_body",
            Invalid::Name => "invalid_name",
            Invalid::RenameNotAllowed => "rename_not_allowed",
            Invalid::Scope => "invalid_scope",
            Invalid::Project => "invalid_project",
            Invalid::Expiry => "invalid_expiry",
            Invalid::Environment => "invalid_environment",
            Invalid::Restrictions => "invalid_restrictions",
            Invalid::Overlap => "invalid_overlap",
            Invalid::Owner => "invalid_owner",
            Invalid::Metadata => "invalid_metadata",
            Invalid::RateLimits => "invalid_ratelimits",
            Invalid::Credits => "invalid_credits",
            Invalid::Query => "invalid_query",
        }
    }
}

/// Why a management request was refused. Each variant has a status and a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The body is not JSON (400 `invalid_json`).
    #[error("the request body is not valid JSON")]
    InvalidJson,
    /// A field is missing or wrong (422, the code of `rule`).
    #[error("{message}")]
    Invalid {
        /// The rule broken.
        rule: Invalid,
        /// What is wrong, for humans.
        message: String,
    },
    /// The caller asked for a scope it does not hold (403 `insufficient_scope`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No such key in the caller's account (404 `api_key_not_found`).
    #[error("no such API key")]
    NotFound,
    /// A key asked for the secret of (or to change) a key broader than itself (403
    /// `key_exceeds_caller`): rotating or changing a key with a scope the caller lacks,
    /// a later expiry (or none, when the caller expires), other restrictions than a
    /// restricted caller's, or another project. Nothing changed.
    #[error(
        "the key has {what} that the key making the request lacks; a key cannot obtain a secret broader than itself"
    )]
    ExceedsCaller {
        /// What the key has more of: `another account`, `another environment`,
        /// `a scope`, `a later expiry`, `other restrictions`, `another project`,
        /// `another end user`, `a higher rate limit` or `more credits`.
        what: &'static str,
    },
    /// A signed-in user's request came from another site (403 `cross_site_request`):
    /// the browser said so in `Sec-Fetch-Site`. A session cookie must not let another
    /// site create, rotate or revoke keys.
    #[error("requests from another site cannot manage keys with this session")]
    CrossSite,
    /// The account has its maximum of active keys in the key's environment (409
    /// `api_key_limit_reached`).
    #[error(
        "the account already has {limit} active API keys in this environment; revoke one first"
    )]
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// The store failed (503 `store_unavailable`).
    #[error("the key store is unavailable")]
    Unavailable(#[source] StoreError),
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ManageError::NotFound,
            StoreError::LimitReached { limit } => ManageError::LimitReached { limit },
            other => ManageError::Unavailable(other),
        }
    }
}

impl ManageError {
    /// A broken input rule.
    pub(crate) fn invalid(rule: Invalid, message: impl Into<String>) -> Self {
        ManageError::Invalid {
            rule,
            message: message.into(),
        }
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ManageError::InvalidJson => StatusCode::BAD_REQUEST,
            ManageError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ManageError::Auth(error) => error.status(),
            ManageError::NotFound => StatusCode::NOT_FOUND,
            ManageError::ExceedsCaller { .. } | ManageError::CrossSite => StatusCode::FORBIDDEN,
            ManageError::LimitReached { .. } => StatusCode::CONFLICT,
            ManageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ManageError::InvalidJson => "invalid_json",
            ManageError::Invalid { rule, .. } => rule.code(),
            ManageError::Auth(error) => error.code(),
            ManageError::NotFound => "api_key_not_found",
            ManageError::ExceedsCaller { .. } => "key_exceeds_caller",
            ManageError::CrossSite => "cross_site_request",
            ManageError::LimitReached { .. } => "api_key_limit_reached",
            ManageError::Unavailable(_) => "store_unavailable",
        }
    }

    /// The message for a response body: never a backend's error text.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            ManageError::Unavailable(_) => "The key store is unavailable. Retry shortly.".into(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_own_code() {
        let codes: std::collections::HashSet<_> = Invalid::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Invalid::ALL.len());
        let error = ManageError::invalid(Invalid::Overlap, "too long");
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_overlap")
        );
        let hidden = ManageError::Unavailable(StoreError::Backend("password=hunter2".into()));
        assert!(!hidden.public_message().contains("hunter2"));
    }
}
