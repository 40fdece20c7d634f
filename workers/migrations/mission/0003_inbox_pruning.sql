-- Inbox rows are pruned by age.
CREATE INDEX inbox_processed ON inbox (processed_at);
