//! The plaintext key never reaches tracing output, at any level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::*;
use tower_api_keys::CachedVerifier;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_in_trace_output() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let keys = keys().await;
    let verifier = Counting::new(keys.store.clone());
    let app = app(live_layer(&keys, CachedVerifier::new(verifier.clone())));
    let unknown = keys
        .format
        .generate(&tower_api_keys::key::Environment::LIVE);
    let mut typo = keys.admin.expose_secret().to_owned();
    typo.replace_range(12..13, if &typo[12..13] == "x" { "y" } else { "x" });

    // Miss, hit, revoked, expired, wrong environment, unknown, malformed, scope failure.
    for key in [
        &keys.read,
        &keys.read,
        &keys.revoked,
        &keys.expired,
        &keys.test_env,
        &unknown,
    ] {
        send(&app, get_with("/whoami", Some(&bearer(key)))).await;
    }
    send(&app, get_with("/whoami", Some(&format!("Bearer {typo}")))).await;
    let post = http::Request::post("/items")
        .header(http::header::AUTHORIZATION, bearer(&keys.read))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, post).await.status(), StatusCode::FORBIDDEN);
    // A backend failure, logged at error level.
    verifier.fail(true);
    let fresh = keys.write.expose_secret();
    let response = send(&app, get_with("/whoami", Some(&format!("Bearer {fresh}")))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        output.contains("api_key_auth"),
        "the capture works: {output}"
    );
    assert!(output.contains("outcome=\"accepted\"") || output.contains("outcome=accepted"));
    assert!(output.contains("api_key_revoked"));
    for key in [
        &keys.read,
        &keys.revoked,
        &keys.expired,
        &keys.test_env,
        &unknown,
        &keys.write,
    ] {
        let secret = key.expose_secret();
        // Neither the key, nor its random body, nor its hash.
        assert!(!output.contains(secret));
        assert!(!output.contains(&secret[8..]));
        assert!(!output.contains(&key.hash().to_hex()));
    }
    assert!(!output.contains(&typo[8..]));
}
