//! AzScraper (seed 004): project-scoped keys beside session JWTs on one header.
//! `cargo run --example azscraper`.
//!
//! `GET /projects/{projectId}/jobs` takes a session JWT or an API key as its Bearer
//! token: the key layer hands tokens that are not keys on to the session check. A key
//! authenticates as the user who created it but is locked to its project (another
//! project: 403). Keys are managed at `/private/projects/{projectId}/api-keys` with the
//! session JWT only (an API key there is 401), sent as the Bearer token or, from a
//! browser, as the `azs_session` cookie (`POST /session` with the JWT as the Bearer
//! token sets it, as a login page would); the key page is at
//! `/private/projects/{projectId}/dashboard`, behind the same session. Prints `SESSION_TOKEN` (a JWT for the
//! user who owns both projects, valid 12 hours), `PROJECT_ID` and `OTHER_PROJECT_ID`,
//! `CREDITS_KEY` (Ada's key for `PROJECT_ID` in an account with a balance of 10
//! credits, which every job spends: the 11th job is 402 `credits_exhausted`), then
//! `READY`.
//!
//! ```text
//! curl -X POST localhost:3400/private/projects/$PROJECT_ID/api-keys -H "Authorization: Bearer $SESSION_TOKEN" \
//!      -H "Content-Type: application/json" -d '{"name":"ci-pipeline"}'
//! curl localhost:3400/projects/$PROJECT_ID/jobs -H "Authorization: Bearer $AZSCRAPER_API_KEY"
//! ```

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::format_description;
use tower_api_keys::Principal;
use tower_api_keys::bearer::bearer_token;
use tower_api_keys::error::Envelope;
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::limit::credits::Credits;
use tower_api_keys::manage::{Ack, KeyManager, KeyOwner, KeyRoutes, NewKey};
use tower_api_keys::policy::ProjectFromPath;
use tower_api_keys::record::AccountLimits;

const USER: &str = "usr_ada";
/// The account of `CREDITS_KEY`, with a balance of 10 credits.
const CREDITS_ACCOUNT: &str = "acct_credits";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// The session secret and who owns which project.
struct Sessions {
    decoding: DecodingKey,
    owners: HashMap<String, String>,
}

impl Sessions {
    /// The user of a valid session JWT in the `Authorization` header (or, from a
    /// browser, in the `azs_session` cookie), or 401.
    fn user(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let token = bearer_token(headers)
            .ok()
            .flatten()
            .or_else(|| session_cookie(headers));
        let claims = token.and_then(|token| {
            jsonwebtoken::decode::<Claims>(
                token,
                &self.decoding,
                &Validation::new(Algorithm::HS256),
            )
            .ok()
        });
        match claims {
            Some(claims) => Ok(claims.claims.sub),
            None => Err(failure(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "sign in: a valid session token is required",
            )),
        }
    }

    /// 404 for an unknown project, 403 for someone else's.
    fn check_owner(&self, user: &str, project_id: &str) -> Result<(), Refusal> {
        match self.owners.get(project_id) {
            None => Err(failure(
                StatusCode::NOT_FOUND,
                "project_not_found",
                "no such project",
            )),
            Some(owner) if owner != user => Err(failure(
                StatusCode::FORBIDDEN,
                "project_forbidden",
                "not your project",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The `azs_session` cookie, as a login page would set it (`HttpOnly; SameSite=Strict`,
/// so that no other site's request carries it).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("azs_session="))
}

/// `POST /session` with the session JWT as the Bearer token: the same session as a
/// cookie for the browser (`HttpOnly`, `SameSite=Strict`, as long as the JWT is valid),
/// the way a login page would sign a user in to the key page.
async fn sign_in(State(sessions): State<Arc<Sessions>>, headers: HeaderMap) -> Response {
    if let Err(refused) = sessions.user(&headers) {
        return refused.into_response();
    }
    let Some(token) = bearer_token(&headers).ok().flatten() else {
        return failure(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "send the session token",
        )
        .into_response();
    };
    let cookie = format!("azs_session={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        Err(_) => failure(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "not a session token",
        )
        .into_response(),
    }
}

/// A refused request: status, stable code, message.
struct Refusal(StatusCode, &'static str, &'static str);

fn failure(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    Refusal(status, code, message)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, code, message) = self;
        let mut response = (status, Json(Envelope::Data.error(code, message))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge =
                HeaderValue::from_static(r#"Bearer realm="azscraper", error="invalid_token""#);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// `2026-06-01T09:00:00.000Z`, as the document writes times.
fn timestamp(at: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(format)
        .expect("a UTC time formats")
}

/// `GET /projects/{projectId}/jobs`: an API key (checked by the layer, project lock
/// included) or else a session JWT.
async fn jobs(
    State(sessions): State<Arc<Sessions>>,
    Path(project_id): Path<String>,
    principal: Option<Principal>,
    headers: HeaderMap,
) -> Response {
    let (user, via) = match principal {
        // A key authenticates as the user who created it.
        Some(principal) => (
            principal
                .created_by()
                .unwrap_or(principal.account_id())
                .to_owned(),
            "api_key",
        ),
        None => match sessions.user(&headers) {
            Ok(user) => (user, "session"),
            Err(refused) => return refused.into_response(),
        },
    };
    if let Err(refused) = sessions.check_owner(&user, &project_id) {
        return refused.into_response();
    }
    let jobs = [json!({ "id": format!("job_{project_id}_1"), "status": "completed" })];
    Json(json!({ "data": jobs, "authenticatedAs": { "userId": user, "via": via } })).into_response()
}

/// The session check in front of key management: a logged-in owner of `{projectId}`
/// becomes the [`KeyOwner`] of that project's keys. An API key is not a session: 401.
async fn require_session(
    State(sessions): State<Arc<Sessions>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let user = match sessions.user(&parts.headers) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
    let project_id = params
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(name, _)| *name == "projectId")
                .map(|(_, id)| id.to_owned())
        })
        .unwrap_or_default();
    if let Err(refused) = sessions.check_owner(&user, &project_id) {
        return refused.into_response();
    }
    parts.extensions.insert(
        KeyOwner::new(user.clone(), Environment::LIVE)
            .project(project_id)
            .user(user),
    );
    next.run(Request::from_parts(parts, body)).await
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let backend = support::Backend::open("azscraper.db").await?;
    let format = KeyFormat::new("azs");
    let manager =
        KeyManager::new(backend.store.clone(), backend.cache.clone(), format.clone()).id_prefix("");

    // A fresh session secret per start: earlier sessions end with the process.
    let secret =
        KeyId::generate_with_prefix("").to_string() + KeyId::generate_with_prefix("").as_str();
    let project_id = KeyId::generate_with_prefix("prj").to_string();
    let other_project_id = KeyId::generate_with_prefix("prj").to_string();
    let claims = Claims {
        sub: USER.into(),
        exp: OffsetDateTime::now_utc().unix_timestamp() + 12 * 3600,
    };
    let session = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?;
    support::credential("SESSION_TOKEN", &session);
    support::credential("PROJECT_ID", &project_id);
    support::credential("OTHER_PROJECT_ID", &other_project_id);

    // "Anyone with the key can spend your credits": a key of an account whose balance
    // of 10 credits every job spends (1 each; the 11th is 402 credits_exhausted). It is
    // Ada's, locked to PROJECT_ID; reissued with a fresh balance on every start.
    manager
        .set_account_limits(
            CREDITS_ACCOUNT,
            AccountLimits::none().credits(Credits::new(10)),
        )
        .await?;
    for old in manager.list(CREDITS_ACCOUNT).await? {
        manager.revoke(CREDITS_ACCOUNT, &old.id).await?;
    }
    let owner = KeyOwner::new(CREDITS_ACCOUNT, Environment::LIVE)
        .project(project_id.clone())
        .user(USER);
    let credits_key = manager
        .create_for_owner(&owner, NewKey::named("credits demo"))
        .await?;
    support::credential("CREDITS_KEY", credits_key.key.expose_secret());
    let owners = [
        (project_id, USER.to_owned()),
        (other_project_id, USER.to_owned()),
    ];
    let sessions = Arc::new(Sessions {
        decoding: DecodingKey::from_secret(secret.as_bytes()),
        owners: owners.into_iter().collect(),
    });

    let routes = KeyRoutes::new(manager)
        .envelope(Envelope::Data)
        .rotation(false) // rotating is: create a new key, revoke the old
        .key_view(|key| {
            json!({
                "id": key.id,
                "name": key.name,
                "keyHint": key.hint,
                "createdAt": timestamp(key.created_at),
                "lastUsedAt": key.last_used_at.map(timestamp),
            })
        })
        .created_view(|key, secret| {
            json!({ "id": key.id, "name": key.name, "key": secret, "createdAt": timestamp(key.created_at) })
        })
        .updated(Ack::Done(None))
        .revoked(Ack::Done(None));
    // The key page next to the routes, behind the same session check: a signed-in
    // owner's browser manages the project's keys with its session cookie.
    let page = routes
        .dashboard()
        .title("AzScraper API keys")
        .session_only()
        .router("/dashboard");
    let keys = routes
        .into_router()
        .merge(page)
        .route_layer(middleware::from_fn_with_state(
            sessions.clone(),
            require_session,
        ));

    let sessions_for_sign_in = sessions.clone();
    let api = Router::new()
        .route("/projects/{projectId}/jobs", get(jobs))
        .with_state(sessions)
        .layer(
            backend
                .layer(format)
                .pass_foreign_tokens()
                .projects(ProjectFromPath::after("projects"))
                .realm("azscraper"),
        );
    let app = api
        .nest("/private/projects/{projectId}", keys)
        .route("/session", post(sign_in).with_state(sessions_for_sign_in));
    support::serve(app, 3400, backend).await
}
