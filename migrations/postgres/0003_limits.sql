-- Rate limits (JSON array) and credits per key and per account. `credits` NULL: the
-- key (or account) spends none; `refilled_at` starts the refill schedule; a balance set
-- by hand moves `credits_epoch` on, so that leases taken before are not returned.
ALTER TABLE api_keys
    ADD COLUMN ratelimits JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN credits BIGINT NULL CHECK (credits >= 0),
    ADD COLUMN refill JSONB NULL,
    ADD COLUMN refilled_at TIMESTAMPTZ NULL,
    ADD COLUMN credits_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts
    ADD COLUMN ratelimits JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN credits BIGINT NULL CHECK (credits >= 0),
    ADD COLUMN refill JSONB NULL,
    ADD COLUMN refilled_at TIMESTAMPTZ NULL,
    ADD COLUMN credits_epoch BIGINT NOT NULL DEFAULT 0;
