//! Properties over generated input: any header gives an answer from the response
//! table, keys round-trip, and any one-character change is caught.

mod support;

use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use proptest::prelude::*;
use support::*;
use tower_api_keys::CachedVerifier;
use tower_api_keys::bearer::bearer_token;
use tower_api_keys::key::{Environment, KeyFormat};

const TABLE: [(u16, &str); 6] = [
    (400, "invalid_request"),
    (401, "missing_api_key"),
    (401, "invalid_api_key"),
    (401, "api_key_revoked"),
    (401, "api_key_expired"),
    (401, "environment_mismatch"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes the header holds: no panic, and a status and code of the table.
    #[test]
    fn any_authorization_header_gets_an_answer_from_the_table(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let Ok(value) = HeaderValue::from_bytes(&raw) else { return Ok(()) };
        let mut headers = http::HeaderMap::new();
        headers.insert(AUTHORIZATION, value.clone());
        let _ = bearer_token(&headers);

        let runtime = runtime();
        let (status, code) = runtime.block_on(async {
            let keys = keys().await;
            let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
            let mut request = get_with("/whoami", None);
            request.headers_mut().insert(AUTHORIZATION, value);
            let response = send(&app, request).await;
            (response.status(), code_of(response).await)
        });
        prop_assert!(
            status == StatusCode::OK || TABLE.contains(&(status.as_u16(), code.as_str())),
            "{status} {code}"
        );
    }

    /// Whatever string is presented as a key: the parser answers, never panics.
    #[test]
    fn any_string_parses_or_is_refused(s in "\\PC{0,120}", legacy in any::<bool>()) {
        let format = if legacy { KeyFormat::new("sk").accept_unchecksummed() } else { KeyFormat::new("sk") };
        let _ = format.parse(&s);
    }

    /// A generated key always parses back to itself: same environment, same hash.
    #[test]
    fn generated_keys_round_trip(live in any::<bool>(), custom in any::<bool>()) {
        let staging = Environment::new("staging");
        let format = KeyFormat::new("rk").with_environment(staging.clone());
        let env = if custom { staging } else if live { Environment::LIVE } else { Environment::TEST };
        let key = format.generate(&env);
        let parsed = format.parse(key.expose_secret()).unwrap();
        prop_assert_eq!(parsed.environment(), &env);
        prop_assert_eq!(parsed.hash(), key.hash());
    }

    /// Changing any one character of a valid key is caught by the checksum (or, failing
    /// that, by the lookup: the changed key is unknown).
    #[test]
    fn one_changed_character_is_caught(position in 0usize..56, replacement in proptest::char::range('!', '~')) {
        let format = KeyFormat::new("sk");
        let key = format.generate(&Environment::LIVE);
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let position = position % bytes.len();
        prop_assume!(bytes[position] != replacement as u8);
        bytes[position] = replacement as u8;
        let changed = String::from_utf8(bytes).unwrap();
        match format.parse(&changed) {
            Err(_) => {}
            Ok(parsed) => prop_assert_ne!(parsed.hash(), key.hash()),
        }
    }
}
