-- Requests per key and hour by outcome (`accepted` or a rejection code), and the
-- client addresses that made them (the most frequent 20 per key and hour; the rest
-- under `other`).
CREATE TABLE key_usage (
    key_id  TEXT NOT NULL,
    hour    TIMESTAMPTZ NOT NULL,
    outcome TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, outcome)
);

CREATE TABLE key_usage_ips (
    key_id TEXT NOT NULL,
    hour   TIMESTAMPTZ NOT NULL,
    ip     TEXT NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, ip)
);
