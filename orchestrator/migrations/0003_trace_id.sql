-- The W3C trace id of each saga: every message of the saga carries it in `traceparent`, and the
-- API and the saga page link to it.
ALTER TABLE sagas ADD COLUMN trace_id text;
