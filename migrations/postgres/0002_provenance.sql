-- Who created a key, the end user it belongs to, and free-form metadata (JSON object).
ALTER TABLE api_keys
    ADD COLUMN created_by TEXT NULL,
    ADD COLUMN owner_id TEXT NULL,
    ADD COLUMN metadata JSONB NOT NULL DEFAULT '{}'::jsonb;
