//! What the benches share: the router, the alternative auth layers, the key fixtures.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, Request, StatusCode, header::AUTHORIZATION};
use tower::{Layer, Service};

pin_project_lite::pin_project! {
    /// The inner service's future, or an immediate rejection.
    #[project = EitherProj]
    pub enum Either<F, R> {
        Left { #[pin] fut: F },
        Right { #[pin] fut: R },
    }
}

impl<F: std::future::Future, R: std::future::Future<Output = F::Output>> std::future::Future
    for Either<F, R>
{
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            EitherProj::Left { fut } => fut.poll(cx),
            EitherProj::Right { fut } => fut.poll(cx),
        }
    }
}

/// The one route every variant serves.
pub fn router() -> Router<()> {
    Router::new().route("/", get(|| async { "ok" }))
}

/// The cheapest possible check: the header equals one fixed value (what tower-http's
/// deprecated `ValidateRequestHeaderLayer::bearer` does).
#[derive(Clone)]
pub struct StaticBearer {
    expected: HeaderValue,
}

impl StaticBearer {
    pub fn new(token: &str) -> Self {
        StaticBearer {
            expected: HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        }
    }
}

impl<S> Layer<S> for StaticBearer {
    type Service = StaticBearerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StaticBearerService {
            inner,
            expected: self.expected.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StaticBearerService<S> {
    inner: S,
    expected: HeaderValue,
}

impl<S> Service<Request<Body>> for StaticBearerService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.headers().get(AUTHORIZATION) == Some(&self.expected) {
            Either::Left {
                fut: self.inner.call(request),
            }
        } else {
            Either::Right {
                fut: ready(Ok(StatusCode::UNAUTHORIZED.into_response())),
            }
        }
    }
}

/// What many users pick instead: an HS256 JWT verified per request.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
}

#[derive(Clone)]
pub struct JwtHs256 {
    key: std::sync::Arc<jsonwebtoken::DecodingKey>,
    validation: std::sync::Arc<jsonwebtoken::Validation>,
}

impl JwtHs256 {
    pub fn new(secret: &[u8]) -> Self {
        JwtHs256 {
            key: std::sync::Arc::new(jsonwebtoken::DecodingKey::from_secret(secret)),
            validation: std::sync::Arc::new(jsonwebtoken::Validation::new(
                jsonwebtoken::Algorithm::HS256,
            )),
        }
    }

    /// A small token for `secret`, valid for an hour.
    pub fn token(secret: &[u8]) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims {
                sub: "acct_1".into(),
                exp,
            },
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }
}

impl<S> Layer<S> for JwtHs256 {
    type Service = JwtService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        JwtService {
            inner,
            jwt: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct JwtService<S> {
    inner: S,
    jwt: JwtHs256,
}

impl<S> Service<Request<Body>> for JwtService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let claims = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| {
                jsonwebtoken::decode::<Claims>(token, &self.jwt.key, &self.jwt.validation).ok()
            });
        match claims {
            Some(data) => {
                request.extensions_mut().insert(data.claims);
                Either::Left {
                    fut: self.inner.call(request),
                }
            }
            None => Either::Right {
                fut: ready(Ok(StatusCode::UNAUTHORIZED.into_response())),
            },
        }
    }
}

/// A GET / with this Authorization value.
pub fn request(authorization: &HeaderValue) -> Request<Body> {
    let mut request = Request::get("/").body(Body::empty()).unwrap();
    request
        .headers_mut()
        .insert(AUTHORIZATION, authorization.clone());
    request
}

/// A verifier that knows every key: a realistic record for any hash.
pub struct KnowsEveryKey;

#[async_trait::async_trait]
impl tower_api_keys::KeyVerifier for KnowsEveryKey {
    async fn verify(
        &self,
        hash: &tower_api_keys::key::KeyHash,
    ) -> Result<Option<tower_api_keys::KeyRecord>, tower_api_keys::VerifyError> {
        let n = u32::from_le_bytes(hash.as_bytes()[..4].try_into().unwrap());
        Ok(Some(
            tower_api_keys::KeyRecord::new(
                tower_api_keys::key::KeyId::generate(),
                format!("key {n}"),
                format!("acct_{}", n % 10_000),
                tower_api_keys::key::Environment::LIVE,
            )
            .with_scopes([
                tower_api_keys::scope::Scope::Read,
                tower_api_keys::scope::Scope::Write,
            ]),
        ))
    }
}

/// `n` distinct key hashes.
pub fn hashes(n: usize) -> Vec<tower_api_keys::key::KeyHash> {
    (0..n)
        .map(|i| tower_api_keys::key::KeyHash::of(&format!("sk_live_{i:043}")))
        .collect()
}

/// A cache holding one entry per hash.
pub fn filled_cache(
    runtime: &tokio::runtime::Runtime,
    hashes: &[tower_api_keys::key::KeyHash],
) -> tower_api_keys::CachedVerifier<KnowsEveryKey> {
    let cache = tower_api_keys::CachedVerifier::builder(KnowsEveryKey)
        .max_capacity(hashes.len() as u64 * 2)
        .positive_ttl(std::time::Duration::from_secs(3600))
        .build();
    runtime.block_on(async {
        for hash in hashes {
            cache.lookup(hash).await.unwrap();
        }
    });
    cache.run_pending_tasks();
    cache
}
