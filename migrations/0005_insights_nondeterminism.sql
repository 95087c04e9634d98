-- Outputs on which two successful results of one action disagreed: the
-- action is not deterministic. One row per differing output (at most 32 per
-- pair of results), named by the target and the invocations that wrote the
-- two results (empty when not known: the earlier result may predate this
-- server's memory of who wrote it).
CREATE TABLE IF NOT EXISTS nondeterministic_outputs (
    instance TEXT NOT NULL,
    -- The action digest, hash/size.
    action_digest TEXT NOT NULL,
    output_path TEXT NOT NULL,
    -- hash/size of a file or a directory's tree, "-> target" of a symlink,
    -- or empty when that result had no such output.
    before_value TEXT NOT NULL,
    after_value TEXT NOT NULL,
    target TEXT NOT NULL,
    mnemonic TEXT NOT NULL,
    before_invocation TEXT NOT NULL,
    after_invocation TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (instance, action_digest, output_path, before_value, after_value)
);

CREATE INDEX IF NOT EXISTS nondeterministic_by_seen ON nondeterministic_outputs (seen_at);
CREATE INDEX IF NOT EXISTS nondeterministic_by_after ON nondeterministic_outputs (after_invocation);
CREATE INDEX IF NOT EXISTS nondeterministic_by_before ON nondeterministic_outputs (before_invocation);
