-- The wallet's own commands book one entry per saga, step and direction (a re-sent command
-- books nothing new), record the balance after each entry, and never take a balance below
-- zero (checked under the wallet's row lock, and by this constraint; rows from before the
-- move are not re-checked). Entries are read newest first, keyset-paged by (created_at, id).
ALTER TABLE wallet_entries
    ADD COLUMN saga_id       uuid,
    ADD COLUMN step_index    smallint,
    ADD COLUMN balance_after bigint,
    ADD CONSTRAINT wallet_entries_one_per_saga_step UNIQUE (saga_id, step_index, kind);

CREATE INDEX wallet_entries_newest ON wallet_entries (customer_id, created_at DESC, id DESC);

ALTER TABLE wallets ADD CONSTRAINT wallets_balance_not_negative CHECK (balance >= 0) NOT VALID;
