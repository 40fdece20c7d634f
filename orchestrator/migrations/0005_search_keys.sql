-- What a saga can be searched by, generically: the search keys its definition declares
-- (`customer_id`, `mission_id`, ...), written by the orchestrator with every change of the saga
-- and matched with `search_keys @> '{"customer_id": "..."}'` through one GIN index. They replace
-- the expression indexes on fields of the mission-reward saga.
ALTER TABLE sagas ADD COLUMN search_keys jsonb NOT NULL DEFAULT '{}';

-- The keys of the sagas written before: mission_reward (the only type until now) declares
-- `customer_id` from its context and `mission_id` from its input.
UPDATE sagas
SET search_keys = jsonb_strip_nulls(jsonb_build_object(
        'customer_id', context ->> 'customer_id',
        'mission_id', input ->> 'mission_id'))
WHERE saga_type = 'mission_reward';

CREATE INDEX sagas_search_keys ON sagas USING gin (search_keys jsonb_path_ops);

DROP INDEX IF EXISTS sagas_customer;
DROP INDEX IF EXISTS sagas_mission;
