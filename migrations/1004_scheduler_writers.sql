-- The target and the action's mnemonic the client named when it queued each
-- job (RequestMetadata), so the result's writer is known when it is stored
-- (insights: nondeterministic actions name their target).

ALTER TABLE exec_jobs ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE exec_jobs ADD COLUMN mnemonic TEXT NOT NULL DEFAULT '';
