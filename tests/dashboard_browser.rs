//! The key-management page in a real headless Chromium, against a real server on a
//! SQLite store: an admin key pasted into the page, a key created and shown once, used,
//! rotated, revoked, its audit events shown, a screenshot of the list.
#![cfg(all(feature = "dashboard", feature = "sqlite"))]

mod support;

use axum::Router;
use axum::routing::get;
use support::browser::Browser;
use support::example_server::ExampleServer;
use support::raw_http::{Client, raw_get, serve_with_peer};
use support::temp_db::TempDb;
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::manage::{KeyManager, KeyRoutes, NewKey};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::SqliteStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier, Principal};

const ACCOUNT: &str = "acct_browser";

struct App {
    addr: std::net::SocketAddr,
    admin_key: String,
    _db: TempDb,
}

/// The quickstart's shape: the page at `/dashboard` outside the key layer, the
/// management routes at `/v1/account` and an API route behind it.
async fn app() -> App {
    let db = TempDb::new("dashboard");
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    let cache = CachedVerifier::new(store.clone());
    let format = KeyFormat::new("sk");
    let manager = KeyManager::new(store, cache.clone(), format.clone());
    let admin = manager
        .reissue(
            ACCOUNT,
            Environment::LIVE,
            NewKey::named("admin").scopes(Scope::Admin),
        )
        .await
        .unwrap();
    let routes = KeyRoutes::new(manager);
    let page = routes
        .dashboard()
        .api_base("/v1/account")
        .router("/dashboard");
    let app = Router::new()
        .route(
            "/v1/whoami",
            get(|principal: Principal| async move { principal.key_id().to_string() }),
        )
        .nest("/v1/account", routes.into_router())
        .layer(ApiKeyLayer::new(format, cache).environment(Environment::LIVE))
        .merge(page);
    App {
        addr: serve_with_peer(app).await,
        admin_key: admin.key.expose_secret().to_owned(),
        _db: db,
    }
}

/// Reads the key the dialog shows once, then closes the dialog (confirming), and
/// checks that the key is gone from the page.
async fn take_shown_key(browser: &Browser) -> String {
    take_shown_key_of(browser, "sk_live_").await
}

async fn take_shown_key_of(browser: &Browser, prefix: &str) -> String {
    let key = browser
        .text_until("[data-testid=secret-key]", |text| text.starts_with(prefix))
        .await;
    browser.click("[data-testid=close-secret]").await;
    // Closing asks first; the key is still there until confirmed.
    browser.visible("[data-testid=confirm-close-secret]").await;
    browser.click("[data-testid=confirm-close-secret]").await;
    browser.gone("[data-testid=secret-dialog]").await;
    let source = browser.client.source().await.unwrap();
    assert!(
        !source.contains(&key),
        "the key stays in the page after closing"
    );
    key
}

/// The row of the key named `name`, once listed: its `data-key-id`.
async fn row_of(browser: &Browser, name: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        for row in browser
            .client
            .find_all(fantoccini::Locator::Css("tr[data-key-id]"))
            .await
            .unwrap()
        {
            let text = row.text().await.unwrap_or_default();
            if text
                .lines()
                .next()
                .is_some_and(|first| first.contains(name))
                || text.split('\t').next().is_some_and(|first| first == name)
                || text.starts_with(name)
            {
                return row.attr("data-key-id").await.unwrap().unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no row for {name}; the page shows: {}",
            browser.page_text().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn status_with(app: &App, key: &str) -> u16 {
    Client::new(app.addr, key)
        .send("GET", "/v1/whoami", "")
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_rotate_and_revoke_a_key_through_the_page() {
    let Some(browser) = Browser::start("dashboard_browser::create_use_rotate_and_revoke").await
    else {
        return;
    };
    let app = app().await;
    let base = format!("http://{}", app.addr);
    browser
        .client
        .goto(&format!("{base}/dashboard"))
        .await
        .unwrap();

    // No session here: the list answers 401, and the page asks for an API key.
    browser.visible("[data-testid=auth-form]").await;
    let label = browser.page_text().await;
    assert!(
        label.contains("API key"),
        "no field labelled API key: {label}"
    );
    browser
        .type_into("[data-testid=api-key-input]", &app.admin_key)
        .await;
    browser.click("[data-testid=auth-submit]").await;
    row_of(&browser, "admin").await;

    // Create: name and scope; the key is shown once.
    browser
        .type_into("[data-testid=create-name]", "Deploy key")
        .await;
    browser
        .click("[data-testid=create-form] input[name=scope][value=read]")
        .await;
    browser.click("[data-testid=create-submit]").await;
    let first = take_shown_key(&browser).await;
    assert_eq!(status_with(&app, &first).await, 200, "the new key works");
    let first_id = row_of(&browser, "Deploy key").await;

    // Nothing the page keeps holds a secret: no storage, no cookie.
    let stored = browser
        .client
        .execute(
            "return [localStorage.length, sessionStorage.length, document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, serde_json::json!([0, 0, ""]));

    // Rotate with no overlap: the new key works, the old one stops at once.
    browser
        .click(&format!(
            "tr[data-key-id='{first_id}'] [data-action=rotate]"
        ))
        .await;
    browser.visible("[data-testid=rotate-dialog]").await;
    browser
        .visible("[data-testid=rotate-overlap]")
        .await
        .select_by_value("0")
        .await
        .unwrap();
    browser.click("[data-testid=rotate-submit]").await;
    let second = take_shown_key(&browser).await;
    assert_ne!(first, second);
    assert_eq!(
        status_with(&app, &second).await,
        200,
        "the rotated key works"
    );
    assert_eq!(
        status_with(&app, &first).await,
        401,
        "the old key is revoked"
    );

    // The new key's row; its audit events.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let second_id = loop {
        let id = row_of(&browser, "Deploy key").await;
        if id != first_id {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the list keeps the old key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    browser.screenshot("dashboard-list").await;
    browser
        .click(&format!(
            "tr[data-key-id='{second_id}'] [data-action=events]"
        ))
        .await;
    browser
        .text_until("[data-testid=events]", |text| text.contains("key.rotated"))
        .await;

    // Revoke, confirmed by typing the name: the button waits for it.
    browser
        .click(&format!(
            "tr[data-key-id='{second_id}'] [data-action=revoke]"
        ))
        .await;
    browser.visible("[data-testid=revoke-dialog]").await;
    let submit = browser.visible("[data-testid=revoke-submit]").await;
    assert!(
        !submit.is_enabled().await.unwrap(),
        "revoke before the name is typed"
    );
    browser
        .type_into("[data-testid=revoke-confirm-name]", "Deploy ke")
        .await;
    assert!(
        !submit.is_enabled().await.unwrap(),
        "revoke on a partial name"
    );
    browser
        .type_into("[data-testid=revoke-confirm-name]", "Deploy key")
        .await;
    assert!(submit.is_enabled().await.unwrap());
    submit.click().await.unwrap();
    browser.gone("[data-testid=revoke-dialog]").await;
    browser
        .gone(&format!("tr[data-key-id='{second_id}']"))
        .await;
    assert_eq!(
        status_with(&app, &second).await,
        401,
        "the revoked key stops"
    );
    assert_eq!(status_with(&app, &app.admin_key).await, 200);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_shown_as_their_message() {
    let Some(browser) = Browser::start("dashboard_browser::api_errors_are_shown").await else {
        return;
    };
    let app = app().await;
    let base = format!("http://{}", app.addr);
    browser
        .client
        .goto(&format!("{base}/dashboard"))
        .await
        .unwrap();

    // A wrong key: the API's message, and the field again.
    browser.visible("[data-testid=auth-form]").await;
    browser
        .type_into("[data-testid=api-key-input]", "sk_live_not_a_key")
        .await;
    browser.click("[data-testid=auth-submit]").await;
    browser
        .text_until("[data-testid=error]", |text| text.contains("invalid"))
        .await;
    browser.visible("[data-testid=auth-form]").await;

    browser
        .type_into("[data-testid=api-key-input]", &app.admin_key)
        .await;
    browser.click("[data-testid=auth-submit]").await;
    row_of(&browser, "admin").await;

    // A name over 100 characters: the 422's message, not a blank page.
    let long = "n".repeat(101);
    browser
        .client
        .execute(
            "document.querySelector('[data-testid=create-name]').removeAttribute('maxlength')",
            vec![],
        )
        .await
        .unwrap();
    browser.type_into("[data-testid=create-name]", &long).await;
    browser.click("[data-testid=create-submit]").await;
    let shown = browser
        .text_until("[data-testid=error]", |text| !text.trim().is_empty())
        .await;
    assert!(shown.contains("name"), "the error shown: {shown}");
    browser.visible("[data-testid=create-form]").await;
    browser.close().await;
}

#[tokio::test]
async fn the_page_and_its_assets_carry_csp_and_frame_headers() {
    let app = app().await;
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/style.css"] {
        let reply = raw_get(app.addr, path, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply
                .head
                .contains("content-security-policy: default-src 'self'"),
            "{path}: {}",
            reply.head
        );
        assert!(reply.head.contains("x-frame-options: deny"), "{path}");
    }
    let page = raw_get(app.addr, "/dashboard", &[]).await;
    let script = raw_get(app.addr, "/dashboard/app.js", &[]).await;
    let style = raw_get(app.addr, "/dashboard/style.css", &[]).await;
    let total = page.body.len() + script.body.len() + style.body.len();
    assert!(total < 60 * 1024, "the page weighs {total} bytes");
    assert!(page.body.contains("data-testid=\"create-form\""));
}

/// AzScraper mounts the page behind its session: the browser carries the session as a
/// cookie (as a login page would set it), the page never asks for a key, and the keys
/// it creates are the project's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azscraper_page_works_with_the_session_cookie() {
    let Some(browser) = Browser::start("dashboard_browser::azscraper_session").await else {
        return;
    };
    let server = ExampleServer::start("azscraper").await;
    let [session, project] = ["SESSION_TOKEN", "PROJECT_ID"].map(|n| server.credential(n));
    let page = format!(
        "http://{}/private/projects/{project}/dashboard",
        server.addr
    );

    // Without the session the page is not served.
    let refused = server
        .send(
            "GET",
            &format!("/private/projects/{project}/dashboard"),
            None,
            &[],
            "",
        )
        .await;
    assert_eq!(refused.status, 401);

    // Signing in, as a login page would: the session comes back as an HttpOnly cookie
    // that the page's calls carry (and that its script cannot read).
    browser.client.goto(&page).await.unwrap();
    let signed_in = browser
        .client
        .execute_async(
            "const [token, done] = arguments;
             fetch('/session', {method: 'POST', headers: {Authorization: 'Bearer ' + token}})
               .then((r) => done(r.status), (e) => done(String(e)));",
            vec![serde_json::Value::String(session.clone())],
        )
        .await
        .unwrap();
    assert_eq!(signed_in, 204);
    browser.client.goto(&page).await.unwrap();
    let readable = browser
        .client
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert_eq!(readable, "", "the session cookie is readable by scripts");

    browser.visible("[data-testid=create-form]").await;
    browser
        .type_into("[data-testid=create-name]", "ci-pipeline")
        .await;
    browser.click("[data-testid=create-submit]").await;
    let key = take_shown_key_of(&browser, "azs_live_").await;
    let id = row_of(&browser, "ci-pipeline").await;
    // The session authenticated every call: no key was asked for.
    let asked = browser
        .client
        .find(fantoccini::Locator::Css("[data-testid=auth-form]"))
        .await
        .unwrap();
    assert!(
        !asked.is_displayed().await.unwrap(),
        "the page asked for a key"
    );

    let jobs = format!("/projects/{project}/jobs");
    assert_eq!(
        server.send("GET", &jobs, Some(&key), &[], "").await.status,
        200
    );

    browser
        .click(&format!("tr[data-key-id='{id}'] [data-action=revoke]"))
        .await;
    browser
        .type_into("[data-testid=revoke-confirm-name]", "ci-pipeline")
        .await;
    browser.click("[data-testid=revoke-submit]").await;
    browser.gone(&format!("tr[data-key-id='{id}']")).await;
    assert_eq!(
        server.send("GET", &jobs, Some(&key), &[], "").await.status,
        401
    );
    browser.screenshot("dashboard-azscraper").await;
    browser.close().await;
}
