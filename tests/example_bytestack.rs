//! examples/bytestack.rs over real HTTP, walking seeds 001 and 002 (ByteStack's API-key
//! and authentication pages): the scope table, 401/402/403, no rename, rotation by
//! create-then-revoke.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use serde_json::Value;
use support::example_server::ExampleServer;
use support::raw_http::Reply;

const QUERY: &str = r#"{"prompt": "Mentions of Acme on X this week", "sources": ["x"]}"#;

struct Api<'s> {
    server: &'s ExampleServer,
}

impl Api<'_> {
    async fn call(&self, key: &str, method: &str, path: &str, body: &str) -> Reply {
        self.server.send(method, path, Some(key), &[], body).await
    }

    /// Which of ByteStack's operations `key` may perform, as statuses.
    async fn walk(&self, key: &str) -> Vec<(&'static str, u16)> {
        let query = self.call(key, "POST", "/v1/queries", QUERY).await;
        let query_id = query.json()["id"].as_str().unwrap_or("qry_none").to_owned();
        let job = self
            .call(
                key,
                "POST",
                "/v1/jobs",
                &format!(r#"{{"query_id": "{query_id}", "schedule": "0 * * * *"}}"#),
            )
            .await;
        let job_id = job.json()["id"].as_str().unwrap_or("job_none").to_owned();
        vec![
            ("submit query", query.status),
            ("create job", job.status),
            (
                "list sources",
                self.call(key, "GET", "/v1/sources", "").await.status,
            ),
            (
                "query result",
                self.call(key, "GET", &format!("/v1/queries/{query_id}"), "")
                    .await
                    .status,
            ),
            (
                "job status",
                self.call(key, "GET", &format!("/v1/jobs/{job_id}"), "")
                    .await
                    .status,
            ),
            (
                "configure webhook",
                self.call(
                    key,
                    "POST",
                    "/v1/webhooks",
                    r#"{"url": "https://hooks.example.com"}"#,
                )
                .await
                .status,
            ),
            (
                "list keys",
                self.call(key, "GET", "/v1/api-keys", "").await.status,
            ),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestack_follows_its_documents() {
    let mut server = ExampleServer::start("bytestack").await;
    let api = Api { server: &server };
    let [admin, write, read, past_due, grace] = [
        "ADMIN_KEY",
        "WRITE_KEY",
        "READ_KEY",
        "PAST_DUE_KEY",
        "GRACE_KEY",
    ]
    .map(|n| server.credential(n));

    // The scope table: read ⊂ write ⊂ admin.
    assert_eq!(
        api.walk(&admin).await,
        [
            ("submit query", 201),
            ("create job", 201),
            ("list sources", 200),
            ("query result", 200),
            ("job status", 200),
            ("configure webhook", 201),
            ("list keys", 200)
        ]
    );
    assert_eq!(
        api.walk(&write).await,
        [
            ("submit query", 201),
            ("create job", 201),
            ("list sources", 200),
            ("query result", 200),
            ("job status", 200),
            ("configure webhook", 403),
            ("list keys", 403)
        ]
    );
    // A read key gets 403 for writes, and reads (here: ids it cannot see, 404, not 403).
    assert_eq!(
        api.walk(&read).await,
        [
            ("submit query", 403),
            ("create job", 403),
            ("list sources", 200),
            ("query result", 404),
            ("job status", 404),
            ("configure webhook", 403),
            ("list keys", 403)
        ]
    );
    // A write key's query, read back with the read key of the same account.
    let query = api.call(&write, "POST", "/v1/queries", QUERY).await.json();
    let result = api
        .call(
            &read,
            "GET",
            &format!("/v1/queries/{}", query["id"].as_str().unwrap()),
            "",
        )
        .await;
    assert_eq!(
        (result.status, result.json()["prompt"].clone()),
        (200, query["prompt"].clone())
    );
    // 403 names the missing scope, in the body and the RFC 6750 challenge.
    let refused = api.call(&read, "POST", "/v1/queries", QUERY).await;
    assert_eq!(refused.code(), "insufficient_scope");
    assert!(
        refused
            .head
            .contains(r#"error="insufficient_scope", scope="write""#),
        "{}",
        refused.head
    );

    // 401: missing, malformed (no space after Bearer, a typo), revoked.
    let missing = server.send("GET", "/v1/sources", None, &[], "").await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "missing_api_key".into())
    );
    let glued = server
        .send(
            "GET",
            "/v1/sources",
            None,
            &[&format!("Authorization: Bearer{read}")],
            "",
        )
        .await;
    assert_eq!(glued.status, 401);
    let typo = api
        .call(&format!("{read}x"), "GET", "/v1/sources", "")
        .await;
    assert_eq!((typo.status, typo.code()), (401, "invalid_api_key".into()));

    // 402 after the 7-day grace period; within it, full access.
    let unpaid = api.call(&past_due, "GET", "/v1/sources", "").await;
    assert_eq!(
        (unpaid.status, unpaid.code()),
        (402, "payment_required".into())
    );
    assert_eq!(
        api.call(&past_due, "POST", "/v1/queries", QUERY)
            .await
            .status,
        402
    );
    assert_eq!(api.call(&grace, "GET", "/v1/sources", "").await.status, 200);
    assert_eq!(
        api.call(&grace, "POST", "/v1/queries", QUERY).await.status,
        201
    );

    // Keys (admin): created with one or more scopes, shown once, never renamed.
    let created = api
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            r#"{"name": "analytics-dashboard", "scopes": ["read"]}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let dashboard = created.json();
    let dashboard_key = dashboard["key"].as_str().unwrap().to_owned();
    assert_eq!(dashboard["scopes"], serde_json::json!(["read"]));
    assert_eq!(
        api.call(&dashboard_key, "GET", "/v1/sources", "")
            .await
            .status,
        200
    );
    assert_eq!(
        api.call(&dashboard_key, "POST", "/v1/queries", QUERY)
            .await
            .status,
        403
    );
    let both = api
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            r#"{"name": "pipeline", "scopes": ["read", "write"]}"#,
        )
        .await;
    assert_eq!(both.status, 201);
    assert_eq!(both.json()["scopes"], serde_json::json!(["read", "write"]));
    let unknown = api
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            r#"{"name": "x", "scopes": ["billing"]}"#,
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (422, "invalid_scope".into())
    );
    let path = format!("/v1/api-keys/{}", dashboard["id"].as_str().unwrap());
    let rename = api
        .call(&admin, "PATCH", &path, r#"{"name": "renamed"}"#)
        .await;
    assert_eq!(
        (rename.status, rename.code()),
        (422, "rename_not_allowed".into())
    );
    let listed = api.call(&admin, "GET", "/v1/api-keys", "").await;
    assert!(
        !listed.body.contains(&dashboard_key),
        "the key is shown only once"
    );
    let names: Vec<Value> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert!(names.contains(&"analytics-dashboard".into()), "{names:?}");

    // Rotation as documented: a new key with the same scopes, verify it, revoke the old:
    // the old key's next request is 401.
    let new = api
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            r#"{"name": "analytics-dashboard-2", "scopes": ["read"]}"#,
        )
        .await
        .json();
    let new_key = new["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(&new_key, "GET", "/v1/sources", "").await.status,
        200
    );
    assert_eq!(api.call(&admin, "DELETE", &path, "").await.status, 204);
    let revoked = api.call(&dashboard_key, "GET", "/v1/sources", "").await;
    assert_eq!(
        (revoked.status, revoked.code()),
        (401, "api_key_revoked".into())
    );
    assert_eq!(
        api.call(&new_key, "GET", "/v1/sources", "").await.status,
        200
    );

    // Bad bodies: stable codes.
    let bad = api
        .call(
            &write,
            "POST",
            "/v1/queries",
            r#"{"prompt": "x", "sources": ["myspace"]}"#,
        )
        .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_query".into()));
    let bad = api.call(&write, "POST", "/v1/queries", "not json").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_json".into()));

    assert!(server.interrupt().success());
}
