-- Times are unix milliseconds (INTEGER); key_hash is the raw 32-byte SHA-256.
CREATE TABLE accounts (
    id             TEXT PRIMARY KEY,
    past_due_since INTEGER NULL,
    grace_days     INTEGER NOT NULL DEFAULT 7
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    project_id   TEXT NULL,
    name         TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    environment  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NULL,
    expires_at   INTEGER NULL,
    revoked_at   INTEGER NULL,
    restrictions TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX api_keys_active_by_account ON api_keys (account_id) WHERE revoked_at IS NULL;
