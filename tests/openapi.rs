//! The quickstart's `GET /openapi.json` over real HTTP: an OpenAPI 3.1 document that
//! utoipa reads, whose references all resolve, where every management route declares
//! the `bearer` requirement with its scope, and where every status and code that the
//! routes answer to a battery of requests (good and bad) is declared for that route.
#![cfg(all(feature = "openapi", feature = "axum", feature = "sqlite"))]

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::example_server::ExampleServer;

/// Every `$ref` in `value`.
fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(target)) = fields.get("$ref") {
                out.push(target);
            }
            fields.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The document node a local `$ref` points at.
fn resolve<'d>(doc: &'d Value, target: &str) -> Option<&'d Value> {
    doc.pointer(target.strip_prefix('#')?)
}

/// The codes a response declares (its own error schema, or the one it refers to).
fn declared_codes(doc: &Value, response: &Value) -> BTreeSet<String> {
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(target) => resolve(doc, target).expect("a resolvable response"),
        None => response,
    };
    let schema = &response["content"]["application/json"]["schema"];
    schema["properties"]["error"]["allOf"][1]["properties"]["code"]["enum"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_describes_every_route_and_code_it_answers() {
    let server = ExampleServer::start("quickstart").await;
    let reply = server.send("GET", "/openapi.json", None, &[], "").await;
    assert_eq!(reply.status, 200, "served outside the key layer");
    let doc: Value = serde_json::from_str(&reply.body).unwrap();

    // A document utoipa reads back without losing a path, and OpenAPI 3.1.
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&parsed).unwrap()["paths"],
        doc["paths"]
    );
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]})
    );

    // Every reference resolves; every operation has an id (unique), responses, and
    // declares the parameters of its path.
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    assert!(targets.len() > 50);
    for target in targets {
        assert!(resolve(&doc, target).is_some(), "{target} does not resolve");
    }
    let mut ids = BTreeSet::new();
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(!operation["responses"].as_object().unwrap().is_empty());
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(['{', '}']);
                let declared = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
                assert!(declared, "{method} {path} does not declare {name}");
            }
            // Every route of this server needs a key: the requirement is declared.
            let security = &operation["security"];
            assert_eq!(
                security.as_array().map(Vec::len),
                Some(1),
                "{method} {path}"
            );
            assert!(security[0]["bearer"].is_array(), "{method} {path}");
            if path.starts_with("/v1/account/") {
                assert_eq!(security[0]["bearer"], json!(["admin"]), "{method} {path}");
            }
        }
    }
    for route in [
        ("post", "/v1/account/api-keys"),
        ("get", "/v1/account/api-keys"),
        ("get", "/v1/account/api-keys/{id}"),
        ("patch", "/v1/account/api-keys/{id}"),
        ("delete", "/v1/account/api-keys/{id}"),
        ("post", "/v1/account/api-keys/{id}/rotate"),
        ("get", "/v1/account/api-keys/{id}/usage"),
        ("get", "/v1/account/audit-events"),
        ("get", "/v1/items"),
        ("post", "/v1/items"),
        ("get", "/v1/whoami"),
    ] {
        assert!(
            doc["paths"][route.1][route.0].is_object(),
            "{route:?} missing"
        );
    }

    // A battery of requests: every status and code answered is declared for its route.
    let admin = server.credential("ADMIN_KEY");
    let read = server.credential("READ_KEY");
    let created = server
        .send(
            "POST",
            "/v1/account/api-keys",
            Some(&admin),
            &[],
            r#"{"name": "victim", "scopes": ["read"]}"#,
        )
        .await;
    assert_eq!(created.status, 201);
    let victim = created.json()["id"].as_str().unwrap().to_owned();
    let victim_key = created.json()["key"].as_str().unwrap().to_owned();
    let one = format!("/v1/account/api-keys/{victim}");
    let rotate = format!("{one}/rotate");
    let usage = format!("{one}/usage");
    let bad_key = "sk_live_0000000000000000000000000000000000000000000000000";
    let bodies = [
        "",
        "{nope",
        "[]",
        "{}",
        r#"{"name": ""}"#,
        r#"{"name": "x", "scopes": ["root"]}"#,
        r#"{"name": "x", "scopes": ["admin"], "expires_at": "tomorrow"}"#,
        r#"{"name": "x", "expires_at": "2001-01-01T00:00:00Z"}"#,
        r#"{"name": "x", "project_id": 3}"#,
        r#"{"name": "x", "restrictions": {"allowed_ips": ["nope"]}}"#,
        r#"{"name": "x", "owner_id": 7}"#,
        r#"{"name": "x", "metadata": []}"#,
        r#"{"name": "x", "ratelimits": [{"name": "a", "limit": 0, "window_seconds": 1}]}"#,
        r#"{"name": "x", "credits": {"remaining": -1}}"#,
        r#"{"overlap_seconds": -5}"#,
        r#"{"name": "renamed"}"#,
    ];
    let mut requests: Vec<(&str, String, &str, String)> = Vec::new();
    let routes: [(&str, &str, String); 8] = [
        (
            "post",
            "/v1/account/api-keys",
            "/v1/account/api-keys".into(),
        ),
        (
            "get",
            "/v1/account/api-keys",
            "/v1/account/api-keys?include=usage_24h".into(),
        ),
        ("get", "/v1/account/api-keys/{id}", one.clone()),
        ("patch", "/v1/account/api-keys/{id}", one.clone()),
        ("post", "/v1/account/api-keys/{id}/rotate", rotate.clone()),
        ("get", "/v1/account/api-keys/{id}/usage", usage.clone()),
        (
            "get",
            "/v1/account/audit-events",
            "/v1/account/audit-events?limit=5".into(),
        ),
        ("delete", "/v1/account/api-keys/{id}", one.clone()),
    ];
    for (method, template, url) in &routes {
        for token in [
            None,
            Some(bad_key),
            Some(read.as_str()),
            Some(admin.as_str()),
        ] {
            let sends_body = matches!(*method, "post" | "patch");
            for body in if sends_body {
                &bodies[..]
            } else {
                &bodies[..1]
            } {
                requests.push((method, (*template).to_owned(), body, url.clone()));
                let reply = server
                    .send(&method.to_uppercase(), url, token, &[], body)
                    .await;
                let operation = &doc["paths"][template][method];
                let status = reply.status.to_string();
                let response = &operation["responses"][&status];
                assert!(
                    response.is_object(),
                    "{method} {url} answered {status} ({}), not declared",
                    reply.body
                );
                if reply.status >= 400 {
                    let code = reply.code();
                    assert!(
                        declared_codes(&doc, response).contains(&code),
                        "{method} {url} answered {status} {code}, not declared"
                    );
                }
            }
        }
        // Unknown ids and bad queries.
        if template.contains("{id}") {
            let unknown = url.replace(&victim, "ak_doesnotexist");
            let body = if *method == "patch" {
                r#"{"name": "x"}"#
            } else {
                ""
            };
            let reply = server
                .send(&method.to_uppercase(), &unknown, Some(&admin), &[], body)
                .await;
            let status = reply.status.to_string();
            assert_eq!(status, "404", "{method} {unknown}");
            assert!(
                declared_codes(&doc, &doc["paths"][template][method]["responses"]["404"])
                    .contains(&reply.code())
            );
        }
    }
    for url in [
        format!("{usage}?from=yesterday"),
        "/v1/account/audit-events?limit=0".into(),
    ] {
        let template = if url.contains("usage") {
            "/v1/account/api-keys/{id}/usage"
        } else {
            "/v1/account/audit-events"
        };
        let reply = server.send("GET", &url, Some(&admin), &[], "").await;
        // The victim was revoked by the battery's DELETE: its usage is 404 then.
        let status = reply.status.to_string();
        let response = &doc["paths"][template]["get"]["responses"][&status];
        assert!(
            response.is_object(),
            "GET {url} answered {status}, not declared"
        );
        assert!(declared_codes(&doc, response).contains(&reply.code()));
    }
    assert!(requests.len() > 100);
    let _ = victim_key;

    // The active-key limit: 409, declared on create.
    let mut last = 201;
    for n in 0..60 {
        let body = format!(r#"{{"name": "k{n}", "scopes": ["read"]}}"#);
        let reply = server
            .send("POST", "/v1/account/api-keys", Some(&admin), &[], &body)
            .await;
        last = reply.status;
        if last == 409 {
            let response = &doc["paths"]["/v1/account/api-keys"]["post"]["responses"]["409"];
            assert!(declared_codes(&doc, response).contains(&reply.code()));
            break;
        }
    }
    assert_eq!(last, 409, "the limit was never reached");
}
