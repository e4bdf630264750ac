//! The layer around a plain `tower::service_fn`, no axum involved.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_keys::{CachedVerifier, Principal};

#[tokio::test]
async fn authenticates_a_plain_tower_service() {
    let keys = support::keys().await;
    let service = ServiceBuilder::new()
        .layer(support::live_layer(
            &keys,
            CachedVerifier::new(keys.store.clone()),
        ))
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let principal = request
                .extensions()
                .get::<Principal>()
                .expect("set by the layer");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                principal.key_name().to_owned(),
            ))))
        });

    let request = Request::get("/")
        .header("authorization", support::bearer(&keys.write))
        .body(Full::default())
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "write"
    );

    let response = service
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("missing_api_key"));
}
