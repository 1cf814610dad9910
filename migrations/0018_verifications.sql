-- A login completed with a phone code (issue 26, part 3): POST /v1/verifications names the
-- number, and smsgate marks that number's newest message sent within its code's life
-- (src/db/verifications.rs). The index holds sent messages only: a final message that no
-- carrier took is never attributed, and the ingress's inserts do not pay for it.
ALTER TABLE messages ADD COLUMN verified_at timestamptz;
CREATE INDEX messages_sent_recipient ON messages (recipient, sent_at) WHERE sent_at IS NOT NULL;

-- The logins each route's sends led to, counted in the minute of the send.
ALTER TABLE route_stats ADD COLUMN verified bigint NOT NULL DEFAULT 0;
