-- The audit trail: append-only, hash-chained per account (see src/audit.rs). `seq`
-- orders an account's events. `changes` is TEXT, not JSONB: the exact JSON the hash
-- covers (JSONB would rewrite numbers and break the chain).
CREATE TABLE audit_events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    at          TIMESTAMPTZ NOT NULL,
    account_id  TEXT NOT NULL,
    environment TEXT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    key_id      TEXT NULL,
    changes     TEXT NOT NULL,
    client_ip   TEXT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);

CREATE INDEX audit_events_by_account ON audit_events (account_id, seq);
