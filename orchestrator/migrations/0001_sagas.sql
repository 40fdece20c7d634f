-- The orchestrator's tables. Every saga's live state is one `sagas` row (version-checked) plus
-- one `saga_steps` row per forward step and one `saga_compensations` row per compensation
-- recorded when its step succeeded; `inbox` deduplicates replies, `outbox` holds commands and
-- events until JetStream acknowledged them, `timers` holds each saga's one armed timer.

CREATE TYPE saga_state AS ENUM ('running', 'compensating', 'completed', 'compensated', 'failed');

CREATE TABLE sagas (
    id                 uuid PRIMARY KEY,
    saga_type          text        NOT NULL,
    definition_version integer     NOT NULL,
    state              saga_state  NOT NULL,
    input              jsonb       NOT NULL,
    context            jsonb       NOT NULL DEFAULT '{}',
    version            bigint      NOT NULL DEFAULT 0,
    idempotency_key    text        UNIQUE,
    request_hash       bytea,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX sagas_newest ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_state_newest ON sagas (state, created_at DESC, id DESC);

CREATE TABLE saga_steps (
    saga_id     uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    step_index  smallint    NOT NULL,
    name        text        NOT NULL,
    state       text        NOT NULL,
    attempts    integer     NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    last_error  text,
    PRIMARY KEY (saga_id, step_index)
);

CREATE TABLE saga_compensations (
    saga_id     uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    step_index  smallint    NOT NULL,
    name        text        NOT NULL,
    state       text        NOT NULL,
    attempts    integer     NOT NULL,
    run_order   integer,
    started_at  timestamptz,
    finished_at timestamptz,
    last_error  text,
    PRIMARY KEY (saga_id, step_index)
);

CREATE TABLE timers (
    saga_id    uuid        PRIMARY KEY REFERENCES sagas (id) ON DELETE CASCADE,
    kind       text        NOT NULL,
    step_index smallint    NOT NULL,
    phase      text        NOT NULL,
    attempt    integer     NOT NULL,
    due_at     timestamptz NOT NULL
);
CREATE INDEX timers_due ON timers (due_at);

CREATE TABLE inbox (
    message_id  uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_received ON inbox (received_at);

CREATE TABLE outbox (
    id         uuid        PRIMARY KEY,
    subject    text        NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created ON outbox (created_at);
