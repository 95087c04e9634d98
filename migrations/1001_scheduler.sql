-- The execution scheduler's jobs: one row per queued, running or finished
-- action. One schema for SQLite and PostgreSQL (TEXT, BIGINT, BYTEA).

CREATE TABLE IF NOT EXISTS exec_jobs (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    -- Digest function name, hash (hex) and size of the Action.
    action_function TEXT NOT NULL,
    action_hash TEXT NOT NULL,
    action_size BIGINT NOT NULL,
    -- The encoded Action leased to workers (timeout capped).
    action BYTEA NOT NULL,
    -- Required platform properties, canonical JSON.
    platform TEXT NOT NULL,
    priority BIGINT NOT NULL,
    do_not_cache BIGINT NOT NULL,
    -- Set while an unfinished cacheable job runs: identical Executes join it.
    merge_key TEXT UNIQUE,
    -- REAPI ExecutionStage: 2 queued, 3 executing, 4 completed.
    stage BIGINT NOT NULL,
    bot TEXT,
    lease_expires BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    cancelled BIGINT NOT NULL,
    queued_at BIGINT NOT NULL,
    ready_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    completed_at BIGINT NOT NULL,
    -- The encoded ExecuteResponse once completed.
    response BYTEA,
    trace TEXT NOT NULL,
    version BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS exec_jobs_queue ON exec_jobs (stage, instance, priority, ready_at);
CREATE INDEX IF NOT EXISTS exec_jobs_bot ON exec_jobs (bot);
CREATE INDEX IF NOT EXISTS exec_jobs_queued_at ON exec_jobs (queued_at);
