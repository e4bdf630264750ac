//! Properties over generated input: headers built from a grammar of what clients send
//! get exactly the answer the response table gives them (and every row is reached many
//! times), any header bytes get an answer from the table, keys round-trip, and any
//! one-character change of a key is refused by the parser.

mod support;

use std::collections::BTreeMap;

use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
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

/// What a client puts after the scheme.
#[derive(Debug, Clone, Copy)]
enum Token {
    Admin,
    Revoked,
    Expired,
    TestEnvironment,
    /// Well formed, never issued.
    Unknown,
    /// One character of a real key changed (the checksum fails).
    BadChecksum,
    /// Another prefix (`pk_live_…`).
    OtherPrefix,
    /// A JWT-like token: legal characters, not a key.
    Foreign,
    /// A character outside `b64token` (space inside, `@`, `ä`, `"`).
    Illegal(&'static str),
    Empty,
}

/// One request's `Authorization` header(s), and the answer the table gives it.
#[derive(Debug, Clone)]
struct Case {
    headers: Vec<Vec<u8>>,
    expected: (u16, &'static str),
}

fn scheme() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        // Bearer in any case.
        proptest::collection::vec(any::<bool>(), 6).prop_map(|upper| {
            let scheme: String = "bearer"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            (scheme, true)
        }),
        prop_oneof![
            Just("Basic"),
            Just("Token"),
            Just("Digest"),
            Just("Bearer:"),
            Just("Bearerx")
        ]
        .prop_map(|s| (s.to_owned(), false)),
    ]
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        Just(Token::Admin),
        Just(Token::Revoked),
        Just(Token::Expired),
        Just(Token::TestEnvironment),
        Just(Token::Unknown),
        Just(Token::BadChecksum),
        Just(Token::OtherPrefix),
        Just(Token::Foreign),
        prop_oneof![
            Just("sk_live_a b"),
            Just("sk@live"),
            Just("sk_live_ä"),
            Just("\"quoted\"")
        ]
        .prop_map(Token::Illegal),
        Just(Token::Empty),
    ]
}

fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(" "), Just("  "), Just("\t"), Just(" \t ")]
}

fn edge() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(""), Just(" "), Just("\t")]
}

/// The grammar: no header; one header `[edge] scheme space token [edge]`; or two headers.
fn case(keys: &'static Keys) -> impl Strategy<Value = Case> {
    let one = (scheme(), space(), token(), edge(), edge(), any::<u8>()).prop_map(
        move |((scheme, bearer), space, token, lead, trail, at)| {
            let text = token_text(keys, token, at);
            let header = format!("{lead}{scheme}{space}{text}{trail}").into_bytes();
            let expected = match (bearer, token) {
                (false, _) => (401, "missing_api_key"),
                (true, Token::Empty | Token::Illegal(_)) => (400, "invalid_request"),
                (true, Token::Admin) => (200, ""),
                (true, Token::Revoked) => (401, "api_key_revoked"),
                (true, Token::Expired) => (401, "api_key_expired"),
                (true, Token::TestEnvironment) => (401, "environment_mismatch"),
                (true, _) => (401, "invalid_api_key"),
            };
            Case {
                headers: vec![header],
                expected,
            }
        },
    );
    let two = (token(), token(), any::<u8>()).prop_map(move |(a, b, at)| Case {
        headers: vec![
            format!("Bearer {}", token_text(keys, a, at)).into_bytes(),
            format!("bearer {}", token_text(keys, b, at)).into_bytes(),
        ],
        expected: (400, "invalid_request"),
    });
    prop_oneof![
        8 => one,
        1 => two,
        1 => Just(Case { headers: Vec::new(), expected: (401, "missing_api_key") }),
    ]
}

fn token_text(keys: &Keys, token: Token, at: u8) -> String {
    match token {
        Token::Admin => keys.admin.expose_secret().to_owned(),
        Token::Revoked => keys.revoked.expose_secret().to_owned(),
        Token::Expired => keys.expired.expose_secret().to_owned(),
        Token::TestEnvironment => keys.test_env.expose_secret().to_owned(),
        Token::Unknown => keys
            .format
            .generate(&Environment::LIVE)
            .expose_secret()
            .to_owned(),
        Token::BadChecksum => {
            let mut key = keys.admin.expose_secret().as_bytes().to_vec();
            // A body or checksum character, changed to another alphanumeric.
            let i = 8 + usize::from(at) % (key.len() - 8);
            key[i] = if key[i] == b'a' { b'b' } else { b'a' };
            String::from_utf8(key).unwrap()
        }
        Token::OtherPrefix => keys.admin.expose_secret().replacen("sk_", "pk_", 1),
        Token::Foreign => "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln".to_owned(),
        Token::Illegal(text) => text.to_owned(),
        Token::Empty => String::new(),
    }
}

/// Headers from the grammar get exactly the table's answer, and each row of the table
/// (and the 200) is reached at least 40 times in 2,000 cases.
#[test]
fn headers_from_a_grammar_of_clients_get_the_tables_answer() {
    let runtime = runtime();
    let keys: &'static Keys = Box::leak(Box::new(runtime.block_on(keys())));
    let app = app(live_layer(keys, CachedVerifier::new(keys.store.clone())));
    let mut reached: BTreeMap<(u16, &'static str), usize> = BTreeMap::new();
    let mut runner = TestRunner::new(Config {
        cases: 2_000,
        failure_persistence: None,
        ..Config::default()
    });
    let reached_cell = std::cell::RefCell::new(&mut reached);
    runner
        .run(&case(keys), |case| {
            let mut request = get_with("/whoami", None);
            for header in &case.headers {
                let Ok(value) = HeaderValue::from_bytes(header) else {
                    // Bytes http refuses (`ä` is fine, control characters are not) never
                    // reach a service.
                    return Ok(());
                };
                request.headers_mut().append(AUTHORIZATION, value);
            }
            let (status, code) = runtime.block_on(async {
                let response = send(&app, request).await;
                (response.status().as_u16(), code_of(response).await)
            });
            prop_assert_eq!((status, code.as_str()), case.expected, "{:?}", case);
            *reached_cell.borrow_mut().entry(case.expected).or_default() += 1;
            Ok(())
        })
        .unwrap();
    eprintln!("answers reached (status, code → cases): {reached:?}");
    for row in TABLE.iter().chain([&(200, "")]) {
        let count = reached.get(row).copied().unwrap_or(0);
        assert!(count >= 40, "{row:?} reached only {count} times");
    }
}

/// Headers of any legal bytes (a `Bearer` prefix or not): no panic, an answer from the
/// table, and the bearer parser agrees with the layer. Each of the parser's three
/// outcomes is reached many times.
#[test]
fn any_authorization_header_gets_an_answer_from_the_table() {
    let runtime = runtime();
    let keys = runtime.block_on(keys());
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())));
    // Every byte a header value may hold: tab, visible ASCII and space, obs-text.
    let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff];
    let prefix = prop_oneof![
        Just(&b"Bearer "[..]),
        Just(&b"bearer\t"[..]),
        Just(&b"Bearer sk_live_"[..]),
        Just(&b""[..]),
        Just(&b"Basic "[..]),
    ];
    let rest = prop_oneof![
        proptest::collection::vec(byte, 0..120),
        // Token-shaped: b64token characters, padding, trailing whitespace.
        "[A-Za-z0-9._~+/-]{1,60}={0,2}[ \t]{0,2}".prop_map(String::into_bytes),
    ];
    let header = (prefix, rest).prop_map(|(prefix, rest)| [prefix, &rest].concat());
    let outcomes = std::cell::RefCell::new([0usize; 3]);
    let mut runner = TestRunner::new(Config {
        cases: 1_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&header, |raw| {
            let value = HeaderValue::from_bytes(&raw).expect("only legal bytes are generated");
            let mut headers = http::HeaderMap::new();
            headers.insert(AUTHORIZATION, value.clone());
            let parsed = bearer_token(&headers).map(|token| token.is_some());
            let (status, code) = runtime.block_on(async {
                let mut request = get_with("/whoami", None);
                request.headers_mut().insert(AUTHORIZATION, value);
                let response = send(&app, request).await;
                (response.status(), code_of(response).await)
            });
            prop_assert!(
                status == StatusCode::OK || TABLE.contains(&(status.as_u16(), code.as_str())),
                "{status} {code}"
            );
            let answer = (status.as_u16(), code.as_str());
            match parsed {
                Err(_) => prop_assert_eq!(answer, (400, "invalid_request")),
                Ok(false) => prop_assert_eq!(answer, (401, "missing_api_key")),
                Ok(true) => prop_assert!(answer.0 != 400 && answer.1 != "missing_api_key"),
            }
            let branch = match parsed {
                Err(_) => 0,
                Ok(false) => 1,
                Ok(true) => 2,
            };
            outcomes.borrow_mut()[branch] += 1;
            Ok(())
        })
        .unwrap();
    let [refused, none, token] = outcomes.into_inner();
    eprintln!("parser outcomes: 400 {refused}, no token {none}, a token {token}");
    for (what, count) in [("400", refused), ("no token", none), ("a token", token)] {
        assert!(count >= 50, "{what} reached only {count} times in 1,000");
    }
}

fn key_like() -> impl Strategy<Value = String> {
    let format = KeyFormat::new("sk");
    let whole = format.clone();
    prop_oneof![
        // Real keys, whole: these must parse.
        any::<bool>().prop_map(move |live| {
            let env = if live {
                Environment::LIVE
            } else {
                Environment::TEST
            };
            whole.generate(&env).expose_secret().to_owned()
        }),
        "\\PC{0,120}",
        "sk_(live|test|prod)_[A-Za-z0-9]{0,60}",
        (
            any::<bool>(),
            any::<proptest::sample::Index>(),
            "[ -~]{0,2}"
        )
            .prop_map(move |(live, at, insert)| {
                // A real key, cut or with a few characters spliced in.
                let env = if live {
                    Environment::LIVE
                } else {
                    Environment::TEST
                };
                let key = format.generate(&env).expose_secret().to_owned();
                let at = at.index(key.len() + 1);
                format!("{}{insert}", &key[..at])
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever string is presented as a key: the parser answers, never panics, and
    /// what it accepts is what the text says (its environment tag, its SHA-256).
    #[test]
    fn any_string_parses_or_is_refused(s in key_like(), legacy in any::<bool>()) {
        let format = if legacy { KeyFormat::new("sk").accept_unchecksummed() } else { KeyFormat::new("sk") };
        let whole_key = s.len() == 57 && (s.starts_with("sk_live_") || s.starts_with("sk_test_"))
            && s[8..].bytes().all(|b| b.is_ascii_alphanumeric());
        if whole_key && KeyFormat::new("sk").parse(&s).is_ok() {
            prop_assert!(format.parse(&s).is_ok(), "legacy acceptance only widens");
        }
        if let Ok(parsed) = format.parse(&s) {
            let tag = s.strip_prefix("sk_").and_then(|rest| rest.split('_').next());
            prop_assert_eq!(Some(parsed.environment().as_str()), tag);
            prop_assert_eq!(parsed.hash(), tower_api_keys::key::KeyHash::of(&s));
            if !legacy {
                prop_assert!(parsed.is_checksummed());
            }
        }
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

    /// Changing any one character of a valid key (the last one included) to any other
    /// printable character makes the parser refuse it: prefix, environment, separator,
    /// body and checksum are all checked.
    #[test]
    fn one_changed_character_is_refused(
        position in any::<proptest::sample::Index>(),
        replacement in proptest::char::range('!', '~'),
        live in any::<bool>(),
    ) {
        let format = KeyFormat::new("sk");
        let key = format.generate(if live { &Environment::LIVE } else { &Environment::TEST });
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let position = position.index(bytes.len());
        prop_assume!(bytes[position] != replacement as u8);
        bytes[position] = replacement as u8;
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(format.parse(&changed).is_err(), "{} accepted", position);
    }
}
