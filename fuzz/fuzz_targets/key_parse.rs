//! Any string as a key: parsing answers and never panics; whatever parses has a known
//! environment, and a generated key with one byte changed never parses to the same hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_keys::key::{Environment, KeyFormat};

fuzz_target!(|data: &[u8]| {
    let format = KeyFormat::new("sk").with_environment(Environment::new("staging"));
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = format.parse(text) {
            assert!(format.environments().contains(parsed.environment()));
        }
        let _ = format.clone().accept_unchecksummed().parse(text);
    }
    // Mutate a real key at a fuzzer-chosen place.
    if data.len() >= 2 {
        let key = format.generate(&Environment::LIVE);
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let at = usize::from(data[0]) % bytes.len();
        if bytes[at] != data[1] {
            bytes[at] = data[1];
            if let Ok(changed) = std::str::from_utf8(&bytes) {
                if let Ok(parsed) = format.parse(changed) {
                    assert_ne!(parsed.hash(), key.hash());
                }
            }
        }
    }
});
