-- A carrier's report is recorded once: the carrier resending it (after a lost answer) or anyone
-- replaying a captured one adds no row and is not counted again.
--
-- Earlier copies are folded into the first (applied if any copy was), in one pass each
-- (window functions, not a self-join: a report replayed thousands of times must not make this
-- quadratic). Receipts naming an id longer than any carrier's (smsgate now refuses those at the
-- callback) go first: they match no message, and would not fit the index.
DELETE FROM delivery_receipts WHERE octet_length(carrier_message_id) > 255;

WITH copies AS (
    SELECT id,
           row_number() OVER (PARTITION BY carrier, carrier_message_id, status ORDER BY id)
               AS copy,
           bool_or(applied) OVER (PARTITION BY carrier, carrier_message_id, status)
               AS any_applied
    FROM delivery_receipts
), first_copies AS (
    UPDATE delivery_receipts d SET applied = true
    FROM copies c
    WHERE c.id = d.id AND c.copy = 1 AND c.any_applied AND NOT d.applied
)
DELETE FROM delivery_receipts d USING copies c WHERE c.id = d.id AND c.copy > 1;

CREATE UNIQUE INDEX delivery_receipts_once
    ON delivery_receipts (carrier, carrier_message_id, status);
