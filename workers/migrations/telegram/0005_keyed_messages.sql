-- A notification no longer needs a mission, nor a saga: `POST /v1/telegram/messages` and the
-- `notify.telegram` queue send messages keyed by the caller's `idempotency_key` (unique), so
-- that a repeat under the same key answers the stored outcome and never messages twice.
-- Every notification has one of the two keys: a saga (the `telegram.send` step) or an
-- idempotency key.
ALTER TABLE notifications ALTER COLUMN mission_id DROP NOT NULL;
ALTER TABLE notifications ALTER COLUMN saga_id DROP NOT NULL;
ALTER TABLE notifications ADD COLUMN idempotency_key text UNIQUE;
ALTER TABLE notifications ADD CONSTRAINT notifications_keyed
    CHECK (saga_id IS NOT NULL OR idempotency_key IS NOT NULL);
