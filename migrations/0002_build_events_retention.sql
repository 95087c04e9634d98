-- Event queries by invocation and retention by age, without scans.
CREATE INDEX IF NOT EXISTS bes_events_by_invocation ON bes_events (invocation_id);
CREATE INDEX IF NOT EXISTS invocations_by_update ON invocations (updated_at);
CREATE INDEX IF NOT EXISTS bes_streams_by_creation ON bes_streams (created_at);
