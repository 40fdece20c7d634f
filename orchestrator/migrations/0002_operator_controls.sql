-- Operator controls and deadlines: a `cancelled` end state, the reason a saga stopped going
-- forward, a deadline timer beside the step timer (one timer per slot), the attempt count an
-- operator retry starts a fresh budget from, and indexes for the list filters.
ALTER TYPE saga_state ADD VALUE IF NOT EXISTS 'cancelled';

ALTER TABLE sagas ADD COLUMN stop_reason text;

ALTER TABLE timers ADD COLUMN slot text NOT NULL DEFAULT 'step';
ALTER TABLE timers DROP CONSTRAINT timers_pkey;
ALTER TABLE timers ADD PRIMARY KEY (saga_id, slot);

ALTER TABLE saga_steps ADD COLUMN retry_base integer NOT NULL DEFAULT 0;
ALTER TABLE saga_compensations ADD COLUMN retry_base integer NOT NULL DEFAULT 0;

CREATE INDEX sagas_type_newest ON sagas (saga_type, created_at DESC, id DESC);
CREATE INDEX sagas_customer ON sagas ((context ->> 'customer_id'));
CREATE INDEX sagas_mission ON sagas ((input ->> 'mission_id'));
