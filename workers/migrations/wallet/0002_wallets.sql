-- Wallets and their ledger, as the reward context kept them before the wallet became a context
-- of its own. The reward context's migration 0004 moves its rows here; whichever of the two
-- migrations runs first creates these tables (the same statements, under the same lock), so
-- the order in which the services start does not matter.
SELECT pg_advisory_xact_lock(hashtext('wallet-tables'));

CREATE TABLE IF NOT EXISTS wallets (
    customer_id text        PRIMARY KEY,
    balance     bigint      NOT NULL DEFAULT 0,
    frozen      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS wallet_entries (
    id          bigserial   PRIMARY KEY,
    customer_id text        NOT NULL,
    reward_id   uuid,
    kind        text        NOT NULL CHECK (kind IN ('credit', 'debit')),
    points      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reward_id, kind)
);
