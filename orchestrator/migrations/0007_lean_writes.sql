-- Fewer writes per step.
--
-- Replies need no inbox: the state machine applies only the answer to the attempt in flight,
-- so a duplicate, late or replayed reply is ignored by the saga itself.
DROP TABLE inbox;

-- The child rows of a saga are written with every step; a foreign key costs a trigger and a
-- row lock on the saga per written row. Sagas are removed only by the retention sweep, which
-- removes their children in the same statement.
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_saga_id_fkey;
ALTER TABLE saga_compensations DROP CONSTRAINT saga_compensations_saga_id_fkey;
ALTER TABLE timers DROP CONSTRAINT timers_saga_id_fkey;
ALTER TABLE saga_history DROP CONSTRAINT saga_history_saga_id_fkey;

-- Room on every page for a saga's next version, so that a step's update (no indexed column
-- changes) stays on the page and touches no index (a HOT update).
ALTER TABLE sagas SET (fillfactor = 75);
ALTER TABLE saga_steps SET (fillfactor = 75);
ALTER TABLE timers SET (fillfactor = 75);
