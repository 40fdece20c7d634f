-- The span id of the request that started the saga: every step attempt's span is its child.
ALTER TABLE sagas ADD COLUMN trace_root_span text;
