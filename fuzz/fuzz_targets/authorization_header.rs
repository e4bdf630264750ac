//! Any bytes as `Authorization` header values (one or two of them): the bearer parser
//! and the key parser answer, never panic, and every refusal has a code of the table.
#![no_main]

use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use tower_api_keys::bearer::bearer_token;
use tower_api_keys::key::KeyFormat;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // A 0xFF byte splits the input into two header values.
    for part in data.splitn(2, |b| *b == 0xFF) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(AUTHORIZATION, value);
        }
    }
    match bearer_token(&headers) {
        Ok(Some(token)) => {
            assert!(!token.is_empty());
            let _ = KeyFormat::new("sk").parse(token);
            let _ = KeyFormat::new("sk").accept_unchecksummed().parse(token);
        }
        Ok(None) => {}
        Err(error) => assert_eq!(error.code(), "invalid_request"),
    }
});
