//! An OpenAPI 3.1 description (feature `openapi`) of the management routes and of the
//! answers of the key layer, as a [`utoipa`] document to merge into your own.
//!
//! ```
//! use tower_api_keys::manage::openapi::{ManagementDoc, require_api_key};
//! use tower_api_keys::scope::Scope;
//! use utoipa::openapi::OpenApi;
//!
//! // Your document (from `#[derive(utoipa::OpenApi)]`, say) …
//! let mut api: OpenApi = serde_json::from_value(serde_json::json!({
//!     "openapi": "3.1.0",
//!     "info": {"title": "Items", "version": "1"},
//!     "paths": {"/v1/items": {"get": {"responses": {"200": {"description": "the items"}}}}}
//! })).unwrap();
//! // … your routes answer the layer's 400/401/402/403/429/503 and need a key with `read` …
//! for item in api.paths.paths.values_mut() {
//!     if let Some(get) = item.get.as_mut() {
//!         require_api_key(get, Some(&Scope::Read));
//!     }
//! }
//! // … and the management routes, mounted at /v1/account, with the schemes and
//! // responses both refer to.
//! api.merge(ManagementDoc::new().prefix("/v1/account").document());
//! assert!(api.paths.paths.contains_key("/v1/account/api-keys"));
//! ```
//!
//! The document describes the default answers of [`KeyRoutes`](super::KeyRoutes)
//! ([`Envelope::Plain`](crate::error::Envelope), every field of a key, PATCH answering
//! the key, DELETE 204). Routes shaped otherwise (another envelope or key view) are
//! described by your own document.

use serde_json::{Map, Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{OpenApi, Ref, RefOr};

use crate::scope::Scope;

/// The name of the security scheme (HTTP bearer) in the documents made here.
pub const SECURITY_SCHEME: &str = "bearer";

/// The codes each status of the key layer can answer with, and the headers it sends.
const LAYER: [(u16, &str, &[&str], &[&str]); 6] = [
    (
        400,
        "ApiKeyBadRequest",
        &["invalid_request"],
        &["WWW-Authenticate"],
    ),
    (
        401,
        "ApiKeyUnauthorized",
        &[
            "missing_api_key",
            "invalid_api_key",
            "api_key_revoked",
            "api_key_expired",
            "environment_mismatch",
        ],
        &["WWW-Authenticate"],
    ),
    (
        402,
        "ApiKeyPaymentRequired",
        &["payment_required", "credits_exhausted"],
        &[],
    ),
    (
        403,
        "ApiKeyForbidden",
        &[
            "insufficient_scope",
            "project_forbidden",
            "ip_not_allowed",
            "referrer_not_allowed",
            "endpoint_not_allowed",
        ],
        &["WWW-Authenticate"],
    ),
    (
        429,
        "ApiKeyRateLimited",
        &["rate_limited"],
        &["Retry-After", "RateLimit", "RateLimit-Policy"],
    ),
    (
        503,
        "ApiKeyUnavailable",
        &["auth_unavailable"],
        &["Retry-After"],
    ),
];

/// The codes the key layer answers with, by status.
#[must_use]
pub fn layer_codes(status: u16) -> &'static [&'static str] {
    LAYER
        .iter()
        .find(|(s, ..)| *s == status)
        .map_or(&[], |(_, _, codes, _)| codes)
}

/// Marks `operation` as needing an API key with `scope` (any valid key with `None`):
/// the [`SECURITY_SCHEME`] requirement, and the layer's answers (400, 401, 402, 403,
/// 429, 503) as references to the responses of [`ManagementDoc::document`] (merge it,
/// or [`layer_components`], into your document). Responses the operation already
/// declares for those statuses are kept.
pub fn require_api_key(operation: &mut Operation, scope: Option<&Scope>) {
    let scopes: Vec<String> = scope.iter().map(|s| s.as_str().to_owned()).collect();
    operation.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, scopes)]);
    for (status, name, ..) in LAYER {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

/// Only the security scheme, the layer's responses and the error schema, for documents
/// that describe no management route.
#[must_use]
pub fn layer_components() -> OpenApi {
    let mut document = ManagementDoc::new().document();
    document.paths.paths.clear();
    if let Some(components) = document.components.as_mut() {
        components
            .schemas
            .retain(|name, _| name == "Error" || name == "ErrorBody");
    }
    document
}

/// The description of the management routes, as mounted by your application.
#[derive(Debug, Clone)]
pub struct ManagementDoc {
    prefix: String,
    scope: Option<Scope>,
    rotation: bool,
    renames: bool,
}

impl Default for ManagementDoc {
    fn default() -> Self {
        Self::new()
    }
}

/// What one route is: method, path, summary, the scope-free parts of its answers.
struct Route {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    /// Request body schema, if any.
    body: Option<&'static str>,
    /// Success status, description and schema (`None`: no body).
    success: (u16, &'static str, Option<&'static str>),
    /// The route's own error codes, by status.
    errors: &'static [(u16, &'static [&'static str])],
    /// Query parameters.
    query: &'static [(&'static str, &'static str)],
}

const KEY_FIELDS_422: &[&str] = &[
    "invalid_restrictions",
    "invalid_owner",
    "invalid_metadata",
    "invalid_ratelimits",
    "invalid_credits",
];

const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/api-keys",
        id: "createApiKey",
        summary: "Create a key; the answer shows it once",
        body: Some("NewApiKey"),
        success: (
            201,
            "The key, with its secret shown this once",
            Some("CreatedApiKey"),
        ),
        errors: &[
            (400, &["invalid_json"]),
            (
                422,
                &[
                    "invalid_body",
                    "invalid_name",
                    "invalid_scope",
                    "invalid_project",
                    "invalid_expiry",
                    "invalid_environment",
                    "invalid_restrictions",
                    "invalid_owner",
                    "invalid_metadata",
                    "invalid_ratelimits",
                    "invalid_credits",
                ],
            ),
            (403, &["key_exceeds_caller"]),
            (409, &["api_key_limit_reached"]),
        ],
        query: &[],
    },
    Route {
        method: "get",
        path: "/api-keys",
        id: "listApiKeys",
        summary: "List the caller's active keys",
        body: None,
        success: (200, "The keys", Some("ApiKeyList")),
        errors: &[],
        query: &[(
            "include",
            "`usage_24h`: each key's accepted requests of the last 24 hours",
        )],
    },
    Route {
        method: "get",
        path: "/api-keys/{id}",
        id: "getApiKey",
        summary: "One key",
        body: None,
        success: (200, "The key", Some("ApiKey")),
        errors: &[(404, &["api_key_not_found"])],
        query: &[],
    },
    Route {
        method: "patch",
        path: "/api-keys/{id}",
        id: "updateApiKey",
        summary: "Rename, restrict, set the end user, metadata, rate limits or credits",
        body: Some("ApiKeyChanges"),
        success: (200, "The key as it now is", Some("ApiKey")),
        errors: &[
            (400, &["invalid_json"]),
            (422, &["invalid_body", "invalid_name", "rename_not_allowed"]),
            (403, &["key_exceeds_caller"]),
            (404, &["api_key_not_found"]),
        ],
        query: &[],
    },
    Route {
        method: "delete",
        path: "/api-keys/{id}",
        id: "revokeApiKey",
        summary: "Revoke a key (idempotent)",
        body: None,
        success: (204, "Revoked", None),
        errors: &[(404, &["api_key_not_found"])],
        query: &[],
    },
    Route {
        method: "post",
        path: "/api-keys/{id}/rotate",
        id: "rotateApiKey",
        summary: "Replace a key by a new one; the answer shows it once",
        body: Some("Rotation"),
        success: (
            201,
            "The new key, with its secret shown this once",
            Some("CreatedApiKey"),
        ),
        errors: &[
            (400, &["invalid_json"]),
            (422, &["invalid_body", "invalid_overlap"]),
            (403, &["key_exceeds_caller"]),
            (404, &["api_key_not_found"]),
            (409, &["api_key_limit_reached"]),
        ],
        query: &[],
    },
    Route {
        method: "get",
        path: "/api-keys/{id}/usage",
        id: "getApiKeyUsage",
        summary: "A key's hourly usage",
        body: None,
        success: (200, "Hour by hour, oldest first", Some("UsageList")),
        errors: &[(422, &["invalid_query"]), (404, &["api_key_not_found"])],
        query: &[
            ("from", "RFC 3339; default 24 hours ago"),
            (
                "to",
                "RFC 3339; default an hour from now; at most 31 days after from",
            ),
        ],
    },
    Route {
        method: "get",
        path: "/audit-events",
        id: "listAuditEvents",
        summary: "The account's audit trail, newest first",
        body: None,
        success: (200, "A page of events", Some("AuditEventPage")),
        errors: &[(422, &["invalid_query"])],
        query: &[
            ("key_id", "Only the events of this key"),
            ("action", "Only this action, such as `key.created`"),
            ("from", "RFC 3339"),
            ("to", "RFC 3339"),
            ("cursor", "The `next_cursor` of the previous page"),
            ("limit", "1 to 200 (default 50)"),
        ],
    },
];

impl ManagementDoc {
    /// The routes at the root (`/api-keys`), needing `admin` keys, with rotation and
    /// renaming: the defaults of [`KeyRoutes`](super::KeyRoutes).
    #[must_use]
    pub fn new() -> Self {
        ManagementDoc {
            prefix: String::new(),
            scope: Some(Scope::Admin),
            rotation: true,
            renames: true,
        }
    }

    /// Where the routes are nested (`/v1/account`).
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The scope API keys need (`None`: any valid key), as given to
    /// [`KeyRoutes::scope`](super::KeyRoutes::scope).
    #[must_use]
    pub fn scope(mut self, scope: Option<Scope>) -> Self {
        self.scope = scope;
        self
    }

    /// Whether the rotate route exists (as [`KeyRoutes::rotation`](super::KeyRoutes::rotation)).
    #[must_use]
    pub fn rotation(mut self, enabled: bool) -> Self {
        self.rotation = enabled;
        self
    }

    /// Whether keys can be renamed (as [`KeyRoutes::renames`](super::KeyRoutes::renames)).
    #[must_use]
    pub fn renames(mut self, allowed: bool) -> Self {
        self.renames = allowed;
        self
    }

    /// The document: an OpenAPI 3.1 description of every route with its bodies, every
    /// status and code it can answer (the layer's included), the `bearer` scheme with
    /// the scope each route needs, and the layer's answers as reusable responses
    /// (`#/components/responses/ApiKeyUnauthorized`, …).
    #[must_use]
    pub fn document(&self) -> OpenApi {
        serde_json::from_value(self.json()).expect("the management document is valid OpenAPI")
    }

    /// The document as JSON.
    fn json(&self) -> Value {
        let mut paths = Map::new();
        for route in ROUTES {
            if route.id == "rotateApiKey" && !self.rotation {
                continue;
            }
            let path = format!("{}{}", self.prefix, route.path);
            let item = paths.entry(path).or_insert_with(|| json!({}));
            item[route.method] = self.operation(route);
        }
        let mut responses = Map::new();
        for (status, name, codes, headers) in LAYER {
            responses.insert(name.to_owned(), error_response(status, codes, headers));
        }
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "API keys",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Key management (tower-api-keys). Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code.",
            },
            "paths": paths,
            "components": {
                "securitySchemes": {
                    SECURITY_SCHEME: {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An API key (`sk_live_…`) as a Bearer token. The scopes a route lists are the ones the key must hold.",
                    }
                },
                "responses": responses,
                "schemas": schemas(),
            },
        })
    }

    fn operation(&self, route: &Route) -> Value {
        let scopes: Vec<&str> = self.scope.iter().map(Scope::as_str).collect();
        let mut responses = Map::new();
        let (status, description, schema) = route.success;
        responses.insert(
            status.to_string(),
            match schema {
                Some(schema) => json!({
                    "description": description,
                    "content": {"application/json": {"schema": schema_ref(schema)}},
                }),
                None => json!({ "description": description }),
            },
        );
        // The route's own codes, joined with the layer's where both answer a status.
        let mut statuses: Vec<u16> = route.errors.iter().map(|(s, _)| *s).collect();
        statuses.extend([401, 403, 503]);
        for (s, ..) in LAYER {
            statuses.push(s);
        }
        statuses.sort_unstable();
        statuses.dedup();
        for status in statuses {
            let mut codes: Vec<&str> = route
                .errors
                .iter()
                .filter(|(s, _)| *s == status)
                .flat_map(|(_, codes)| codes.iter().copied())
                .filter(|code| match (route.method, self.renames) {
                    ("patch", true) => *code != "rename_not_allowed",
                    ("patch", false) => *code != "invalid_name",
                    _ => true,
                })
                .collect();
            if status == 503 {
                codes.push("store_unavailable");
            }
            if status == 403 {
                // A signed-in user's request from another site.
                codes.push("cross_site_request");
            }
            if status == 422 && route.method == "patch" {
                codes.extend(KEY_FIELDS_422);
            }
            let layer = LAYER.iter().find(|(s, ..)| *s == status);
            let response = match (codes.is_empty(), layer) {
                (true, Some((_, name, ..))) => {
                    json!({ "$ref": format!("#/components/responses/{name}") })
                }
                (_, Some((_, _, layer_codes, headers))) => {
                    let mut all: Vec<&str> = layer_codes.to_vec();
                    all.extend(codes);
                    error_response(status, &all, headers)
                }
                (_, None) => error_response(status, &codes, &[]),
            };
            responses.insert(status.to_string(), response);
        }
        let mut parameters: Vec<Value> = Vec::new();
        if route.path.contains("{id}") {
            parameters.push(json!({
                "name": "id", "in": "path", "required": true,
                "description": "The key's id (`ak_…`)",
                "schema": {"type": "string"},
            }));
        }
        for (name, description) in route.query {
            parameters.push(json!({
                "name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": "string"},
            }));
        }
        let mut operation = json!({
            "operationId": route.id,
            "summary": route.summary,
            "tags": ["API keys"],
            "security": [{ SECURITY_SCHEME: scopes }],
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = route.body {
            operation["requestBody"] = json!({
                "required": route.id != "rotateApiKey",
                "content": {"application/json": {"schema": schema_ref(body)}},
            });
        }
        operation
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An error answer: the error body with `code` one of `codes`, and `headers`.
fn error_response(status: u16, codes: &[&str], headers: &[&str]) -> Value {
    let mut response = json!({
        "description": description(status),
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "allOf": [
                    schema_ref("ErrorBody"),
                    {"type": "object", "properties": {"code": {"type": "string", "enum": codes}}},
                ],
            }},
        }}},
    });
    if !headers.is_empty() {
        let headers: Map<String, Value> = headers
            .iter()
            .map(|name| {
                let text = match *name {
                    "WWW-Authenticate" => {
                        "The RFC 6750 challenge: `Bearer realm=\"…\", error=\"…\"`"
                    }
                    "Retry-After" => "Seconds until a retry can succeed",
                    "RateLimit" => "The closest limit: `\"name\";r=remaining;t=seconds`",
                    _ => "The limits: `\"name\";q=quota;w=window`",
                };
                (
                    (*name).to_owned(),
                    json!({"description": text, "schema": {"type": "string"}}),
                )
            })
            .collect();
        response["headers"] = Value::Object(headers);
    }
    response
}

fn description(status: u16) -> &'static str {
    match status {
        400 => "Malformed request",
        401 => "No usable API key",
        402 => "The account is past due, or the key's credits are spent",
        403 => "The key may not do this",
        404 => "No such key among the caller's",
        409 => "The account has its maximum of active keys",
        422 => "A field is wrong",
        429 => "A rate limit is spent",
        503 => "A backend is unavailable; retry",
        _ => "Refused",
    }
}

fn schemas() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let time_or_null = json!({"type": ["string", "null"], "format": "date-time"});
    let text_or_null = json!({"type": ["string", "null"]});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable; match on it"},
                "message": {"type": "string", "description": "For humans; may change"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": schema_ref("ErrorBody")},
        },
        "Restrictions": {
            "type": "object",
            "properties": {
                "allowed_ips": {"type": "array", "items": {"type": "string", "description": "An address or CIDR range"}},
                "allowed_referrers": {"type": "array", "items": {"type": "string", "description": "An origin, `https://*.example.com` allowed"}},
                "allowed_endpoints": {"type": "array", "items": {"type": "string", "description": "`METHOD /path`, `*` for any segment"}},
            },
        },
        "RateLimit": {
            "type": "object",
            "required": ["name", "limit", "window_seconds"],
            "properties": {
                "name": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1},
                "window_seconds": {"type": "integer", "minimum": 1},
            },
        },
        "Credits": {
            "type": "object",
            "required": ["remaining"],
            "properties": {
                "remaining": {"type": "integer", "minimum": 0},
                "refill": {
                    "type": "object",
                    "required": ["interval", "amount"],
                    "properties": {
                        "interval": {"type": "string", "enum": ["daily", "monthly"]},
                        "amount": {"type": "integer", "minimum": 0},
                        "day": {"type": "integer", "minimum": 1, "maximum": 31},
                    },
                },
            },
        },
        "ApiKey": {
            "type": "object",
            "required": ["id", "name", "account_id", "hint", "prefix", "environment", "scopes", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string", "maxLength": 100},
                "account_id": {"type": "string"},
                "project_id": text_or_null,
                "hint": {"type": "string", "description": "The key's last four characters"},
                "prefix": {"type": "string", "description": "Such as `sk_live`"},
                "environment": {"type": "string"},
                "scopes": strings,
                "created_at": time,
                "last_used_at": time_or_null,
                "expires_at": time_or_null,
                "revoked_at": time_or_null,
                "restrictions": schema_ref("Restrictions"),
                "created_by": text_or_null,
                "owner_id": text_or_null,
                "metadata": {"type": "object"},
                "ratelimits": {"type": "array", "items": schema_ref("RateLimit")},
                "credits": {"oneOf": [schema_ref("Credits"), {"type": "null"}]},
                "usage_24h": {"type": "integer", "description": "With `?include=usage_24h`"},
            },
        },
        "CreatedApiKey": {
            "allOf": [
                schema_ref("ApiKey"),
                {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": {"type": "string", "description": "The secret, shown this once"},
                        "rotated_from": {"type": "string", "description": "The key it replaces"},
                    },
                },
            ],
        },
        "ApiKeyList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": schema_ref("ApiKey")}},
        },
        "NewApiKey": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "scopes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "project_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "expires_at": time,
                "restrictions": schema_ref("Restrictions"),
                "owner_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "metadata": {"type": "object"},
                "ratelimits": {"type": "array", "maxItems": 5, "items": schema_ref("RateLimit")},
                "credits": schema_ref("Credits"),
            },
        },
        "ApiKeyChanges": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "restrictions": {"oneOf": [schema_ref("Restrictions"), {"type": "null"}]},
                "owner_id": text_or_null,
                "metadata": {"type": ["object", "null"]},
                "ratelimits": {"oneOf": [{"type": "array", "maxItems": 5, "items": schema_ref("RateLimit")}, {"type": "null"}]},
                "credits": {"oneOf": [schema_ref("Credits"), {"type": "null"}]},
            },
        },
        "Rotation": {
            "type": "object",
            "properties": {
                "overlap_seconds": {"type": "integer", "minimum": 0, "maximum": 7_776_000, "description": "How long the old key keeps working (default 0)"},
            },
        },
        "UsageList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": {
                "type": "object",
                "required": ["hour", "requests", "outcomes", "ips"],
                "properties": {
                    "hour": time,
                    "requests": {"type": "integer"},
                    "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "ips": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"ip": {"type": "string"}, "count": {"type": "integer"}},
                    }},
                },
            }}},
        },
        "AuditEventPage": {
            "type": "object",
            "required": ["data", "next_cursor"],
            "properties": {
                "data": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "at", "account_id", "actor", "action", "changes", "prev_hash", "hash"],
                    "properties": {
                        "id": {"type": "string"},
                        "at": time,
                        "account_id": {"type": "string"},
                        "environment": text_or_null,
                        "actor": {"type": "string"},
                        "action": {"type": "string"},
                        "key_id": text_or_null,
                        "changes": {"type": "object"},
                        "client_ip": text_or_null,
                        "prev_hash": {"type": "string"},
                        "hash": {"type": "string"},
                    },
                }},
                "next_cursor": text_or_null,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_layer_is_in_its_table() {
        for error in crate::error::every_error() {
            let status = error.status().as_u16();
            assert!(
                layer_codes(status).contains(&error.code()),
                "{} ({status}) is not described",
                error.code()
            );
        }
    }

    #[test]
    fn the_document_survives_a_round_trip_through_utoipa() {
        let doc = ManagementDoc::new().prefix("/v1/account/");
        let json = doc.json();
        let parsed = serde_json::to_value(doc.document()).unwrap();
        assert_eq!(parsed["openapi"], "3.1.0");
        assert_eq!(
            parsed["paths"], json["paths"],
            "utoipa dropped a part of a path"
        );
        assert_eq!(
            parsed["components"]["responses"],
            json["components"]["responses"]
        );
        assert!(parsed["paths"]["/v1/account/api-keys/{id}/rotate"].is_object());
    }

    #[test]
    fn switches_leave_out_what_is_not_mounted() {
        let doc = ManagementDoc::new()
            .rotation(false)
            .renames(false)
            .scope(None)
            .json();
        assert!(doc["paths"]["/api-keys/{id}/rotate"].is_null());
        let patch = &doc["paths"]["/api-keys/{id}"]["patch"];
        assert_eq!(patch["security"], json!([{"bearer": []}]));
        let codes = &patch["responses"]["422"]["content"]["application/json"]["schema"]["properties"]
            ["error"]["allOf"][1]["properties"]["code"]["enum"];
        assert!(!codes.as_array().unwrap().contains(&json!("invalid_name")));
        assert!(
            codes
                .as_array()
                .unwrap()
                .contains(&json!("rename_not_allowed"))
        );
    }

    #[test]
    fn require_api_key_adds_the_scheme_and_the_layer_responses() {
        let mut operation = Operation::default();
        require_api_key(&mut operation, Some(&Scope::Write));
        let json = serde_json::to_value(&operation).unwrap();
        assert_eq!(json["security"], json!([{"bearer": ["write"]}]));
        assert_eq!(
            json["responses"]["429"]["$ref"],
            "#/components/responses/ApiKeyRateLimited"
        );
        let components = serde_json::to_value(layer_components()).unwrap();
        assert!(components["components"]["responses"]["ApiKeyRateLimited"].is_object());
        assert!(components["paths"].as_object().unwrap().is_empty());
    }
}
