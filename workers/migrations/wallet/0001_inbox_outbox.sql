-- The worker's inbox (every command handled, with the reply it got, so that a redelivered
-- command re-sends the same reply and changes nothing) and its outbox (replies and domain
-- events until JetStream acknowledged them).
CREATE TABLE inbox (
    message_id    uuid        PRIMARY KEY,
    reply_subject text        NOT NULL,
    reply_headers jsonb       NOT NULL DEFAULT '{}',
    reply_payload bytea       NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_processed ON inbox (processed_at);

CREATE TABLE outbox (
    id         uuid        PRIMARY KEY,
    subject    text        NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created ON outbox (created_at);
