//! A SQLite file in the temp directory, removed on drop.

pub struct TempDb(std::path::PathBuf);

impl TempDb {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tak-{name}-{}-{}.db",
            std::process::id(),
            rand_suffix()
        ));
        TempDb(path)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path()));
        }
    }
}

fn rand_suffix() -> String {
    tower_api_keys::key::KeyId::generate().as_str()[3..11].to_owned()
}
