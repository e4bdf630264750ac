//! `KeyManager::import`: keys made by another scheme (a Python service's
//! `legacy_live_` + 32 hex characters, `sk_live_` keys without a checksum) are imported
//! by their SHA-256 and then authenticate through the layer, on every store; a bad line
//! writes nothing; importing twice imports once.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{app, body_json, code_of, eventually, get_with, send};
use tower_api_keys::audit::{AuditQuery, verify_chain};
use tower_api_keys::key::{Environment, KeyFormat, KeyId};
use tower_api_keys::manage::{ImportError, KeyManager};
use tower_api_keys::scope::Scope;
use tower_api_keys::store::{KeyStore, MemoryStore};
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

/// SHA-256 hex, computed here with `sha2` (not with the crate's `KeyHash`).
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A key as the Python service made them: `legacy_{env}_` and 32 hex characters.
fn python_key(env: &str) -> String {
    let random = KeyId::generate();
    format!("legacy_{env}_{}", &sha256_hex(random.as_str())[..32])
}

/// A key as an older version made them: `sk_live_` and 24 base62 characters, no
/// checksum.
fn unchecksummed_key() -> String {
    format!("sk_live_{}", &KeyId::generate().as_str()[3..])
}

/// The format the layer and the manager use: ours, and the two older shapes.
fn format() -> KeyFormat {
    KeyFormat::new("sk")
        .accept_unchecksummed()
        .accept_legacy_prefix("legacy")
}

/// The keys of the export, and its NDJSON (the account column is `org_id`).
struct Export {
    python: String,
    old: String,
    expired: String,
    test_env: String,
    ndjson: String,
}

fn export() -> Export {
    let (python, old, expired, test_env) = (
        python_key("live"),
        unchecksummed_key(),
        python_key("live"),
        python_key("test"),
    );
    let hint = |key: &str| key[key.len() - 4..].to_owned();
    let lines = [
        json!({
            "key_hash": sha256_hex(&python),
            "name": "reporting (python)",
            "org_id": "acct_py",
            "environment": "live",
            "scopes": ["read", "reports:export"],
            "prefix": "legacy_live",
            "hint": hint(&python),
            "created_at": "2021-03-04T05:06:07.891Z",
            "project_id": "proj_1",
        }),
        json!({
            // Upper-case hex reads as the same hash.
            "key_hash": sha256_hex(&old).to_uppercase(),
            "name": "old sk key",
            "org_id": "acct_sk",
            "environment": "live",
            "scopes": ["write"],
        }),
        json!({
            "key_hash": sha256_hex(&expired),
            "name": "expired",
            "org_id": "acct_py",
            "environment": "live",
            "scopes": ["read"],
            "expires_at": "2024-01-01T00:00:00Z",
            "project_id": null,
        }),
        json!({
            "key_hash": sha256_hex(&test_env),
            "name": "sandbox",
            "org_id": "acct_py",
            "environment": "test",
            "scopes": ["admin"],
        }),
    ];
    let mut ndjson = String::new();
    for (i, line) in lines.iter().enumerate() {
        ndjson.push_str(&line.to_string());
        // A blank line between two keys is skipped; the last line ends without one.
        ndjson.push_str(if i == 1 { "\n\n" } else { "\n" });
    }
    Export {
        python,
        old,
        expired,
        test_env,
        ndjson: ndjson.trim_end().to_owned(),
    }
}

/// `key` with its last character changed.
fn one_changed(key: &str) -> String {
    let last = if key.ends_with('0') { '1' } else { '0' };
    format!("{}{last}", &key[..key.len() - 1])
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Keys of another scheme, imported, authenticate as what the export says.
async fn imported_keys_authenticate<S: KeyStore + Clone>(store: S) {
    let format = format();
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone())
        .allow_scope(Scope::custom("reports:export"));
    let server = app(ApiKeyLayer::new(format.clone(), cache).environment(Environment::LIVE));
    // Another instance, whose cache this manager does not reach.
    let other_cache = CachedVerifier::builder(store.clone())
        .negative_ttl(Duration::from_millis(300))
        .build();
    let other = app(ApiKeyLayer::new(format, other_cache).environment(Environment::LIVE));
    let export = export();

    // Asked before the import: unknown on both instances (and cached as unknown).
    for server in [&server, &other] {
        let response = send(server, get_with("/whoami", Some(&bearer(&export.python)))).await;
        assert_eq!(response.status(), 401);
        assert_eq!(code_of(response).await, "invalid_api_key");
    }

    let report = manager.import(&export.ndjson, "org_id").await.unwrap();
    assert_eq!((report.imported.len(), report.skipped), (4, 0));
    let names: Vec<&str> = report.imported.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["reporting (python)", "old sk key", "expired", "sandbox"]
    );
    assert!(
        report
            .imported
            .iter()
            .all(|key| key.id.as_str().starts_with("ak_"))
    );
    let python_info = &report.imported[0];
    assert_eq!(python_info.prefix, "legacy_live");
    assert_eq!(python_info.hint, &export.python[export.python.len() - 4..]);
    assert_eq!(
        python_info.created_at,
        time::macros::datetime!(2021-03-04 05:06:07.891 UTC)
    );
    assert_eq!(python_info.created_by, None);
    assert_eq!(
        report.imported[1].prefix, "sk_live",
        "the format's by default"
    );

    // This instance forgot its negative answer at once; the other one after its TTL.
    let response = send(&server, get_with("/whoami", Some(&bearer(&export.python)))).await;
    assert_eq!(response.status(), 200);
    let principal = body_json(response).await;
    assert_eq!(principal["account_id"], "acct_py");
    assert_eq!(principal["project_id"], "proj_1");
    assert_eq!(principal["environment"], "live");
    assert_eq!(principal["scopes"], json!(["read", "reports:export"]));
    assert_eq!(principal["key_id"], python_info.id.as_str());
    eventually("the other instance", Duration::from_secs(10), async || {
        let response = send(&other, get_with("/whoami", Some(&bearer(&export.python)))).await;
        response.status() == 200
    })
    .await;

    let response = send(&server, get_with("/whoami", Some(&bearer(&export.old)))).await;
    assert_eq!(response.status(), 200);
    let principal = body_json(response).await;
    assert_eq!(principal["account_id"], "acct_sk");
    assert_eq!(principal["scopes"], json!(["write"]));
    assert_eq!(principal["project_id"], serde_json::Value::Null);
    // The scopes hold: a write key may post, a read key may not.
    let post = |key: &str| {
        http::Request::post("/items")
            .header(http::header::AUTHORIZATION, bearer(key))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(send(&server, post(&export.old)).await.status(), 200);
    let refused = send(&server, post(&export.python)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(code_of(refused).await, "insufficient_scope");

    // A wrong key of either shape, the expired one, the sandbox one on a live server.
    for (key, status, code) in [
        (python_key("live"), 401, "invalid_api_key"),
        (unchecksummed_key(), 401, "invalid_api_key"),
        (one_changed(&export.python), 401, "invalid_api_key"),
        (export.expired.clone(), 401, "api_key_expired"),
        (export.test_env.clone(), 401, "environment_mismatch"),
    ] {
        let response = send(&server, get_with("/whoami", Some(&bearer(&key)))).await;
        assert_eq!(response.status(), status, "{code}");
        assert_eq!(code_of(response).await, code);
    }

    // Again: nothing imported, everything skipped, nothing doubled.
    let again = manager.import(&export.ndjson, "org_id").await.unwrap();
    assert_eq!((again.imported.len(), again.skipped), (0, 4));
    let listed = store.list("acct_py").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(store.list("acct_sk").await.unwrap().len(), 1);
    let response = send(&server, get_with("/whoami", Some(&bearer(&export.python)))).await;
    assert_eq!(response.status(), 200);

    // One `key.imported` event per key, chained; no hash, no key in any event.
    for (account, keys) in [("acct_py", 3), ("acct_sk", 1)] {
        let trail = store.audit_trail(account).await.unwrap();
        assert_eq!(trail.len(), keys, "{account}");
        assert!(trail.iter().all(|event| event.action == "key.imported"));
        assert!(trail.iter().all(|event| event.actor == "operator"));
        assert_eq!(verify_chain(&trail), Ok(()));
        let text = serde_json::to_string(&trail).unwrap();
        for secret in [
            &export.python,
            &export.old,
            &export.expired,
            &export.test_env,
        ] {
            assert!(!text.contains(secret.as_str()));
            assert!(!text.to_lowercase().contains(&sha256_hex(secret)));
        }
    }
    let trail = store.audit_trail("acct_py").await.unwrap();
    assert_eq!(trail[0].key_id.as_deref(), Some(python_info.id.as_str()));
    assert_eq!(trail[0].changes["name"]["after"], "reporting (python)");
    let mut query = AuditQuery::account("acct_py");
    query.action = Some(tower_api_keys::audit::Action::Imported);
    assert_eq!(store.audit_events(&query).await.unwrap().events.len(), 3);
}

/// A hash imported under another environment than its key's tag names (a
/// `legacy_test_` key given `live`) is refused on every request, hot or not: the
/// token does not say what the record says.
#[tokio::test]
async fn a_key_imported_under_another_environment_than_its_tag_is_refused() {
    let store = MemoryStore::new();
    let format = format();
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache.clone(), format.clone());
    let (mislabelled, right) = (python_key("test"), python_key("live"));
    let line = |key: &str, name: &str| {
        json!({
            "key_hash": sha256_hex(key),
            "name": name,
            "account_id": "acct_py",
            "environment": "live",
            "scopes": ["read"],
        })
        .to_string()
    };
    let ndjson = format!(
        "{}\n{}",
        line(&mislabelled, "mislabelled"),
        line(&right, "right")
    );
    let report = manager.import(&ndjson, "account_id").await.unwrap();
    assert_eq!(report.imported.len(), 2);
    let live = app(ApiKeyLayer::new(format.clone(), cache.clone()).environment(Environment::LIVE));
    let any = app(ApiKeyLayer::new(format, cache));
    for server in [&live, &any] {
        for _ in 0..3 {
            let response = send(server, get_with("/whoami", Some(&bearer(&mislabelled)))).await;
            assert_eq!(response.status(), 401);
            assert_eq!(code_of(response).await, "invalid_api_key");
            let response = send(server, get_with("/whoami", Some(&bearer(&right)))).await;
            assert_eq!(response.status(), 200);
        }
    }
}

/// A file with a bad third line writes nothing: no key, no event.
async fn a_bad_line_writes_nothing<S: KeyStore + Clone>(store: S) {
    let cache = CachedVerifier::new(store.clone());
    let manager = KeyManager::new(store.clone(), cache, format());
    let good = |key: &str, account: &str| {
        json!({
            "key_hash": sha256_hex(key),
            "name": "k",
            "account_id": account,
            "environment": "live",
            "scopes": ["read"],
        })
        .to_string()
    };
    let (first, second) = (python_key("live"), unchecksummed_key());
    let head = format!("{}\n{}\n", good(&first, "acct_a"), good(&second, "acct_b"));
    let mut bad_hash: serde_json::Value =
        serde_json::from_str(&good(&python_key("live"), "acct_a")).unwrap();
    bad_hash["key_hash"] = json!(format!("{}zz", &sha256_hex(&first)[..62]));
    let bad_lines = [
        (
            bad_hash.to_string(),
            "key_hash must be 64 hexadecimal characters",
        ),
        (
            good(&python_key("live"), "acct_a").replace(r#"["read"]"#, r#"["billing"]"#),
            "scopes[0] is not a scope this manager issues",
        ),
        (
            good(&python_key("live"), "acct_a").replace(r#"["read"]"#, r#"["read""#),
            "not a valid JSON object",
        ),
        (good(&first, "acct_c"), "key_hash is the same as on line 1"),
    ];
    for (bad, expected) in bad_lines {
        let error = manager
            .import(&format!("{head}{bad}\n"), "account_id")
            .await
            .unwrap_err();
        assert!(
            matches!(error, ImportError::Line { line: 3, .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.starts_with("line 3: "), "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(&sha256_hex(&first)[..62]), "{message}");
        for account in ["acct_a", "acct_b", "acct_c"] {
            assert!(store.list(account).await.unwrap().is_empty(), "{message}");
            assert!(store.audit_trail(account).await.unwrap().is_empty());
        }
        assert!(store.audited_accounts().await.unwrap().is_empty());
    }
    // The same head alone imports.
    let report = manager.import(&head, "account_id").await.unwrap();
    assert_eq!(report.imported.len(), 2);
}

/// The active-key limit is for keys the accounts create, not for the operator's import.
async fn the_active_key_limit_does_not_apply<S: KeyStore + Clone>(store_with_limit_2: S) {
    let store = store_with_limit_2;
    let manager = KeyManager::new(store.clone(), CachedVerifier::new(store.clone()), format());
    let ndjson: Vec<String> = (0..3)
        .map(|i| {
            json!({
                "key_hash": sha256_hex(&python_key("live")),
                "name": format!("k{i}"),
                "account_id": "acct_full",
                "environment": "live",
                "scopes": [],
            })
            .to_string()
        })
        .collect();
    let report = manager
        .import(&ndjson.join("\n"), "account_id")
        .await
        .unwrap();
    assert_eq!(report.imported.len(), 3);
    assert_eq!(store.list("acct_full").await.unwrap().len(), 3);
    let refused = manager
        .create_for_account(
            "acct_full",
            Environment::LIVE,
            tower_api_keys::manage::NewKey::named("one more"),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "api_key_limit_reached");
}

/// A field of a line, right or wrong.
fn field() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("key_hash"),
        Just("name"),
        Just("account_id"),
        Just("environment"),
        Just("scopes"),
        Just("prefix"),
        Just("hint"),
        Just("created_at"),
        Just("expires_at"),
        Just("project_id"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("1e999".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just(r#"["read", "write"]"#.to_owned()),
        Just(r#""live""#.to_owned()),
        Just(r#""2020-01-01T00:00:00Z""#.to_owned()),
        Just(r#""+10000-01-01T00:00:00Z""#.to_owned()),
        "\"[0-9a-fA-F]{63,65}\"",
        "\"[ -~]{0,12}\"",
        "[ -~]{0,6}",
    ];
    (name, value).prop_map(|(name, value)| format!("\"{name}\": {value}"))
}

/// A line: any text, or an object of some fields (maybe unclosed).
fn any_line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (proptest::collection::vec(field(), 0..12), any::<bool>()).prop_map(
            |(fields, closed)| format!("{{{}{}", fields.join(", "), if closed { "}" } else { "" })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the input: the import answers (never panics), a refusal names a line
    /// of the input and writes nothing, and an import stores at most a key per line.
    #[test]
    fn any_input_is_imported_or_refused_by_its_line(lines in proptest::collection::vec(any_line(), 0..6)) {
        let input = lines.join("\n");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone(), CachedVerifier::new(store.clone()), format());
        let answer = runtime.block_on(manager.import(&input, "account_id"));
        let accounts = runtime.block_on(store.audited_accounts()).unwrap();
        match answer {
            Ok(report) => {
                prop_assert!(report.imported.len() <= input.lines().count());
                prop_assert_eq!(report.skipped, 0);
                prop_assert_eq!(accounts.is_empty(), report.imported.is_empty());
            }
            Err(ImportError::Line { line, message }) => {
                prop_assert!((1..=input.lines().count()).contains(&line), "{line}: {message}");
                prop_assert!(accounts.is_empty());
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

#[tokio::test]
async fn memory_imported_keys_authenticate() {
    imported_keys_authenticate(MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_a_bad_line_writes_nothing() {
    a_bad_line_writes_nothing(MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_the_active_key_limit_does_not_apply() {
    the_active_key_limit_does_not_apply(MemoryStore::new().with_active_key_limit(2)).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::support::temp_db::TempDb;
    use tower_api_keys::store::SqliteStore;

    async fn store(db: &TempDb) -> SqliteStore {
        let store = SqliteStore::open(db.path()).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test]
    async fn sqlite_imported_keys_authenticate() {
        let db = TempDb::new("import");
        super::imported_keys_authenticate(store(&db).await).await;
    }

    #[tokio::test]
    async fn sqlite_a_bad_line_writes_nothing() {
        let db = TempDb::new("import-bad");
        super::a_bad_line_writes_nothing(store(&db).await).await;
    }

    #[tokio::test]
    async fn sqlite_the_active_key_limit_does_not_apply() {
        let db = TempDb::new("import-limit");
        let store = store(&db).await.with_active_key_limit(2);
        super::the_active_key_limit_does_not_apply(store).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::support::postgres::schema_pool;
    use tower_api_keys::store::PostgresStore;

    async fn store(test: &str) -> Option<PostgresStore> {
        let (pool, schema) = schema_pool(test).await?;
        let store = PostgresStore::from_pool(pool).with_revocation_channel(&schema);
        store.migrate().await.unwrap();
        Some(store)
    }

    #[tokio::test]
    async fn postgres_imported_keys_authenticate() {
        let Some(store) = store("import_keys").await else {
            return;
        };
        super::imported_keys_authenticate(store).await;
    }

    #[tokio::test]
    async fn postgres_a_bad_line_writes_nothing() {
        let Some(store) = store("import_bad_line").await else {
            return;
        };
        super::a_bad_line_writes_nothing(store).await;
    }

    #[tokio::test]
    async fn postgres_the_active_key_limit_does_not_apply() {
        let Some(store) = store("import_limit").await else {
            return;
        };
        super::the_active_key_limit_does_not_apply(store.with_active_key_limit(2)).await;
    }
}
