-- Delivery receipts: what the carriers say happened after they accepted a message.
-- Two new final statuses on top of 'sent'. The constraint is added NOT VALID and validated
-- separately, so a large table is scanned without blocking writes.
ALTER TABLE messages DROP CONSTRAINT messages_status_known;
ALTER TABLE messages ADD CONSTRAINT messages_status_known
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'expired', 'rate_limited',
                      'delivered', 'undelivered')) NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_status_known;
ALTER TABLE messages ADD COLUMN receipt_at timestamptz;

-- A receipt names the carrier's message id, not ours.
CREATE INDEX messages_carrier_message_id ON messages (carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;

-- Every receipt as it arrived. One that names a message whose outcome is not written yet (the
-- carrier was faster than the batched outcome write) stays unapplied and is applied by the
-- periodic sweep.
CREATE TABLE delivery_receipts (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    carrier            text        NOT NULL,
    carrier_message_id text        NOT NULL,
    status             text        NOT NULL,
    error_code         text,
    received_at        timestamptz NOT NULL DEFAULT now(),
    applied            boolean     NOT NULL DEFAULT false
);

CREATE INDEX delivery_receipts_pending ON delivery_receipts (received_at) WHERE NOT applied;
