//! examples/quickstart.rs over real HTTP: the README's quickstart, line by line, and a
//! restart that issues fresh credentials.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use support::example_server::ExampleServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_works() {
    let server = ExampleServer::start("quickstart").await;
    let [admin, read] = ["ADMIN_KEY", "READ_KEY"].map(|n| server.credential(n));
    let call = |key: &str, method: &str, path: &str, body: &str| {
        let (server, key) = (&server, key.to_owned());
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        async move { server.send(&method, &path, Some(&key), &[], &body).await }
    };

    let me = call(&read, "GET", "/v1/whoami", "").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["account_id"], "acct_quickstart");
    assert_eq!(call(&read, "GET", "/v1/items", "").await.status, 200);
    let refused = call(&read, "POST", "/v1/items", r#"{"name":"x"}"#).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "insufficient_scope".into())
    );
    assert_eq!(
        call(&admin, "POST", "/v1/items", r#"{"name":"x"}"#)
            .await
            .status,
        201
    );
    let created = call(
        &admin,
        "POST",
        "/v1/account/api-keys",
        r#"{"name":"CI key","scopes":["read"]}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let ci_key = created.json()["key"].as_str().unwrap().to_owned();
    let list = call(&admin, "GET", "/v1/account/api-keys", "").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 3);
    assert!(!list.body.contains(&ci_key) && !list.body.contains(&admin));

    // Costs: every /v1/ request 1, POST /v1/items 5, on the key's own limit and credits.
    let metered = call(
        &admin,
        "POST",
        "/v1/account/api-keys",
        r#"{"name":"metered","scopes":["write"],
            "ratelimits":[{"name":"requests","limit":12,"window_seconds":3600}],
            "credits":{"remaining":10}}"#,
    )
    .await;
    assert_eq!(metered.status, 201, "{}", metered.body);
    let metered = metered.json()["key"].as_str().unwrap().to_owned();
    let listed = call(&metered, "GET", "/v1/items", "").await;
    assert_eq!(listed.status, 200);
    assert!(
        listed.head.contains("ratelimit: \"requests\";r=11;"),
        "{}",
        listed.head
    );
    assert!(
        listed
            .head
            .contains("ratelimit-policy: \"requests\";q=12;w=3600"),
        "{}",
        listed.head
    );
    let posted = call(&metered, "POST", "/v1/items", r#"{"name":"y"}"#).await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    assert!(
        posted.head.contains("ratelimit: \"requests\";r=6;"),
        "{}",
        posted.head
    );
    // 6 credits spent, 4 left: another POST would take the balance below zero.
    let refused = call(&metered, "POST", "/v1/items", r#"{"name":"z"}"#).await;
    assert_eq!(
        (refused.status, refused.code()),
        (402, "credits_exhausted".into())
    );
    let last = call(&metered, "GET", "/v1/items", "").await;
    assert!(
        last.head.contains("ratelimit: \"requests\";r=5;"),
        "the refused POST spent nothing: {}",
        last.head
    );
    for _ in 0..3 {
        assert_eq!(call(&metered, "GET", "/v1/items", "").await.status, 200);
    }
    let spent = call(&metered, "GET", "/v1/whoami", "").await;
    assert_eq!(
        (spent.status, spent.code()),
        (402, "credits_exhausted".into())
    );

    // A restart prints fresh credentials and revokes the previous ones; other keys stay.
    let mut server = server.restart().await;
    let new_admin = server.credential("ADMIN_KEY");
    assert_ne!(new_admin, admin);
    let old = server
        .send("GET", "/v1/whoami", Some(&admin), &[], "")
        .await;
    assert_eq!((old.status, old.code()), (401, "api_key_revoked".into()));
    assert_eq!(
        server
            .send("GET", "/v1/whoami", Some(&new_admin), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .send("GET", "/v1/items", Some(&ci_key), &[], "")
            .await
            .status,
        200
    );
    let list = server
        .send("GET", "/v1/account/api-keys", Some(&new_admin), &[], "")
        .await;
    assert_eq!(
        list.json()["data"].as_array().unwrap().len(),
        4,
        "{}",
        list.body
    );
    assert!(server.interrupt().success());
}

/// The key page, outside the key layer, with its security headers, calling the
/// management routes where the quickstart mounts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_the_key_page() {
    let server = ExampleServer::start("quickstart").await;
    let page = server.send("GET", "/dashboard", None, &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"));
    assert!(
        page.head
            .contains("content-security-policy: default-src 'self'")
    );
    assert!(page.head.contains("x-frame-options: deny"));
    assert!(
        page.body
            .contains(r#"<meta name="api-keys-base" content="/v1/account/">"#)
    );
    assert!(page.body.contains(r#"content="read write admin""#));
    for asset in ["/dashboard/app.js", "/dashboard/style.css"] {
        let reply = server.send("GET", asset, None, &[], "").await;
        assert_eq!(reply.status, 200, "{asset}");
        assert!(reply.head.contains("x-frame-options: deny"), "{asset}");
    }
    // The page holds no data: the routes it calls still need an admin key.
    let keys = server
        .send("GET", "/v1/account/api-keys", None, &[], "")
        .await;
    assert_eq!(keys.status, 401);
}
