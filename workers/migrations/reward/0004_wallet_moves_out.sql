-- The wallet is a bounded context of its own now (schema "wallet"): move every balance and
-- every ledger entry there, then drop the tables here. The wallet's migration 0002 creates the
-- same tables under the same lock when it runs first; balances it already holds are added to,
-- never overwritten.
SELECT pg_advisory_xact_lock(hashtext('schema:wallet'));
CREATE SCHEMA IF NOT EXISTS wallet;
SELECT pg_advisory_xact_lock(hashtext('wallet-tables'));

CREATE TABLE IF NOT EXISTS wallet.wallets (
    customer_id text        PRIMARY KEY,
    balance     bigint      NOT NULL DEFAULT 0,
    frozen      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS wallet.wallet_entries (
    id          bigserial   PRIMARY KEY,
    customer_id text        NOT NULL,
    reward_id   uuid,
    kind        text        NOT NULL CHECK (kind IN ('credit', 'debit')),
    points      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reward_id, kind)
);

INSERT INTO wallet.wallets AS w (customer_id, balance, frozen, updated_at)
SELECT customer_id, balance, frozen, updated_at FROM wallets
ON CONFLICT (customer_id) DO UPDATE
    SET balance = w.balance + excluded.balance,
        frozen = w.frozen OR excluded.frozen,
        updated_at = greatest(w.updated_at, excluded.updated_at);

INSERT INTO wallet.wallet_entries (customer_id, reward_id, kind, points, created_at)
SELECT customer_id, reward_id, kind, points, created_at FROM wallet_entries ORDER BY id
ON CONFLICT (reward_id, kind) DO NOTHING;

DROP TABLE wallet_entries;
DROP TABLE wallets;
