-- Window limits count events per time bucket instead of logging every event, so a decision
-- costs the same whatever a limit's max and traffic (src/limits/window.rs). `counts` holds
-- (window ms, bucket start ms, count) triples. The event logs of earlier versions (`hits`,
-- `sends`) are read once, turned into buckets by the first decision on their key, and then
-- emptied: an upgrade keeps every event the limits had counted.
ALTER TABLE ingress_hits ADD COLUMN counts bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE recipient_sends ADD COLUMN counts bigint[] NOT NULL DEFAULT '{}';

-- Set when a decision creates a key's row with its first event already counted, cleared by
-- the next one that locks it: a new key (most per-number keys) costs one insert, not an
-- insert and an update.
ALTER TABLE ingress_hits ADD COLUMN fresh boolean NOT NULL DEFAULT false;
ALTER TABLE recipient_sends ADD COLUMN fresh boolean NOT NULL DEFAULT false;
