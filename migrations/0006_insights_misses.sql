-- Why actions missed the cache. Each action whose result is written where
-- none was cached leaves a fingerprint under its identity across builds
-- (instance, target, mnemonic and output paths, hashed). When a later
-- action of the same identity has another digest, what differs is
-- recorded as a miss of the invocation that wrote the later result.
CREATE TABLE IF NOT EXISTS action_fingerprints (
    -- SHA-256 of the identity, hex.
    identity TEXT PRIMARY KEY,
    -- The last action of the identity (hash/size) and who wrote its result.
    action_digest TEXT NOT NULL,
    invocation TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS action_fingerprints_by_seen ON action_fingerprints (seen_at);

-- Missed actions with their causes, as chunks: each time the background
-- task stores what it explained (at most every 200 ms), one row per
-- invocation holds those misses as a JSON array (see
-- `insights::misses::Miss`), so a busy server writes a few rows a second,
-- not one per action.
CREATE TABLE IF NOT EXISTS action_miss_chunks (
    invocation TEXT NOT NULL,
    chunk TEXT NOT NULL,
    misses TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (invocation, chunk)
);

CREATE INDEX IF NOT EXISTS action_miss_chunks_by_seen ON action_miss_chunks (seen_at);
