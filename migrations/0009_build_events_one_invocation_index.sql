-- Every stored event updated four B-trees: the table, its primary key, and
-- two indexes that both begin with invocation_id. bes_events_by_kind_in_order
-- (invocation_id, kind, ...) answers every `WHERE invocation_id = ?` the
-- single-column index did (the event list, the purge), so that one goes:
-- one B-tree fewer per event on the build-event write path.
DROP INDEX IF EXISTS bes_events_by_invocation;
