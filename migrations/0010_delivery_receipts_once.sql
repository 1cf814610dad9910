-- A carrier's report is recorded once: the carrier resending it (after a lost answer) or anyone
-- replaying a captured one adds no row and is not counted again. Earlier copies are folded
-- into the first (applied if any copy was).
UPDATE delivery_receipts d SET applied = true
FROM delivery_receipts o
WHERE o.carrier = d.carrier AND o.carrier_message_id = d.carrier_message_id
  AND o.status = d.status AND o.applied AND NOT d.applied;
DELETE FROM delivery_receipts d USING delivery_receipts o
WHERE o.carrier = d.carrier AND o.carrier_message_id = d.carrier_message_id
  AND o.status = d.status AND o.id < d.id;

CREATE UNIQUE INDEX delivery_receipts_once
    ON delivery_receipts (carrier, carrier_message_id, status);
