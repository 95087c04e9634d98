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

-- One row per missed action. `causes` is a JSON array of at most a few
-- short causes (see `insights::diff::Cause`).
CREATE TABLE IF NOT EXISTS action_misses (
    invocation TEXT NOT NULL,
    instance TEXT NOT NULL,
    action_digest TEXT NOT NULL,
    target TEXT NOT NULL,
    mnemonic TEXT NOT NULL,
    -- The earlier action of the same identity, and who wrote its result
    -- (both empty for a new action).
    previous_digest TEXT NOT NULL,
    previous_invocation TEXT NOT NULL,
    causes TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (invocation, instance, action_digest)
);

CREATE INDEX IF NOT EXISTS action_misses_by_seen ON action_misses (seen_at);
