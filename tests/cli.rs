//! The `apikeys` CLI: create → use → revoke → rejected.
#![cfg(feature = "cli")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::temp_db::TempDb;
use support::{app, code_of, eventually, get_with, send};
use tower_api_keys::key::KeyFormat;
use tower_api_keys::store::SqliteStore;
use tower_api_keys::{ApiKeyLayer, CachedVerifier};

fn apikeys(db: &TempDb, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .arg("--database-url")
        .arg(db.path())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn create_use_revoke_rejected() {
    let db = TempDb::new("cli");
    let (ok, out, _) = apikeys(&db, &["migrate"]);
    assert!(ok);
    assert_eq!(out.trim(), "migrated");

    let (ok, out, err) = apikeys(
        &db,
        &[
            "create",
            "--account",
            "acct_1",
            "--name",
            "bootstrap",
            "--scopes",
            "admin",
        ],
    );
    assert!(ok, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let (id, key) = (field("id"), field("key"));
    assert!(id.starts_with("ak_") && key.starts_with("sk_live_"));

    let (ok, listed, _) = apikeys(&db, &["list", "--account", "acct_1"]);
    assert!(ok);
    assert!(listed.contains(&id) && listed.contains("bootstrap") && !listed.contains(&key));

    // A server on the same database accepts the key. Another process (the CLI) revokes
    // it: on SQLite the server sees that when its cache entry is re-verified (here after
    // 200 ms); on PostgreSQL, NOTIFY makes it immediate.
    let store = SqliteStore::open(db.path()).await.unwrap();
    let cache = CachedVerifier::builder(store)
        .positive_ttl(Duration::from_millis(200))
        .build();
    let server = app(ApiKeyLayer::new(KeyFormat::new("sk"), cache));
    let auth = format!("Bearer {key}");
    assert_eq!(
        send(&server, get_with("/whoami", Some(&auth)))
            .await
            .status(),
        200
    );

    let (ok, out, err) = apikeys(&db, &["revoke", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("revoked {id}"));
    // Until the entry is re-verified the key is still served (requests past the TTL
    // from the stale entry, which starts the re-verification: stale-while-revalidate);
    // then it is refused. Nothing else is ever answered.
    let mut served = 0;
    eventually("the revocation", Duration::from_secs(10), async || {
        let response = send(&server, get_with("/whoami", Some(&auth))).await;
        match response.status().as_u16() {
            200 => {
                served += 1;
                false
            }
            401 => {
                assert_eq!(code_of(response).await, "api_key_revoked");
                true
            }
            other => panic!("answered {other}"),
        }
    })
    .await;
    assert!(
        served >= 1,
        "served from the cache right after the revocation"
    );
}

#[test]
fn errors_are_one_line_and_a_failure_exit() {
    let db = TempDb::new("cli-errors");
    for args in [
        &["revoke", "ak_nope"][..],
        &[
            "create",
            "--account",
            "a",
            "--name",
            "n",
            "--scopes",
            "bad scope!",
        ],
        &["create", "--account", "a", "--name", "n", "--env", "prod-1"],
    ] {
        let (ok, _, err) = apikeys(&db, args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("apikeys: "), "{err}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .args([
            "--database-url",
            "/nonexistent/dir/x.db",
            "list",
            "--account",
            "a",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.starts_with("apikeys: could not connect to the database at /nonexistent/dir/x.db: ")
            && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn database_credentials_are_never_printed() {
    // A port that does not parse: refused at once.
    let url = "postgres://app:hunter2@127.0.0.1:99999/keys";
    let output = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .args(["--database-url", url, "list", "--account", "a"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(
        stderr.contains("could not connect to the database at 127.0.0.1:99999/keys"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // Nor by the help, which would show DATABASE_URL's value.
    let help = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .arg("--help")
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

/// `apikeys account-limits`: an account's shared limits and balance, set by the
/// operator, shown as JSON, refused with a clear message when malformed, and spent by
/// the account's keys.
#[tokio::test]
async fn account_limits_are_set_shown_and_spent() {
    let db = TempDb::new("cli-limits");
    let (ok, out, err) = apikeys(
        &db,
        &[
            "account-limits",
            "--account",
            "acct_1",
            "--ratelimit",
            "requests:100:60",
            "--credits",
            "2",
            "--refill",
            "monthly:50:31",
        ],
    );
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({
            "ratelimits": [{"name": "requests", "limit": 100, "window_seconds": 60}],
            "credits": {"remaining": 2, "refill": {"interval": "monthly", "amount": 50, "day": 31}}
        })
    );
    for bad in [
        &["--ratelimit", "requests:0:60"][..],
        &["--ratelimit", "requests:ten:60"],
        &["--ratelimit", "a:1:1", "--ratelimit", "a:2:2"],
        &["--credits", "5", "--refill", "weekly:5"],
        &["--credits", "5", "--refill", "monthly:5:32"],
    ] {
        let mut args = vec!["account-limits", "--account", "acct_1"];
        args.extend_from_slice(bad);
        let (ok, _, err) = apikeys(&db, &args);
        assert!(!ok, "{bad:?} was accepted");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let (ok, out, _) = apikeys(&db, &["account-limits", "--account", "acct_1"]);
    assert!(ok);
    assert!(
        out.contains(r#""remaining":2"#),
        "unchanged by refusals: {out}"
    );

    let (ok, out, err) = apikeys(
        &db,
        &[
            "create",
            "--account",
            "acct_1",
            "--name",
            "k",
            "--scopes",
            "read",
        ],
    );
    assert!(ok, "{err}");
    let key = out
        .lines()
        .find_map(|line| line.strip_prefix("key="))
        .unwrap()
        .to_owned();
    let store = SqliteStore::open(db.path()).await.unwrap();
    let app = app(ApiKeyLayer::new(
        KeyFormat::new("sk"),
        CachedVerifier::new(store),
    ));
    let authorization = format!("Bearer {key}");
    for _ in 0..2 {
        let response = send(&app, get_with("/whoami", Some(&authorization))).await;
        assert_eq!(response.status(), 200);
    }
    let spent = send(&app, get_with("/whoami", Some(&authorization))).await;
    assert_eq!(code_of(spent).await, "credits_exhausted");

    let (ok, out, _) = apikeys(&db, &["account-limits", "--account", "acct_1", "--clear"]);
    assert!(ok);
    assert_eq!(out.trim(), r#"{"ratelimits":[],"credits":null}"#);
}

/// Setting an account's rate limits keeps its balance, and the reverse.
#[test]
fn account_limits_keep_what_is_not_given() {
    let db = TempDb::new("cli-limits-keep");
    let set = |args: &[&str]| {
        let mut all = vec!["account-limits", "--account", "acct_1"];
        all.extend_from_slice(args);
        let (ok, out, err) = apikeys(&db, &all);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    set(&["--credits", "7"]);
    let shown = set(&["--ratelimit", "requests:5:60"]);
    assert_eq!(shown["credits"]["remaining"], 7, "{shown}");
    let shown = set(&["--credits", "9"]);
    assert_eq!(shown["ratelimits"][0]["limit"], 5, "{shown}");
    assert_eq!(shown["credits"]["remaining"], 9, "{shown}");
}

/// Runs the CLI with `input` on its standard input: (exit code, stdout, stderr).
fn apikeys_with_input(db: &TempDb, args: &[&str], input: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_apikeys"))
        .arg("--database-url")
        .arg(db.path())
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `apikeys import`: keys of another scheme, from NDJSON on stdin, imported once, all
/// or nothing, then accepted by a server.
#[tokio::test]
async fn import_reads_ndjson_once_and_all_or_nothing() {
    use sha2::{Digest, Sha256};
    let sha256_hex = |text: &str| -> String {
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let db = TempDb::new("cli-import");
    let legacy = format!("legacy_live_{}", &sha256_hex("one")[..32]);
    let old = "sk_live_0123456789abcdefABCDEFgh".to_owned();
    let line = |key: &str, name: &str, scopes: &str| {
        format!(
            r#"{{"key_hash": "{}", "name": "{name}", "org_id": "acct_1", "environment": "live", "scopes": {scopes}}}"#,
            sha256_hex(key)
        )
    };
    let ndjson = format!(
        "{}\n{}\n",
        line(&legacy, "legacy", r#"["read"]"#),
        line(&old, "old", r#"["write"]"#)
    );
    let import = ["import", "--account-field", "org_id"];
    let (code, out, err) = apikeys_with_input(&db, &import, &ndjson);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "imported 2 keys, skipped 0 already present");
    let (code, out, _) = apikeys_with_input(&db, &import, &ndjson);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "imported 0 keys, skipped 2 already present");

    // A bad third line: exit code 1, the line named on one line, nothing written.
    let third = line(
        &format!("legacy_live_{}", &sha256_hex("two")[..32]),
        "third",
        r#"["billing"]"#,
    );
    let second = line(
        &format!("legacy_live_{}", &sha256_hex("three")[..32]),
        "second",
        r#"["read"]"#,
    );
    let first = line(
        &format!("legacy_live_{}", &sha256_hex("four")[..32]),
        "first",
        "[]",
    );
    let bad = format!("{first}\n{second}\n{third}\n");
    let (code, out, err) = apikeys_with_input(&db, &import, &bad);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        err.trim(),
        r#"apikeys: line 3: scopes[0] is not a scope this manager issues (apikeys import --allow-scope); nothing was imported"#
    );
    assert!(out.is_empty(), "{out}");
    // Without --account-field, `org_id` is an unknown field.
    let (code, _, err) = apikeys_with_input(&db, &["import"], &ndjson);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        r#"apikeys: line 1: unknown field "org_id"; nothing was imported"#
    );
    let (ok, listed, _) = apikeys(&db, &["list", "--account", "acct_1"]);
    assert!(ok);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("legacy") && listed.contains("sk_live_…"),
        "{listed}"
    );
    let (ok, events, _) = apikeys(&db, &["audit", "export", "--account", "acct_1"]);
    assert!(ok);
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|event| event["action"] == "key.imported" && event["actor"] == "cli")
    );
    let (ok, verified, _) = apikeys(&db, &["audit", "verify"]);
    assert!(ok);
    assert_eq!(verified.trim(), "verified 2 events in 1 accounts");

    // A server that knows the older shapes accepts both keys.
    let store = SqliteStore::open(db.path()).await.unwrap();
    let format = KeyFormat::new("sk")
        .accept_unchecksummed()
        .accept_legacy_prefix("legacy");
    let server = app(ApiKeyLayer::new(format, CachedVerifier::new(store)));
    for key in [&legacy, &old] {
        let response = send(&server, get_with("/whoami", Some(&format!("Bearer {key}")))).await;
        assert_eq!(response.status(), 200, "{key}");
    }
}
