-- The Bazel invocation that queued each job (RequestMetadata's
-- tool_invocation_id), so an invocation's page links to the actions it ran.

ALTER TABLE exec_jobs ADD COLUMN invocation_id TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS exec_jobs_invocation ON exec_jobs (invocation_id);
