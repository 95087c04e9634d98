-- Where an invocation's sources came from (REPO_URL, BRANCH_NAME from
-- --build_metadata or the workspace status), for the lists' and trends'
-- filters, and every --build_metadata pair, filtered by name and value.
ALTER TABLE invocations ADD COLUMN repository TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN branch TEXT NOT NULL DEFAULT '';

CREATE TABLE IF NOT EXISTS invocation_metadata (
    invocation_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (invocation_id, name)
);

CREATE INDEX IF NOT EXISTS invocation_metadata_by_pair ON invocation_metadata (name, value);
