//! An example server on PostgreSQL, twice: two instances of examples/bytestack.rs on one
//! database, a key revoked through one and refused by the other at once.
#![cfg(all(feature = "axum", feature = "sqlite", feature = "postgres"))]

mod support;

use std::time::{Duration, Instant};

use support::example_server::ExampleServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_example_instances_share_keys_and_revocations() {
    let Some((pool, schema)) = support::postgres::schema_pool("example_instances").await else {
        return;
    };
    pool.close().await;
    // Every connection of the example uses the test's schema.
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        support::postgres::url()
    );
    let mut first = ExampleServer::start_with_url("bytestack", url.clone()).await;
    // The second start reissues the bootstrap keys: the first instance hears of the
    // revocations too. Its printed keys are the live ones.
    let mut second = ExampleServer::start_with_url("bytestack", url).await;
    let admin = second.credential("ADMIN_KEY");
    let stale = first.credential("ADMIN_KEY");
    for server in [&first, &second] {
        let me = server
            .send("GET", "/v1/sources", Some(&admin), &[], "")
            .await;
        assert_eq!(me.status, 200, "{}", me.body);
        let old = server
            .send("GET", "/v1/sources", Some(&stale), &[], "")
            .await;
        assert_eq!((old.status, old.code()), (401, "api_key_revoked".into()));
    }

    // Created on the first instance, used on the second, revoked on the first.
    let created = first
        .send(
            "POST",
            "/v1/api-keys",
            Some(&admin),
            &[],
            r#"{"name": "shared", "scopes": ["read"]}"#,
        )
        .await
        .json();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(
        second
            .send("GET", "/v1/sources", Some(&key), &[], "")
            .await
            .status,
        200
    );
    let path = format!("/v1/api-keys/{}", created["id"].as_str().unwrap());
    let revoked_at = Instant::now();
    assert_eq!(
        first
            .send("DELETE", &path, Some(&admin), &[], "")
            .await
            .status,
        204
    );
    loop {
        let reply = second.send("GET", "/v1/sources", Some(&key), &[], "").await;
        if reply.status == 401 {
            assert_eq!(reply.code(), "api_key_revoked");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "the second instance still serves a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "revocation reached the other example instance in {:?}",
        revoked_at.elapsed()
    );
    assert!(first.interrupt().success());
    assert!(second.interrupt().success());
}
