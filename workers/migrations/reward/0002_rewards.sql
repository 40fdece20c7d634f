-- Rewards, wallets, the ledger of wallet entries and the reward budget. A reward is unique per
-- saga and a wallet entry unique per (reward, kind): no reward granted twice, no wallet
-- credited or debited twice for one reward.
CREATE TABLE rewards (
    id          uuid        PRIMARY KEY,
    saga_id     uuid        NOT NULL UNIQUE,
    mission_id  uuid        NOT NULL,
    customer_id text        NOT NULL,
    points      bigint      NOT NULL CHECK (points > 0),
    status      text        NOT NULL CHECK (status IN ('GRANTED', 'REVOKED')),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE wallets (
    customer_id text        PRIMARY KEY,
    balance     bigint      NOT NULL DEFAULT 0,
    frozen      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE wallet_entries (
    id          bigserial   PRIMARY KEY,
    customer_id text        NOT NULL,
    reward_id   uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('credit', 'debit')),
    points      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reward_id, kind)
);
CREATE INDEX wallet_entries_customer ON wallet_entries (customer_id, id DESC);

-- One row; remaining_points NULL means no limit.
CREATE TABLE budget (
    id               boolean     PRIMARY KEY DEFAULT true CHECK (id),
    remaining_points bigint      CHECK (remaining_points >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO budget (id, remaining_points) VALUES (true, NULL);
