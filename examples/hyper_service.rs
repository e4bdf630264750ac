//! The layer on plain hyper 1, no axum: `cargo run --example hyper_service`.
//!
//! `ServiceBuilder::new().layer(ApiKeyLayer…).service(…)` served by hyper's HTTP/1
//! connection builder through hyper-util's `TowerToHyperService`. `GET /` answers the
//! principal's account. Prints `ADMIN_KEY` (reissued on every start), then `READY`.
//!
//! ```text
//! curl localhost:3500/ -H "Authorization: Bearer $ADMIN_KEY"
//! ```

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_api_keys::Principal;
use tower_api_keys::client_ip::PeerAddr;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{KeyManager, NewKey};
use tower_api_keys::scope::Scope;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let json = http::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// Runs behind the layer: the principal is in the extensions.
async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .expect("the layer runs first");
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => json(
            StatusCode::OK,
            serde_json::json!({ "account_id": principal.account_id(), "key_id": principal.key_id() }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": { "code": "not_found", "message": "no such route" } }),
        ),
    })
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("hyper_service.db").await?;
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone());
    let request = NewKey::named("ADMIN_KEY").scopes(Scope::Admin);
    let created = manager
        .reissue("acct_hyper", Environment::LIVE, request)
        .await?;
    support::credential("ADMIN_KEY", created.key.expose_secret());

    let layer = backend.layer(format);
    let listener = support::bind(3500).await?;
    println!("READY");
    let graceful = GracefulShutdown::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                // The peer address, for keys restricted by IP.
                let service = ServiceBuilder::new()
                    .map_request(move |mut request: Request<Incoming>| {
                        request.extensions_mut().insert(PeerAddr(peer));
                        request
                    })
                    .layer(layer.clone())
                    .service_fn(handle);
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        eprintln!("connection error: {error}");
                    }
                });
            }
            _ = &mut ctrl_c => break,
        }
    }
    graceful.shutdown().await;
    backend.close().await
}
