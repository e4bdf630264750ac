//! examples/hyper_service.rs over real HTTP: the layer on plain hyper 1, no axum.
#![cfg(feature = "sqlite")]

mod support;

use support::example_server::ExampleServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_answers_the_principal() {
    let mut server = ExampleServer::start("hyper_service").await;
    let admin = server.credential("ADMIN_KEY");
    assert!(admin.starts_with("sk_live_"));

    let me = server.send("GET", "/", Some(&admin), &[], "").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["account_id"], "acct_hyper");
    assert!(me.json()["key_id"].as_str().unwrap().starts_with("ak_"));
    let elsewhere = server.send("GET", "/nope", Some(&admin), &[], "").await;
    assert_eq!(
        (elsewhere.status, elsewhere.code()),
        (404, "not_found".into())
    );

    // Rejections come from the layer, as on axum.
    let missing = server.send("GET", "/", None, &[], "").await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "missing_api_key".into())
    );
    assert!(
        missing
            .head
            .contains("www-authenticate: bearer realm=\"api\"")
    );
    let unknown = server.send("GET", "/", Some("sk_live_abc"), &[], "").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (401, "invalid_api_key".into())
    );
    let twice = server
        .send(
            "GET",
            "/",
            Some(&admin),
            &[&format!("Authorization: Bearer {admin}")],
            "",
        )
        .await;
    assert_eq!(
        (twice.status, twice.code()),
        (400, "invalid_request".into())
    );

    assert!(server.interrupt().success());
}
