-- The full history of every saga: each attempt of each step and compensation (when it was sent,
-- re-sent and how it ended) and each operator action (who, what, with which input, and whether
-- the saga took it). Rows are written by the same statement as the saga change they describe
-- and never changed afterwards; they go when their saga goes.
CREATE TABLE saga_history (
    saga_id uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    id      bigint      GENERATED ALWAYS AS IDENTITY,
    at      timestamptz NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('step_started', 'step_ended',
                            'compensation_started', 'compensation_ended', 'operator')),
    step    text,
    phase   text,
    attempt integer,
    outcome text,
    error   text,
    actor   text,
    action  text,
    input   jsonb,
    -- one index serves both the write and the keyset page of one saga (oldest first)
    PRIMARY KEY (saga_id, id)
);

-- Append-only: a row may be added, and removed with its saga, but never rewritten.
CREATE FUNCTION saga_history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'saga_history is append-only';
END
$$;
CREATE TRIGGER saga_history_append_only BEFORE UPDATE ON saga_history
    FOR EACH ROW EXECUTE FUNCTION saga_history_is_append_only();
