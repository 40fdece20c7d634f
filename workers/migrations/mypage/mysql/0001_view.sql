-- The Mypage view (CQRS read model) on MariaDB 10.11. Every table is keyed by the generation of
-- the view, so that a rebuild fills a new generation while reads keep following the serving one;
-- see workers/src/mypage/mod.rs for the protocol. Uuids are CHAR(36) and ids compare bytewise
-- (ascii_bin), so that keyset pages run in the same order as on PostgreSQL; times are UTC.

CREATE TABLE mypage_generations (
    generation      BIGINT      NOT NULL PRIMARY KEY,
    state           VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL
                    CHECK (state IN ('building', 'serving', 'retired', 'dropped')),
    -- The last DOMAIN_EVT stream sequence applied to this generation (or skipped as unknown or
    -- garbage): a message at or below it changes nothing.
    applied_through BIGINT      NOT NULL DEFAULT 0,
    -- Messages a rebuild replayed into it.
    replayed        BIGINT      NOT NULL DEFAULT 0,
    started_at      DATETIME(6) NOT NULL,
    finished_at     DATETIME(6) NULL
) ENGINE = InnoDB;

-- One row: which generation reads see. Every projection transaction locks it first.
CREATE TABLE mypage_view (
    id                    SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    serving_generation    BIGINT   NOT NULL,
    -- Garbage on DOMAIN_EVT up to this sequence has been dead-lettered (once, whatever the
    -- generation).
    dead_lettered_through BIGINT   NOT NULL DEFAULT 0,
    CONSTRAINT mypage_view_serving FOREIGN KEY (serving_generation)
        REFERENCES mypage_generations (generation)
) ENGINE = InnoDB;

INSERT INTO mypage_generations (generation, state, started_at) VALUES (1, 'serving', UTC_TIMESTAMP(6));
INSERT INTO mypage_view (id, serving_generation) VALUES (1, 1);

-- One row per mission (kind 'mission', item_id = the mission id) and per gift exchange (kind
-- 'gift', item_id = the exchange's saga id). The *_version columns hold the version of the event
-- that last wrote a field group (see workers/src/mypage/view.rs).
CREATE TABLE mypage_rows (
    generation           BIGINT       NOT NULL,
    kind                 VARCHAR(8)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    item_id              CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    customer_id          VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    mission_status       VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    reward_id            CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NULL,
    reward_points        BIGINT       NULL,
    telegram_id          CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NULL,
    notification_status  VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    telegram_message_id  BIGINT       NULL,
    gift_id              CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NULL,
    gift_name            VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    voucher_code         VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    gift_status          VARCHAR(32)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    exchange_state       VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    updated_at           DATETIME(6)  NOT NULL,
    mission_version      VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    reward_version       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    notification_version VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    PRIMARY KEY (generation, kind, item_id),
    KEY mypage_rows_by_customer (generation, customer_id, item_id, kind),
    KEY mypage_rows_by_reward (generation, reward_id),
    KEY mypage_rows_by_telegram (generation, telegram_id)
) ENGINE = InnoDB;

-- A customer's balance as last projected.
CREATE TABLE mypage_wallets (
    generation  BIGINT      NOT NULL,
    customer_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance     BIGINT      NOT NULL,
    version     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    updated_at  DATETIME(6) NOT NULL,
    PRIMARY KEY (generation, customer_id)
) ENGINE = InnoDB;
