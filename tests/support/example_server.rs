//! Runs an example server's binary the way its README does: `PORT` and `DATABASE_URL`
//! (a fresh SQLite file) in the environment, `NAME=value` lines then `READY` on stdout,
//! Ctrl-C (SIGINT) to stop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::raw_http::{Client, Reply, raw_request};
use super::temp_db::TempDb;

pub struct ExampleServer {
    name: &'static str,
    child: Child,
    pub addr: SocketAddr,
    credentials: HashMap<String, String>,
    db: Option<Database>,
}

/// Where an example keeps its keys: a fresh SQLite file, or a `DATABASE_URL`.
pub enum Database {
    Sqlite(TempDb),
    Url(String),
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(latest)
        };
        latest = latest.max(modified);
    }
    latest
}

/// `target/<profile>/examples/<name>`. `cargo test` builds every example first; when the
/// binary is older than the sources (`cargo test --test …` alone), it is built now with
/// this test's features.
fn binary(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().unwrap().parent().unwrap();
    let path = profile.join("examples").join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = ["src", "examples", "Cargo.toml"]
        .iter()
        .map(|part| {
            let part = root.join(part);
            if part.is_dir() {
                newest(&part)
            } else {
                part.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }
        })
        .max()
        .unwrap();
    let built = path.metadata().and_then(|m| m.modified()).ok();
    if built.is_some_and(|built| built > sources) {
        return path;
    }
    let features: Vec<&str> = [
        (cfg!(feature = "axum"), "axum"),
        (cfg!(feature = "sqlite"), "sqlite"),
        (cfg!(feature = "postgres"), "postgres"),
        (cfg!(feature = "cli"), "cli"),
    ]
    .into_iter()
    .filter_map(|(on, feature)| on.then_some(feature))
    .collect();
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--no-default-features",
            "--example",
            name,
        ])
        .args(["--features", &features.join(",")]);
    if profile.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "cargo build --example {name} failed"
    );
    profile.join("examples").join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ExampleServer {
    /// Starts `name` on a fresh database and waits (at most 60 s) for `READY`.
    pub async fn start(name: &'static str) -> Self {
        Self::start_on(name, Database::Sqlite(TempDb::new(name))).await
    }

    /// Starts `name` with `DATABASE_URL=url`.
    pub async fn start_with_url(name: &'static str, url: String) -> Self {
        Self::start_on(name, Database::Url(url)).await
    }

    /// Stops the server with Ctrl-C and starts it again on the same database.
    pub async fn restart(mut self) -> Self {
        let db = self.db.take().unwrap();
        let name = self.name;
        assert!(self.interrupt().success());
        Self::start_on(name, db).await
    }

    async fn start_on(name: &'static str, db: Database) -> Self {
        let url = match &db {
            Database::Sqlite(file) => file.path().to_owned(),
            Database::Url(url) => url.clone(),
        };
        // The port is free when asked; if another process takes it before the server
        // binds, the server exits before READY and the next port is tried.
        for attempt in 1..=3 {
            let port = free_port();
            let mut server = ExampleServer {
                name,
                child: Command::new(binary(name))
                    .env("PORT", port.to_string())
                    .env("DATABASE_URL", &url)
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                credentials: HashMap::new(),
                db: None,
            };
            // Read on a thread of its own that drains stdout to the end, so the server
            // never writes into a closed pipe; the lines before READY come back.
            let stdout = server.child.stdout.take().unwrap();
            let (ready, lines) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut ready = Some(ready);
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "READY" {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(std::mem::take(&mut lines));
                        }
                    } else if ready.is_some() {
                        lines.push(line);
                    }
                }
            });
            // On a timeout or a panic, `server` is dropped: the process is killed.
            let lines = tokio::time::timeout(Duration::from_secs(60), lines)
                .await
                .unwrap_or_else(|_| panic!("{name} printed no READY within 60 s"));
            let Ok(lines) = lines else {
                assert!(attempt < 3, "{name} exited before READY, three times");
                continue;
            };
            server.credentials = lines
                .iter()
                .filter_map(|line| line.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            server.db = Some(db);
            return server;
        }
        unreachable!()
    }

    /// A `NAME=value` the server printed before `READY`.
    pub fn credential(&self, name: &str) -> String {
        self.credentials
            .get(name)
            .unwrap_or_else(|| {
                panic!(
                    "{} printed no {name}: {:?}",
                    self.name,
                    self.credentials.keys()
                )
            })
            .clone()
    }

    /// A client sending the printed credential `name` as its bearer token.
    pub fn client(&self, name: &str) -> Client {
        Client::new(self.addr, &self.credential(name))
    }

    /// One request with `Authorization: Bearer {token}` (if any) and extra header lines.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[&str],
        body: &str,
    ) -> Reply {
        let authorization = token.map(|token| format!("Authorization: Bearer {token}"));
        let mut headers: Vec<&[u8]> = extra.iter().map(|line| line.as_bytes()).collect();
        if let Some(line) = &authorization {
            headers.push(line.as_bytes());
        }
        if !body.is_empty() {
            headers.push(b"Content-Type: application/json");
        }
        raw_request(self.addr, method, path, &headers, body.as_bytes()).await
    }

    /// Ctrl-C, and the exit status (within 10 s).
    pub fn interrupt(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} ignored Ctrl-C", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
