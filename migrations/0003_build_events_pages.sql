-- What the invocation list shows and filters on, as columns (so a page of
-- the list reads no summary JSON), and one row per test per finished
-- invocation: a test's history and the flakiness of tests over a window.

ALTER TABLE invocations ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN command TEXT NOT NULL DEFAULT '';
-- The target patterns, space-separated.
ALTER TABLE invocations ADD COLUMN patterns TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN exit_code_name TEXT NOT NULL DEFAULT '';
-- -1 while unknown.
ALTER TABLE invocations ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT -1;
ALTER TABLE invocations ADD COLUMN cache_hits BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN actions_executed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN target_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN failed_count BIGINT NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS test_runs (
    label TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    -- Bazel's overall TestStatus name.
    status TEXT NOT NULL,
    -- 1 when it failed and then passed within the invocation.
    flaky BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    cached BIGINT NOT NULL,
    -- The test target's outputs, hashed: equal fingerprints, equal inputs.
    fingerprint TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (label, invocation_id)
);

CREATE INDEX IF NOT EXISTS test_runs_by_label ON test_runs (label, started_at);
CREATE INDEX IF NOT EXISTS test_runs_by_start ON test_runs (started_at);
CREATE INDEX IF NOT EXISTS test_runs_by_invocation ON test_runs (invocation_id);
CREATE INDEX IF NOT EXISTS bes_events_by_kind ON bes_events (invocation_id, kind);
