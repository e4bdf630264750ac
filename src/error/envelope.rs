//! [`Envelope`]: the JSON shape around every answer, shared by the layer's rejections
//! and the key-management routes, so an API keeps one convention everywhere.
//!
//! | envelope | success | list | failure |
//! |---|---|---|---|
//! | [`Plain`](Envelope::Plain) (default) | the object | `{"data": [...]}` | `{"error": {"code", "message"}}` |
//! | [`Data`](Envelope::Data) | `{"data": …}` | `{"data": [...]}` | `{"error": {"code", "message"}}` |
//! | [`Success`](Envelope::Success) | `{"success": true, "data": …}` | `{"success": true, "data": [...]}` | `{"success": false, "error": {"code", "message"}}` |
//!
//! An answer without data (a revocation, say) is `{"success": true}` in all three, with
//! a `"message"` if one is given ([`Envelope::done`]).
//!
//! Use it for the layer with [`ApiKeyLayer::error_format`](crate::ApiKeyLayer::error_format)
//! and for the management routes with `KeyRoutes::envelope` (feature `axum`):
//!
//! ```
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, error::Envelope, key::KeyFormat, store::MemoryStore};
//!
//! let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(MemoryStore::new()))
//!     .error_format(Envelope::Success); // 401: {"success": false, "error": {...}}
//! ```

use bytes::Bytes;
use serde_json::{Value, json};

use super::{AuthError, ErrorBody, ErrorFormat};

/// The JSON shape around answers. See the [error module docs](super).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope {
    /// Objects bare, lists under `data`, errors under `error`.
    #[default]
    Plain,
    /// Everything successful under `data`, errors under `error`.
    Data,
    /// `success: true` with `data`, or `success: false` with `error`.
    Success,
}

impl Envelope {
    /// A successful answer carrying `data` (an object).
    #[must_use]
    pub fn data(self, data: Value) -> Value {
        match self {
            Envelope::Plain => data,
            Envelope::Data => json!({ "data": data }),
            Envelope::Success => json!({ "success": true, "data": data }),
        }
    }

    /// A successful answer carrying a list.
    #[must_use]
    pub fn list(self, items: Vec<Value>) -> Value {
        match self {
            Envelope::Plain | Envelope::Data => json!({ "data": items }),
            Envelope::Success => json!({ "success": true, "data": items }),
        }
    }

    /// A successful answer without data, in every envelope: `{"success": true}`, plus
    /// `"message"` if given.
    #[must_use]
    pub fn done(self, message: Option<&str>) -> Value {
        let mut body = json!({ "success": true });
        if let Some(message) = message {
            body["message"] = Value::from(message);
        }
        body
    }

    /// A failure with a stable `code` and a human `message`.
    #[must_use]
    pub fn error(self, code: &str, message: &str) -> Value {
        let error = json!({ "code": code, "message": message });
        match self {
            Envelope::Plain | Envelope::Data => json!({ "error": error }),
            Envelope::Success => json!({ "success": false, "error": error }),
        }
    }
}

impl ErrorFormat for Envelope {
    fn render(&self, error: &AuthError) -> ErrorBody {
        let body = self.error(error.code(), error.message());
        ErrorBody::json(Bytes::from(body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_envelope_has_its_shape() {
        let key = json!({ "id": "key_1" });
        assert_eq!(Envelope::Plain.data(key.clone()), key);
        assert_eq!(Envelope::Data.data(key.clone()), json!({ "data": key }));
        assert_eq!(
            Envelope::Success.data(key.clone()),
            json!({ "success": true, "data": key })
        );
        assert_eq!(Envelope::Plain.list(vec![]), json!({ "data": [] }));
        assert_eq!(
            Envelope::Success.list(vec![key.clone()]),
            json!({ "success": true, "data": [key] })
        );
        assert_eq!(
            Envelope::Success.done(Some("API key revoked successfully")),
            json!({ "success": true, "message": "API key revoked successfully" })
        );
        assert_eq!(Envelope::Success.done(None), json!({ "success": true }));
        assert_eq!(
            Envelope::Success.error("invalid_api_key", "no"),
            json!({ "success": false, "error": { "code": "invalid_api_key", "message": "no" } })
        );
    }

    #[test]
    fn layer_rejections_in_the_envelope() {
        let body = Envelope::Success.render(&AuthError::MissingKey);
        let value: Value = serde_json::from_slice(&body.body).unwrap();
        assert_eq!(value["success"], false);
        assert_eq!(value["error"]["code"], "missing_api_key");
        // The default stays byte-for-byte what JsonErrorFormat writes.
        let plain = Envelope::Plain.render(&AuthError::InvalidKey);
        let default = crate::error::JsonErrorFormat.render(&AuthError::InvalidKey);
        assert_eq!(
            serde_json::from_slice::<Value>(&plain.body).unwrap(),
            serde_json::from_slice::<Value>(&default.body).unwrap()
        );
    }
}
