-- The Telegram chat each customer linked, and every notification the worker was asked to send.
-- A notification is unique per saga: a re-sent or retried `telegram.send` finds its row and
-- never messages the customer twice once Telegram accepted the message.
CREATE TABLE chats (
    customer_id text        PRIMARY KEY,
    chat_id     bigint      NOT NULL CHECK (chat_id <> 0),
    linked_at   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- `status`: pending (not sent yet; the last attempt, if any, failed in a way another attempt
-- may fix), sent (Telegram accepted it: `telegram_message_id`, `sent_at`) or failed (for good).
-- `attempts` counts the calls made to the Bot API; `last_error` is `<code>: <detail>` (or just
-- `<code>`) of the latest failure.
CREATE TABLE notifications (
    id                  uuid        PRIMARY KEY,
    saga_id             uuid        NOT NULL UNIQUE,
    mission_id          uuid        NOT NULL,
    customer_id         text        NOT NULL,
    chat_id             bigint,
    text                text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    telegram_message_id bigint,
    attempts            int         NOT NULL DEFAULT 0,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);
CREATE INDEX notifications_customer ON notifications (customer_id, created_at DESC);
