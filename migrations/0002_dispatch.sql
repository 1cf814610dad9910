-- A message passes the per-recipient limits once; its retries do not count again.
ALTER TABLE message_queue ADD COLUMN admitted boolean NOT NULL DEFAULT false;

-- Sliding-window log of sends per recipient, shared by every process: the claim transaction
-- locks the recipient's row, so limits hold exactly however many processes dispatch.
-- `sends` holds epoch milliseconds (database clock) within the longest configured window.
CREATE TABLE recipient_sends (
    recipient  text     PRIMARY KEY,
    sends      bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);

CREATE INDEX recipient_sends_updated_at ON recipient_sends (updated_at);
