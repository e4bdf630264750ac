-- Requests per key and hour by outcome (`accepted` or a rejection code), and the
-- client addresses that made them (the most frequent 20 per key and hour; the rest
-- under `other`). `hour` is the hour's start in unix milliseconds.
CREATE TABLE key_usage (
    key_id  TEXT NOT NULL,
    hour    INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, outcome)
);

CREATE TABLE key_usage_ips (
    key_id TEXT NOT NULL,
    hour   INTEGER NOT NULL,
    ip     TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, ip)
);
