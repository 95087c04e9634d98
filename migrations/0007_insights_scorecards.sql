-- Cache scorecards: what each invocation's calls hit, missed, uploaded and
-- moved (see `insights::scorecard`). Each pod writes its own card of an
-- invocation (a fresh card id whenever it starts counting one), and a read
-- sums the rows. `scorecard` is the card as JSON.
CREATE TABLE IF NOT EXISTS invocation_scorecards (
    invocation TEXT NOT NULL,
    card TEXT NOT NULL,
    scorecard TEXT NOT NULL,
    -- The card's hits and hits + misses, for sums over many invocations.
    hits BIGINT NOT NULL,
    lookups BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (invocation, card)
);

CREATE INDEX IF NOT EXISTS invocation_scorecards_by_updated ON invocation_scorecards (updated_at);
