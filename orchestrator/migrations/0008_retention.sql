-- no-transaction
-- Retention: finished sagas (completed, compensated, cancelled) are deleted with their steps,
-- compensations, timers and history once they are older than the retention period. This index
-- finds the oldest of them without a scan; it is built without blocking writes to a store that
-- already holds many sagas.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sagas_finished_oldest ON sagas (updated_at)
    WHERE state IN ('completed', 'compensated', 'cancelled');
