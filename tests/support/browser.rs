//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them). Each [`Browser`] starts its own
//! `chromedriver` on a free port and stops it when dropped.
//!
//! Without the two programs the tests skip with a note (see [`super::skips`]), unless
//! `TOWER_API_KEYS_REQUIRE_BROWSER=1` (set by `.ci/run` under CI), which fails them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// The first of `candidates` (or the program named by the environment variable `env`)
/// that exists.
fn program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// A fresh headless Chromium, or `None` (the skip recorded) when Chromium or its
    /// driver is missing and the browser is not required.
    pub async fn start(test: &str) -> Option<Browser> {
        let required = std::env::var("TOWER_API_KEYS_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        let chromium = program(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let driver = program("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                !required,
                "chromium and chromedriver are required (TOWER_API_KEYS_REQUIRE_BROWSER=1): \
                 apt-get install chromium chromium-driver"
            );
            super::skips::skip(test, "install chromium and chromium-driver to run it");
            return None;
        };
        Some(Browser::launch(&chromium, &driver).await)
    }

    async fn launch(chromium: &Path, driver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let profile = tempdir();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(capabilities.clone());
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("no WebDriver session at {url}: {error}"),
            }
        };
        Browser { client, driver }
    }

    /// The element of `css`, waiting (up to 10 s) until it is displayed.
    pub async fn visible(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if element.is_displayed().await.unwrap_or(false) {
                    return element;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css} is not displayed; the page shows: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until no element of `css` is displayed.
    pub async fn gone(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shown = match self.client.find_all(Locator::Css(css)).await {
                Ok(elements) => {
                    let mut any = false;
                    for element in elements {
                        any |= element.is_displayed().await.unwrap_or(false);
                    }
                    any
                }
                Err(_) => false,
            };
            if !shown {
                return;
            }
            assert!(Instant::now() < deadline, "{css} is still displayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element of `css` once it is displayed.
    pub async fn click(&self, css: &str) {
        self.visible(css).await.click().await.unwrap();
    }

    /// Types `text` into the element of `css` once it is displayed.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.visible(css).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Waits (up to 10 s) until the text of `css` satisfies `ok`, and returns it.
    pub async fn text_until(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if ok(&text) {
                        return text;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed the text expected; the page shows: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the whole page (for failure messages).
    pub async fn page_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(error) => format!("(no body: {error})"),
        }
    }

    /// A screenshot of the page, written to `target/screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// A fresh directory for the browser's profile.
fn tempdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chromium-{}-{}",
        std::process::id(),
        tower_api_keys::key::KeyId::generate_with_prefix("p")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
