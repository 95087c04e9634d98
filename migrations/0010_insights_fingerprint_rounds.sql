-- The last action of each identity (see 0006) as one row per recording
-- round instead of one row per identity. A row per identity, keyed by a
-- random hash, touched a random page of its table and index for every
-- action written (a page each in the write-ahead log and again at the
-- checkpoint): most of the insights' cost on the action-cache write path.
-- Every pod now keeps the identities in memory, appends its rounds here
-- (one row each, at most every 200 ms) and reads the other pods' rounds
-- as they appear; a pod starting reads the newest rounds first.
CREATE TABLE IF NOT EXISTS action_fingerprint_rounds (
    round TEXT PRIMARY KEY,
    pod TEXT NOT NULL,
    -- JSON: [[identity, action hash/size, digest function, invocation, seen_at], ...]
    fingerprints TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS action_fingerprint_rounds_by_seen
    ON action_fingerprint_rounds (seen_at);

DROP TABLE IF EXISTS action_fingerprints;
