-- Missions of a customer. `saga_id` is the saga that completed the mission: every step of that
-- saga is idempotent against it.
CREATE TABLE missions (
    id                  uuid        PRIMARY KEY,
    customer_id         text        NOT NULL,
    title               text        NOT NULL,
    reward_points       bigint      NOT NULL CHECK (reward_points > 0),
    status              text        NOT NULL CHECK (status IN ('OPEN', 'COMPLETED', 'REWARDED')),
    on_hold             boolean     NOT NULL DEFAULT false,
    saga_id             uuid,
    reward_id           uuid,
    notification_id     uuid,
    notification_status text,
    message_recorded_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX missions_customer ON missions (customer_id);
