//! Any string as a key: parsing answers and never panics; whatever parses has a known
//! environment, and a generated key with one byte changed (any byte, the last included)
//! is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_keys::key::{Environment, KeyFormat};

fuzz_target!(|data: &[u8]| {
    let format = KeyFormat::new("sk").with_environment(Environment::new("staging"));
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = format.parse(text) {
            assert!(format.environments().contains(parsed.environment()));
        }
        // Legacy acceptance only widens what parses: a checksummed key parses both ways.
        let legacy_format = format.clone().accept_unchecksummed();
        let legacy = legacy_format.parse(text);
        if let Ok(parsed) = format.parse(text) {
            assert!(legacy.is_ok_and(|l| l.hash() == parsed.hash()));
        }
    }
    // Mutate a real key at a fuzzer-chosen place.
    if data.len() >= 2 {
        let key = format.generate(&Environment::LIVE);
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let at = usize::from(data[0]) % bytes.len();
        if bytes[at] != data[1] {
            bytes[at] = data[1];
            if let Ok(changed) = std::str::from_utf8(&bytes) {
                assert!(format.parse(changed).is_err(), "one changed byte at {at} accepted");
            }
        }
    }
});
