-- Sliding-window logs of the ingress's limits (`[[limits.ip]]`, `[[limits.ingress_recipient]]`),
-- one row per key ("ip:<address or /64>", "to:<E.164>"). The ingress's insert transaction locks
-- the rows of its batch in key order, so the limits hold exactly across processes. `hits` are
-- epoch milliseconds (database clock) within the longest configured window.
CREATE TABLE ingress_hits (
    key        text     PRIMARY KEY,
    hits       bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);

CREATE INDEX ingress_hits_updated_at ON ingress_hits (updated_at);
