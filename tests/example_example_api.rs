//! examples/example_api.rs over real HTTP, walking seed 003 ("Example API"
//! authentication page): envelopes, `key_…` ids, the list fields, the DELETE message,
//! live and test keys, and restrictions by IP, referrer and endpoint.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::example_server::ExampleServer;
use support::raw_http::Reply;

/// A failure in the document's envelope, with its code.
fn failed(reply: &Reply, status: u16, code: &str) {
    let body = reply.json();
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(body["success"], false, "{}", reply.body);
    assert_eq!(body["error"]["code"], code, "{}", reply.body);
}

fn is_timestamp(value: &Value) -> bool {
    // 2025-01-01T00:00:00Z
    let s = value.as_str().unwrap_or_default();
    s.len() == 20
        && s.ends_with('Z')
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_api_follows_its_document() {
    let mut server = ExampleServer::start("example_api").await;
    let [live, test, ip_restricted, endpoint_restricted] = [
        "LIVE_KEY",
        "TEST_KEY",
        "IP_RESTRICTED_KEY",
        "ENDPOINT_RESTRICTED_KEY",
    ]
    .map(|n| server.credential(n));
    assert!(live.starts_with("sk_live_") && test.starts_with("sk_test_"));
    let call = |key: Option<&str>, method: &str, path: &str, extra: &[&str], body: &str| {
        let (server, key) = (&server, key.map(str::to_owned));
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        async move {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            server
                .send(&method, &path, key.as_deref(), &extra, &body)
                .await
        }
    };

    // The example request, with a live key and a test key.
    for key in [&live, &test] {
        let user = call(Some(key), "GET", "/v1/users/usr_123", &[], "").await;
        assert_eq!(user.status, 200, "{}", user.body);
        assert_eq!(user.json()["success"], true);
        assert_eq!(user.json()["data"]["id"], "usr_123");
    }
    failed(
        &call(Some(&live), "GET", "/v1/users/usr_999", &[], "").await,
        404,
        "user_not_found",
    );

    // 401 Unauthorized: missing or invalid key, in the envelope, with the challenge.
    let missing = call(None, "GET", "/v1/users/usr_123", &[], "").await;
    failed(&missing, 401, "missing_api_key");
    assert!(
        missing
            .head
            .contains("www-authenticate: bearer realm=\"api\"")
    );
    failed(
        &call(
            Some("sk_live_abc123xyz789"),
            "GET",
            "/v1/users/usr_123",
            &[],
            "",
        )
        .await,
        401,
        "invalid_api_key",
    );

    // Listing: exactly the documented fields, ids `key_…`, prefix by environment.
    let list = call(Some(&live), "GET", "/v1/api-keys", &[], "").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["success"], true);
    let keys = list.json()["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3, "the three live keys: {keys:?}");
    for key in &keys {
        let mut fields: Vec<_> = key.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["created_at", "id", "last_used", "name", "prefix"]);
        assert!(key["id"].as_str().unwrap().starts_with("key_"), "{key}");
        assert_eq!(key["prefix"], "sk_live_");
        assert!(is_timestamp(&key["created_at"]), "{key}");
    }
    assert!(
        ![&live, &test, &ip_restricted, &endpoint_restricted]
            .iter()
            .any(|k| list.body.contains(k.as_str()))
    );
    let test_list = call(Some(&test), "GET", "/v1/api-keys", &[], "")
        .await
        .json();
    assert_eq!(test_list["data"].as_array().unwrap().len(), 1);
    assert_eq!(test_list["data"][0]["prefix"], "sk_test_");
    // `last_used`: the live key was used above; the stamp reaches the store within a flush.
    let mut last_used = Value::Null;
    for _ in 0..50 {
        let list = call(Some(&live), "GET", "/v1/api-keys", &[], "")
            .await
            .json();
        last_used = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "LIVE_KEY")
            .unwrap()["last_used"]
            .clone();
        if !last_used.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(is_timestamp(&last_used), "last_used: {last_used}");

    // Restricted by IP: refused from loopback, and a forged X-Forwarded-For changes nothing.
    failed(
        &call(Some(&ip_restricted), "GET", "/v1/users/usr_123", &[], "").await,
        403,
        "ip_not_allowed",
    );
    failed(
        &call(
            Some(&ip_restricted),
            "GET",
            "/v1/users/usr_123",
            &["X-Forwarded-For: 203.0.113.7"],
            "",
        )
        .await,
        403,
        "ip_not_allowed",
    );
    // Restricted by endpoint: `GET /v1/users/*` only.
    assert_eq!(
        call(
            Some(&endpoint_restricted),
            "GET",
            "/v1/users/usr_123",
            &[],
            ""
        )
        .await
        .status,
        200
    );
    failed(
        &call(Some(&endpoint_restricted), "GET", "/v1/api-keys", &[], "").await,
        403,
        "endpoint_not_allowed",
    );
    failed(
        &call(
            Some(&endpoint_restricted),
            "DELETE",
            "/v1/users/usr_123",
            &[],
            "",
        )
        .await,
        403,
        "endpoint_not_allowed",
    );

    // Create a key restricted by referrer; it is shown once, in the envelope.
    let created = call(
        Some(&live),
        "POST",
        "/v1/api-keys",
        &[],
        r#"{"name": "Production Key", "restrictions": {"allowed_referrers": ["https://app.example.com"]}}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(created["success"], true);
    let data = &created["data"];
    assert_eq!(
        (data["name"].clone(), data["prefix"].clone()),
        (json!("Production Key"), json!("sk_live_"))
    );
    assert!(data["last_used"].is_null());
    let id = data["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"));
    let secret = data["key"].as_str().unwrap().to_owned();
    failed(
        &call(Some(&secret), "GET", "/v1/users/usr_123", &[], "").await,
        403,
        "referrer_not_allowed",
    );
    let from_app = call(
        Some(&secret),
        "GET",
        "/v1/users/usr_123",
        &["Referer: https://app.example.com/dashboard"],
        "",
    )
    .await;
    assert_eq!(from_app.status, 200, "{}", from_app.body);
    failed(
        &call(
            Some(&secret),
            "GET",
            "/v1/users/usr_123",
            &["Referer: https://evil.example.com/"],
            "",
        )
        .await,
        403,
        "referrer_not_allowed",
    );

    // Revoking: the documented message, every time; the key stops at once.
    for _ in 0..2 {
        let revoked = call(
            Some(&live),
            "DELETE",
            &format!("/v1/api-keys/{id}"),
            &[],
            "",
        )
        .await;
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        assert_eq!(
            revoked.json(),
            json!({ "success": true, "message": "API key revoked successfully" })
        );
    }
    failed(
        &call(
            Some(&secret),
            "GET",
            "/v1/users/usr_123",
            &["Referer: https://app.example.com/"],
            "",
        )
        .await,
        401,
        "api_key_revoked",
    );
    // A test key cannot revoke a live key; unknown ids are 404, in the envelope.
    failed(
        &call(
            Some(&test),
            "DELETE",
            &format!("/v1/api-keys/{id}"),
            &[],
            "",
        )
        .await,
        404,
        "api_key_not_found",
    );
    failed(
        &call(Some(&live), "DELETE", "/v1/api-keys/key_123", &[], "").await,
        404,
        "api_key_not_found",
    );
    failed(
        &call(Some(&live), "POST", "/v1/api-keys", &[], "{").await,
        400,
        "invalid_json",
    );
    // Unknown routes and methods: in the envelope too.
    failed(
        &call(Some(&live), "GET", "/v1/nothing", &[], "").await,
        404,
        "not_found",
    );
    failed(
        &call(Some(&live), "PUT", "/v1/users/usr_123", &[], "").await,
        405,
        "method_not_allowed",
    );
    // Rotation is not one of this API's routes: create, then revoke.
    failed(
        &call(
            Some(&live),
            "POST",
            &format!("/v1/api-keys/{id}/rotate"),
            &[],
            "",
        )
        .await,
        404,
        "not_found",
    );

    assert!(server.interrupt().success());
}
