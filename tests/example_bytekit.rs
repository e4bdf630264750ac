//! examples/bytekit.rs over real HTTP, walking seed 000 (Bytekit's authentication page).
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use support::example_server::ExampleServer;

const LIVE: &str = "Host: api.bytekit.com";
const STAGING: &str = "Host: api-stg.bytekit.com";
const SCRAPE: &str = r#"{"url": "https://example.com"}"#;

/// Active keys of the account: production's list plus staging's.
/// The active keys listed on the live and on the staging host.
async fn active(server: &ExampleServer, live_key: &str, test_key: &str) -> (usize, usize) {
    let live = server
        .send("GET", "/v1/account/api-keys", Some(live_key), &[LIVE], "")
        .await;
    let test = server
        .send(
            "GET",
            "/v1/account/api-keys",
            Some(test_key),
            &[STAGING],
            "",
        )
        .await;
    (
        live.json()["data"].as_array().unwrap().len(),
        test.json()["data"].as_array().unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytekit_follows_its_document() {
    let mut server = ExampleServer::start("bytekit").await;
    let live_key = server.credential("LIVE_KEY");
    let test_key = server.credential("TEST_KEY");
    assert!(live_key.starts_with("sk_live_"), "{live_key}");
    assert!(test_key.starts_with("sk_test_"), "{test_key}");
    let send = |method: &'static str,
                path: &'static str,
                key: Option<String>,
                host: &'static str,
                body: String| {
        let server = &server;
        async move {
            server
                .send(method, path, key.as_deref(), &[host], &body)
                .await
        }
    };

    // "Keys are prefixed": live on production, test on staging; the wrong one is 401.
    let ok = send(
        "POST",
        "/v1/scrape",
        Some(live_key.clone()),
        LIVE,
        SCRAPE.into(),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(ok.json()["status"], "queued");
    let ok = send(
        "POST",
        "/v1/scrape",
        Some(test_key.clone()),
        STAGING,
        SCRAPE.into(),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    for (key, host) in [(&test_key, LIVE), (&live_key, STAGING)] {
        let wrong = send("POST", "/v1/scrape", Some(key.clone()), host, SCRAPE.into()).await;
        assert_eq!(wrong.status, 401, "{host}: {}", wrong.body);
        assert_eq!(wrong.code(), "environment_mismatch");
        assert!(
            wrong
                .head
                .contains("www-authenticate: bearer realm=\"bytekit\", error=\"invalid_token\"")
        );
    }
    // Another host serves no environment; no key, a typo: 401 too.
    let elsewhere = send(
        "POST",
        "/v1/scrape",
        Some(live_key.clone()),
        "Host: localhost",
        SCRAPE.into(),
    )
    .await;
    assert_eq!(elsewhere.status, 401);
    let missing = send("POST", "/v1/scrape", None, LIVE, SCRAPE.into()).await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "missing_api_key".into())
    );
    let mut typo = live_key.clone();
    typo.pop();
    let typo = send("POST", "/v1/scrape", Some(typo), LIVE, SCRAPE.into()).await;
    assert_eq!((typo.status, typo.code()), (401, "invalid_api_key".into()));

    // Create: the plaintext once, with exactly the documented fields.
    let created = send(
        "POST",
        "/v1/account/api-keys",
        Some(live_key.clone()),
        LIVE,
        r#"{"name": "CI pipeline key"}"#.into(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let body = created.json();
    let mut fields: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["created_at", "id", "key", "name"]);
    assert_eq!(body["name"], "CI pipeline key");
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ak_"), "{id}");
    let ci_key = body["key"].as_str().unwrap().to_owned();
    assert!(
        ci_key.starts_with("sk_live_"),
        "a key created on production is live"
    );
    assert!(
        time::OffsetDateTime::parse(
            body["created_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
    let works = send(
        "POST",
        "/v1/scrape",
        Some(ci_key.clone()),
        LIVE,
        SCRAPE.into(),
    )
    .await;
    assert_eq!(works.status, 202);
    // On staging, the new key is a test key.
    let staged = send(
        "POST",
        "/v1/account/api-keys",
        Some(test_key.clone()),
        STAGING,
        r#"{"name": "staging"}"#.into(),
    )
    .await;
    assert_eq!(staged.status, 201);
    assert!(
        staged.json()["key"]
            .as_str()
            .unwrap()
            .starts_with("sk_test_")
    );

    // List: id, name and metadata, never the key; production lists production keys.
    let list = send(
        "GET",
        "/v1/account/api-keys",
        Some(live_key.clone()),
        LIVE,
        String::new(),
    )
    .await;
    assert_eq!(list.status, 200);
    let keys = list.json()["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "LIVE_KEY and the CI key: {keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.get("key").is_none() && k["prefix"] == "sk_live_")
    );
    assert!(!list.body.contains(&ci_key) && !list.body.contains(&live_key));
    let listed = keys.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(listed["name"], "CI pipeline key");
    assert_eq!(
        listed["hint"].as_str().unwrap(),
        &ci_key[ci_key.len() - 4..]
    );

    // Update: rename.
    let path: &'static str = Box::leak(format!("/v1/account/api-keys/{id}").into_boxed_str());
    let renamed = send(
        "PATCH",
        path,
        Some(live_key.clone()),
        LIVE,
        r#"{"name": "Renamed key"}"#.into(),
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.json()["name"], "Renamed key");
    // Staging cannot see or touch production keys.
    let hidden = send(
        "PATCH",
        path,
        Some(test_key.clone()),
        STAGING,
        r#"{"name": "x"}"#.into(),
    )
    .await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (404, "api_key_not_found".into())
    );

    // Revoke: 204, and 204 again; the key stops working at once.
    for _ in 0..2 {
        let deleted = send("DELETE", path, Some(live_key.clone()), LIVE, String::new()).await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        assert!(deleted.body.is_empty());
    }
    let revoked = send(
        "POST",
        "/v1/scrape",
        Some(ci_key.clone()),
        LIVE,
        SCRAPE.into(),
    )
    .await;
    assert_eq!(
        (revoked.status, revoked.code()),
        (401, "api_key_revoked".into())
    );

    // At most 50 active keys per account and environment: live and test keys are
    // separate worlds. Filling the test side through the staging host leaves the live
    // side free; revoked keys do not count.
    let (live_before, test_before) = active(&server, &live_key, &test_key).await;
    let fill = async |key: &String, host: &'static str, label: &str| {
        for n in 0..60 {
            let reply = send(
                "POST",
                "/v1/account/api-keys",
                Some(key.clone()),
                host,
                format!(r#"{{"name": "{label} {n}"}}"#),
            )
            .await;
            if reply.status != 201 {
                return (n, reply);
            }
        }
        panic!("the limit was never reached on {host}");
    };
    let (test_created, refused) = fill(&test_key, STAGING, "staging").await;
    assert_eq!(test_created, 50 - test_before);
    assert_eq!(
        (refused.status, refused.code()),
        (409, "api_key_limit_reached".into())
    );
    assert_eq!(
        active(&server, &live_key, &test_key).await,
        (live_before, 50)
    );
    // The live side is untouched by the full test side.
    let (created_before_limit, refused) = fill(&live_key, LIVE, "bulk").await;
    assert_eq!(created_before_limit, 50 - live_before);
    assert_eq!(
        (refused.status, refused.code()),
        (409, "api_key_limit_reached".into())
    );
    assert_eq!(active(&server, &live_key, &test_key).await, (50, 50));
    let list = send(
        "GET",
        "/v1/account/api-keys",
        Some(live_key.clone()),
        LIVE,
        String::new(),
    )
    .await;
    let some_id = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bulk 0")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    let path: &'static str = Box::leak(format!("/v1/account/api-keys/{some_id}").into_boxed_str());
    let freed = send("DELETE", path, Some(live_key.clone()), LIVE, String::new()).await;
    let again = send(
        "POST",
        "/v1/account/api-keys",
        Some(live_key.clone()),
        LIVE,
        r#"{"name": "after revoking one"}"#.into(),
    )
    .await;
    assert_eq!((freed.status, again.status), (204, 201));

    // Bad bodies get stable codes, not 500s.
    let bad = send(
        "POST",
        "/v1/scrape",
        Some(live_key.clone()),
        LIVE,
        r#"{"url": 3}"#.into(),
    )
    .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_url".into()));
    let bad = send(
        "POST",
        "/v1/account/api-keys",
        Some(live_key.clone()),
        LIVE,
        "{".into(),
    )
    .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_json".into()));

    assert!(
        server.interrupt().success(),
        "Ctrl-C stops the server cleanly"
    );
}
