-- Rate limits (JSON array) and credits per key and per account. `credits` NULL: the
-- key (or account) spends none; `refilled_at` starts the refill schedule; a balance set
-- by hand moves `credits_epoch` on, so that leases taken before are not returned.
ALTER TABLE api_keys ADD COLUMN ratelimits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN credits INTEGER NULL;
ALTER TABLE api_keys ADD COLUMN refill TEXT NULL;
ALTER TABLE api_keys ADD COLUMN refilled_at INTEGER NULL;
ALTER TABLE api_keys ADD COLUMN credits_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN ratelimits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE accounts ADD COLUMN credits INTEGER NULL;
ALTER TABLE accounts ADD COLUMN refill TEXT NULL;
ALTER TABLE accounts ADD COLUMN refilled_at INTEGER NULL;
ALTER TABLE accounts ADD COLUMN credits_epoch INTEGER NOT NULL DEFAULT 0;
