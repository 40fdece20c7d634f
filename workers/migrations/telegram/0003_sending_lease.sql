-- At most once to Telegram: before calling the Bot API the worker commits `sending` with a
-- lease. A redelivered command that finds a live lease waits; one that finds an expired lease
-- knows a worker died during the call, cannot know whether Telegram got the message, and does
-- not send it again (the notification ends `failed` with `telegram_delivery_unknown`).
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed'));
ALTER TABLE notifications ADD COLUMN sending_until timestamptz;
