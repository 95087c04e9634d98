-- A bot's leases are found by (bot, stage): with an index on bot alone,
-- every renewal and every "what do I hold" read each finished job the bot
-- ever ran (a long-lived worker's whole history) to find the few running.
CREATE INDEX IF NOT EXISTS exec_jobs_bot_stage ON exec_jobs (bot, stage);
DROP INDEX IF EXISTS exec_jobs_bot;
