//! `SqliteStore`: the store contract, the active-key race, restarts.
#![cfg(feature = "sqlite")]

mod support;

use support::temp_db::TempDb;

use support::create::{NewKey, StoreForTests as _};
use tower_api_keys::key::{Environment, KeyFormat};
use tower_api_keys::store::{KeyStore, MemoryStore, SqliteStore};

async fn open(db: &TempDb) -> SqliteStore {
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let db = TempDb::new("contract");
    support::store_contract::basics(open(&db).await).await;
}

#[tokio::test]
async fn memory_keeps_the_store_contract() {
    support::store_contract::basics(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_limits_per_environment() {
    let db = TempDb::new("envs");
    support::store_contract::limit_per_environment(open(&db).await).await;
}

#[tokio::test]
async fn memory_limits_per_environment() {
    support::store_contract::limit_per_environment(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_provenance() {
    let db = TempDb::new("provenance");
    support::store_contract::provenance(open(&db).await).await;
}

#[tokio::test]
async fn memory_provenance() {
    support::store_contract::provenance(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_holds_the_limit_under_a_race() {
    let db = TempDb::new("race");
    support::store_contract::race_to_the_limit(open(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_holds_the_limit_under_a_race() {
    support::store_contract::race_to_the_limit(MemoryStore::new()).await;
}

#[tokio::test]
async fn keys_survive_a_restart_and_migrate_is_idempotent() {
    let db = TempDb::new("restart");
    let format = KeyFormat::new("sk");
    let created = {
        let store = open(&db).await;
        let created = store
            .create(&format, NewKey::new("acct", "kept", Environment::LIVE))
            .await
            .unwrap();
        store.pool().close().await;
        created
    };
    let store = open(&db).await;
    store.migrate().await.unwrap();
    let record = store
        .find_by_hash(&created.key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, created.info.id);
    assert_eq!(store.list("acct").await.unwrap().len(), 1);
}

#[tokio::test]
async fn only_the_hash_is_stored() {
    let db = TempDb::new("hash");
    let store = open(&db).await;
    let created = store
        .create(
            &KeyFormat::new("sk"),
            NewKey::new("acct", "k", Environment::LIVE),
        )
        .await
        .unwrap();
    store.pool().close().await;
    // The database file must exist and hold the key's row; the WAL may be gone after
    // the pool closed (checkpointed), but if it is there it is searched too.
    let bytes = std::fs::read(db.path()).expect("the database file exists");
    let wal = match std::fs::read(format!("{}-wal", db.path())) {
        Ok(wal) => wal,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("cannot read the WAL: {error}"),
    };
    let hash = created.key.hash();
    assert!(
        [&bytes, &wal]
            .iter()
            .any(|file| file.windows(32).any(|w| w == hash.as_bytes())),
        "the key's hash is on disk (so the search below looks at the right files)"
    );
    let secret = created.key.expose_secret().as_bytes();
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(secret.len()).any(|w| w == secret),
            "plaintext key found on disk"
        );
    }
}

#[tokio::test]
async fn sqlite_rotates_atomically() {
    let db = TempDb::new("replacement");
    support::store_contract::replacement(open(&db).await).await;
}

#[tokio::test]
async fn memory_rotates_atomically() {
    support::store_contract::replacement(MemoryStore::new()).await;
}
