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
