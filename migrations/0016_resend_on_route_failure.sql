-- A delivery receipt that reports a route failure sends the code again through a carrier of
-- its route that has not carried it (src/db/receipts.rs, docs/carriers.md "Why a message was
-- not delivered").
--
-- `carried_by`: the carriers that took the message (or may have: a call without an answer)
-- in earlier sends; a resend never goes through them again.
ALTER TABLE messages ADD COLUMN carried_by text[];

-- A sent message keeps its body while a resend is still possible (another carrier left, time
-- left): the resend needs the code. This index finds the bodies to erase once that time has
-- passed, and the sends whose carrier stayed silent too long; it holds only sent messages still
-- waiting for their receipt, a few minutes of traffic.
CREATE INDEX messages_awaiting_receipt ON messages (expires_at)
    WHERE status = 'sent' AND body <> '';

-- What each send's receipt said: the status API shows why a message moved on to another
-- carrier.
ALTER TABLE message_attempts ADD COLUMN receipt_status text;
ALTER TABLE message_attempts ADD COLUMN receipt_failure text;
ALTER TABLE message_attempts ADD COLUMN receipt_error_code text;
ALTER TABLE message_attempts ADD COLUMN receipt_at timestamptz;

-- The class of a stored report's failure ('route' or 'recipient'), so a report kept until its
-- message's send is written can still start a resend.
ALTER TABLE delivery_receipts ADD COLUMN failure text;
