-- The Mypage view (CQRS read model) on PostgreSQL, in the schema `mypage`. Every table is keyed
-- by the generation of the view, so that a rebuild fills a new generation while reads keep
-- following the serving one; see workers/src/mypage/mod.rs for the protocol.

CREATE TABLE mypage_generations (
    generation      bigint      PRIMARY KEY,
    state           text        NOT NULL CHECK (state IN ('building', 'serving', 'retired', 'dropped')),
    -- The last DOMAIN_EVT stream sequence applied to this generation (or skipped as unknown or
    -- garbage): a message at or below it changes nothing.
    applied_through bigint      NOT NULL DEFAULT 0,
    -- Messages a rebuild replayed into it.
    replayed        bigint      NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz
);

-- At most one generation builds at a time.
CREATE UNIQUE INDEX mypage_generations_one_building ON mypage_generations (state)
    WHERE state = 'building';

-- One row: which generation reads see. Every projection transaction locks it first.
CREATE TABLE mypage_view (
    id                    smallint PRIMARY KEY CHECK (id = 1),
    serving_generation    bigint   NOT NULL REFERENCES mypage_generations (generation),
    -- Garbage on DOMAIN_EVT up to this sequence has been dead-lettered (once, whatever the
    -- generation).
    dead_lettered_through bigint   NOT NULL DEFAULT 0
);

INSERT INTO mypage_generations (generation, state, started_at) VALUES (1, 'serving', now());
INSERT INTO mypage_view (id, serving_generation) VALUES (1, 1);

-- One row per mission (kind 'mission', item_id = the mission id) and per gift exchange (kind
-- 'gift', item_id = the exchange's saga id). The *_version columns hold the version of the event
-- that last wrote a field group (see workers/src/mypage/view.rs).
CREATE TABLE mypage_rows (
    generation           bigint      NOT NULL,
    kind                 text        NOT NULL CHECK (kind IN ('mission', 'gift')),
    item_id              uuid        NOT NULL,
    customer_id          text,
    mission_status       text,
    reward_id            uuid,
    reward_points        bigint,
    telegram_id          uuid,
    notification_status  text,
    telegram_message_id  bigint,
    gift_id              uuid,
    gift_name            text,
    voucher_code         text,
    gift_status          text,
    exchange_state       text,
    updated_at           timestamptz NOT NULL,
    mission_version      text,
    reward_version       text,
    notification_version text,
    PRIMARY KEY (generation, kind, item_id)
);

CREATE INDEX mypage_rows_by_customer ON mypage_rows (generation, customer_id, item_id, kind);
CREATE INDEX mypage_rows_by_reward ON mypage_rows (generation, reward_id) WHERE reward_id IS NOT NULL;
CREATE INDEX mypage_rows_by_telegram ON mypage_rows (generation, telegram_id) WHERE telegram_id IS NOT NULL;

-- A customer's balance as last projected.
CREATE TABLE mypage_wallets (
    generation  bigint      NOT NULL,
    customer_id text        NOT NULL,
    balance     bigint      NOT NULL,
    version     text        NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (generation, customer_id)
);
