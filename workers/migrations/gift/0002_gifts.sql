-- The gift catalogue and the reservations of the `gift_exchange` saga.
--
-- `stock` is what is left to exchange. A reservation takes one with a single
-- `UPDATE ... SET stock = stock - 1 WHERE stock > 0`, so the stock never goes below zero under
-- any concurrency; a release gives it back once.
CREATE TABLE gifts (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    price_points bigint      NOT NULL CHECK (price_points BETWEEN 1 AND 1000000),
    stock        bigint      NOT NULL CHECK (stock >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One reservation per saga: the key that makes `gift.reserve`, `gift.release` and `gift.issue`
-- idempotent, whatever the inbox forgot. The name and price are those at reservation time.
-- `status`: reserved (one taken from the stock), released (given back by the compensation) or
-- issued (the voucher exists: the exchange stands).
CREATE TABLE reservations (
    saga_id      uuid        PRIMARY KEY,
    gift_id      uuid        NOT NULL REFERENCES gifts (id),
    customer_id  text        NOT NULL,
    gift_name    text        NOT NULL,
    price_points bigint      NOT NULL,
    status       text        NOT NULL CHECK (status IN ('reserved', 'released', 'issued')),
    voucher_code text        UNIQUE,
    reserved_at  timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    issued_at    timestamptz,
    CHECK ((status = 'issued') = (voucher_code IS NOT NULL))
);
CREATE INDEX reservations_gift ON reservations (gift_id);
