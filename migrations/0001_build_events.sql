-- Build event streams, their events and invocation summaries. One schema for
-- SQLite and PostgreSQL: only types both accept (TEXT, BIGINT, BYTEA, which
-- SQLite stores as a blob).

CREATE TABLE IF NOT EXISTS bes_streams (
    build_id TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    component BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Highest sequence number stored: a reconnecting client resumes after it.
    last_sequence BIGINT NOT NULL,
    -- 1 once component_stream_finished arrived.
    finished BIGINT NOT NULL,
    PRIMARY KEY (build_id, invocation_id, component)
);

CREATE TABLE IF NOT EXISTS bes_events (
    build_id TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    component BIGINT NOT NULL,
    sequence BIGINT NOT NULL,
    -- The build_event_stream id variant (e.g. target_completed), or the
    -- google.devtools.build.v1 event kind for other events.
    kind TEXT NOT NULL,
    -- The target label the event is about, if any.
    label TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    -- The OrderedBuildEvent's BuildEvent, encoded as received.
    payload BYTEA NOT NULL,
    PRIMARY KEY (build_id, invocation_id, component, sequence)
);

CREATE TABLE IF NOT EXISTS invocations (
    invocation_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    user_name TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- The invocation summary as JSON.
    summary TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS invocations_by_start ON invocations (started_at);
