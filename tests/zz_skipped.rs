//! The last test binary of a `cargo test` run (they run in name order): prints how many
//! tests were skipped for want of PostgreSQL (or another service) in this run, and
//! which, so that a skip is never a silent `ok`.

mod support;

use std::io::Write;

#[test]
fn report_skipped_tests() {
    let path = support::skips::log_path();
    let log = match std::fs::read_to_string(&path) {
        Ok(log) => log,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    };
    let _ = std::fs::remove_file(&path);
    let skipped: Vec<&str> = log.lines().collect();
    let report = if skipped.is_empty() {
        "no test was skipped for want of a service\n".to_owned()
    } else {
        format!(
            "{} tests SKIPPED for want of a service:\n{}\n",
            skipped.len(),
            skipped.join("\n")
        )
    };
    // Past the harness's capture: this is the point of the test.
    let _ = std::io::stderr().write_all(report.as_bytes());
    if std::env::var("TOWER_API_KEYS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        assert!(skipped.is_empty(), "{report}");
    }
}
