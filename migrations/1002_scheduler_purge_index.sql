-- Purging finished jobs reads only the old ones, not every finished job.
CREATE INDEX IF NOT EXISTS exec_jobs_completed_at ON exec_jobs (completed_at);
