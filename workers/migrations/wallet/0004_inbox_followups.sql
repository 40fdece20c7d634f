-- A handled command's other messages (its domain events, messages to other streams) are kept
-- in its inbox row with its reply, instead of outbox rows: they are published after commit and
-- the command is acknowledged only once JetStream has them all; a redelivered command
-- re-sends them from here with their same ids (JetStream drops the copies).
ALTER TABLE inbox ADD COLUMN followups jsonb NOT NULL DEFAULT '[]';
