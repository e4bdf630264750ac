//! Tests skipped for want of a service (PostgreSQL, Redis), made visible: each skip is
//! written to stderr past the harness's capture and appended to a log of this
//! `cargo test` run (keyed by the cargo process that runs every test binary), which
//! `tests/zz_skipped.rs`, the last test binary, counts and prints.

use std::io::Write;
use std::path::PathBuf;

/// The skip log of this `cargo test` run: named by the cargo process that runs every
/// test binary, its pid and its start time (a later cargo with the same pid is another
/// run).
pub fn log_path() -> PathBuf {
    let parent = std::os::unix::process::parent_id();
    // Field 22 of /proc/<pid>/stat, after the parenthesised command name.
    let started = std::fs::read_to_string(format!("/proc/{parent}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19).map(str::to_owned))
        })
        .unwrap_or_default();
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("skipped-{parent}-{started}.log"))
}

/// Records that `test` was skipped, and why.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}\n");
    // Written past the test harness's capture, so `cargo test` shows it.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())
    {
        let _ = log.write_all(line.as_bytes());
    }
}
