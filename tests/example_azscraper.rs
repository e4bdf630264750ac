//! examples/azscraper.rs over real HTTP, walking seed 004 (AzScraper's API-key page):
//! keys and session JWTs on one header, the project lock, management by session only,
//! the documented bodies.
#![cfg(all(feature = "axum", feature = "sqlite"))]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::example_server::ExampleServer;
use support::raw_http::Reply;

fn fields(value: &Value) -> Vec<String> {
    let mut fields: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    fields
}

/// `2026-06-01T09:00:00.000Z`
fn is_timestamp(value: &Value) -> bool {
    let s = value.as_str().unwrap_or_default();
    s.len() == 24
        && s.as_bytes()[19] == b'.'
        && s.ends_with('Z')
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azscraper_follows_its_document() {
    let mut server = ExampleServer::start("azscraper").await;
    let [session, project, other] =
        ["SESSION_TOKEN", "PROJECT_ID", "OTHER_PROJECT_ID"].map(|n| server.credential(n));
    let call = |token: &str, method: &str, path: &str, body: &str| {
        let (server, token) = (&server, token.to_owned());
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        async move { server.send(&method, &path, Some(&token), &[], &body).await }
    };
    let code = |reply: &Reply| {
        reply.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let keys_of = |project: &str| format!("/private/projects/{project}/api-keys");

    // The session JWT works on the user's projects.
    for p in [&project, &other] {
        let jobs = call(&session, "GET", &format!("/projects/{p}/jobs"), "").await;
        assert_eq!(jobs.status, 200, "{}", jobs.body);
        assert_eq!(
            jobs.json()["authenticatedAs"],
            json!({ "userId": "usr_ada", "via": "session" })
        );
    }

    // CREDITS_KEY: Ada's key in an account of 10 credits, which every job spends.
    let credits = server.credential("CREDITS_KEY");
    for i in 0..10 {
        let jobs = call(&credits, "GET", &format!("/projects/{project}/jobs"), "").await;
        assert_eq!(jobs.status, 200, "job {i}: {}", jobs.body);
        assert_eq!(jobs.json()["authenticatedAs"]["userId"], "usr_ada");
    }
    let spent = call(&credits, "GET", &format!("/projects/{project}/jobs"), "").await;
    assert_eq!(
        (spent.status, code(&spent)),
        (402, "credits_exhausted".to_owned()),
        "{}",
        spent.body
    );

    // Create a key (session only): `{"data": {id, name, key, createdAt}}`, key once.
    let created = call(
        &session,
        "POST",
        &keys_of(&project),
        r#"{"name":"ci-pipeline"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let data = created.json()["data"].clone();
    assert_eq!(fields(&data), ["createdAt", "id", "key", "name"]);
    assert_eq!(data["name"], "ci-pipeline");
    assert!(is_timestamp(&data["createdAt"]), "{data}");
    let id = data["id"].as_str().unwrap().to_owned();
    let key = data["key"].as_str().unwrap().to_owned();

    // The key authenticates as the user who created it, on its project only.
    let jobs = call(&key, "GET", &format!("/projects/{project}/jobs"), "").await;
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    assert_eq!(
        jobs.json()["authenticatedAs"],
        json!({ "userId": "usr_ada", "via": "api_key" })
    );
    let elsewhere = call(&key, "GET", &format!("/projects/{other}/jobs"), "").await;
    assert_eq!(
        (elsewhere.status, code(&elsewhere)),
        (403, "project_forbidden".into())
    );

    // Management needs the session: the key itself is refused there.
    let with_key = call(&key, "GET", &keys_of(&project), "").await;
    assert_eq!(
        (with_key.status, code(&with_key)),
        (401, "invalid_token".into())
    );
    let no_token = server.send("GET", &keys_of(&project), None, &[], "").await;
    assert_eq!(no_token.status, 401);

    // List: id, name, keyHint (last 4), createdAt, lastUsedAt; never the key.
    let mut listed = Value::Null;
    for _ in 0..50 {
        let list = call(&session, "GET", &keys_of(&project), "").await;
        assert_eq!(list.status, 200, "{}", list.body);
        assert!(!list.body.contains(&key));
        listed = list.json()["data"][0].clone();
        if !listed["lastUsedAt"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fields(&listed),
        ["createdAt", "id", "keyHint", "lastUsedAt", "name"]
    );
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["keyHint"].as_str().unwrap(), &key[key.len() - 4..]);
    assert!(
        is_timestamp(&listed["lastUsedAt"]),
        "the key was used: {listed}"
    );
    // Keys are per project.
    let other_list = call(&session, "GET", &keys_of(&other), "").await.json();
    assert_eq!(other_list, json!({ "data": [] }));
    let wrong_project = call(&session, "DELETE", &format!("{}/{id}", keys_of(&other)), "").await;
    assert_eq!(
        (wrong_project.status, code(&wrong_project)),
        (404, "api_key_not_found".into())
    );

    // Rename and revoke: `{"success": true}`; revoked keys stop working immediately.
    let renamed = call(
        &session,
        "PATCH",
        &format!("{}/{id}", keys_of(&project)),
        r#"{"name":"new-name"}"#,
    )
    .await;
    assert_eq!(
        (renamed.status, renamed.json()),
        (200, json!({ "success": true }))
    );
    let list = call(&session, "GET", &keys_of(&project), "").await.json();
    assert_eq!(list["data"][0]["name"], "new-name");
    for _ in 0..2 {
        let revoked = call(
            &session,
            "DELETE",
            &format!("{}/{id}", keys_of(&project)),
            "",
        )
        .await;
        assert_eq!(
            (revoked.status, revoked.json()),
            (200, json!({ "success": true }))
        );
    }
    let after = call(&key, "GET", &format!("/projects/{project}/jobs"), "").await;
    assert_eq!(
        (after.status, code(&after)),
        (401, "api_key_revoked".into())
    );

    // Tokens: a key-shaped typo is a bad key, not a session; a tampered JWT is 401;
    // no token at all is 401; an unknown project is 404.
    let mut typo = key.clone();
    typo.push('x');
    let typo = call(&typo, "GET", &format!("/projects/{project}/jobs"), "").await;
    assert_eq!((typo.status, code(&typo)), (401, "invalid_api_key".into()));
    let mut tampered = session.clone();
    tampered.pop();
    let tampered = call(&tampered, "GET", &format!("/projects/{project}/jobs"), "").await;
    assert_eq!(
        (tampered.status, code(&tampered)),
        (401, "invalid_token".into())
    );
    assert!(tampered.head.contains("www-authenticate: bearer"));
    let none = server
        .send("GET", &format!("/projects/{project}/jobs"), None, &[], "")
        .await;
    assert_eq!(none.status, 401);
    let unknown = call(&session, "GET", "/projects/prj_nope/jobs", "").await;
    assert_eq!(
        (unknown.status, code(&unknown)),
        (404, "project_not_found".into())
    );
    let unknown = call(&session, "GET", &keys_of("prj_nope"), "").await;
    assert_eq!(unknown.status, 404);

    assert!(server.interrupt().success());
}

/// The session may be a cookie: a request another site makes the browser send (it says
/// so in `Sec-Fetch-Site`) is refused, whatever it asks; the page's own calls pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azscraper_refuses_cross_site_requests_with_the_session_cookie() {
    let server = ExampleServer::start("azscraper").await;
    let [session, project] = ["SESSION_TOKEN", "PROJECT_ID"].map(|n| server.credential(n));
    let signed_in = server
        .send("POST", "/session", Some(&session), &[], "")
        .await;
    assert_eq!(signed_in.status, 204);
    let cookie_line = signed_in
        .head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    assert!(cookie_line.contains("httponly") && cookie_line.contains("samesite=strict"));
    let cookie = format!("Cookie: azs_session={session}");
    let keys = format!("/private/projects/{project}/api-keys");
    let body = r#"{"name": "from elsewhere"}"#;
    for site in ["cross-site", "same-site"] {
        let header = format!("Sec-Fetch-Site: {site}");
        let refused = server
            .send("POST", &keys, None, &[&cookie, &header], body)
            .await;
        assert_eq!(refused.status, 403, "{site}: {}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "cross_site_request");
    }
    // Browsers that send no Sec-Fetch-Site (plain-HTTP origins, older ones) send Origin.
    let evil = "Origin: http://evil.example";
    let refused = server
        .send("POST", &keys, None, &[&cookie, evil], body)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "cross_site_request");
    let listed = server.send("GET", &keys, None, &[&cookie], "").await;
    assert_eq!(listed.status, 200);
    assert!(
        !listed.body.contains("from elsewhere"),
        "a refused request wrote"
    );
    let header = "Sec-Fetch-Site: same-origin";
    let created = server
        .send("POST", &keys, None, &[&cookie, header], body)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.head.contains("cache-control: no-store"),
        "a secret is cached"
    );
    let own = format!("Origin: http://{}", server.addr);
    let body = r#"{"name": "same origin"}"#;
    let created = server
        .send("POST", &keys, None, &[&cookie, &own], body)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
}
