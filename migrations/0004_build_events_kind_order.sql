-- One kind of an invocation's events in stream order (the invocation page's
-- build output, newest first, and its /log), read straight off the index:
-- with (invocation_id, kind) alone every page sorted all of that kind's
-- events (seconds for a 100,000-event build).
CREATE INDEX IF NOT EXISTS bes_events_by_kind_in_order
    ON bes_events (invocation_id, kind, component, build_id, sequence);
DROP INDEX IF EXISTS bes_events_by_kind;
