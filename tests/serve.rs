//! `RouterExt::with_api_keys` in a real `axum::serve` on 127.0.0.1: each connection
//! has its own copy of the layer's handle, and every change to a key still reaches
//! every connection at once, open before the change or after.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::NewKey;
use tower_api_keys::serve::RouterExt as _;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, KeyManager, MemoryStore, Principal};

/// One keep-alive HTTP/1 connection to `addr`.
async fn connect(addr: std::net::SocketAddr) -> SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Status and body of `GET /whoami` with `key` on `connection`.
async fn whoami(connection: &mut SendRequest<Body>, key: &str) -> (u16, String) {
    connection.ready().await.unwrap();
    let request = Request::get("/whoami")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let response = connection.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_answers_with_the_keys_as_they_are_now() {
    let store = MemoryStore::new();
    let format = KeyFormat::new("sk");
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let new_key = || NewKey::named("k");
    let key = manager
        .create_for_account("acct_1", Environment::LIVE, new_key())
        .await
        .unwrap();

    let app = Router::new().route(
        "/whoami",
        get(|principal: Principal| async move { principal.key_id().to_string() }),
    );
    let layer = ApiKeyLayer::new(format, cache).environment(Environment::LIVE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.with_api_keys(layer)).await });

    let secret = key.key.expose_secret().to_owned();
    let mut first = connect(addr).await;
    for _ in 0..3 {
        assert_eq!(
            whoami(&mut first, &secret).await,
            (200, key.info.id.to_string()),
            "a hit, on one connection"
        );
    }
    let mut wrong = secret.clone();
    wrong.push('x');
    assert_eq!(whoami(&mut first, &wrong).await.0, 401);

    // A key made after the connection opened works on it; a second connection
    // answers the same.
    let later = manager
        .create_for_account("acct_1", Environment::LIVE, new_key())
        .await
        .unwrap();
    let later_secret = later.key.expose_secret().to_owned();
    assert_eq!(whoami(&mut first, &later_secret).await.0, 200);
    let mut second = connect(addr).await;
    assert_eq!(whoami(&mut second, &secret).await.0, 200);

    // A revocation stops the key at once on both connections, hot as it is.
    manager.revoke("acct_1", &key.info.id).await.unwrap();
    assert_eq!(whoami(&mut first, &secret).await.0, 401, "first connection");
    assert_eq!(
        whoami(&mut second, &secret).await.0,
        401,
        "second connection"
    );
    let mut third = connect(addr).await;
    assert_eq!(whoami(&mut third, &secret).await.0, 401, "a new connection");
    assert_eq!(
        whoami(&mut first, &later_secret).await.0,
        200,
        "the other key"
    );
}
