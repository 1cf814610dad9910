-- When the message was accepted, kept on the narrow queue row so the queue's oldest age can
-- be read at every metrics scrape without touching the wide messages table.
ALTER TABLE message_queue ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
