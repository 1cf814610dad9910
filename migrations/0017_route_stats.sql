-- What each route delivers, per carrier and destination country, per minute a message was
-- sent: the measurements of issue 26 (src/db/route_stats.rs). Each process adds what it saw
-- every few seconds, one upsert per (carrier, country, minute): no row is written per message,
-- so no busy country's row is one every send waits on. Receipts count in the minute their
-- message was sent, so a minute's counts say what became of its sends. Rows older than the
-- window are deleted by the retention sweep: the table holds carriers x countries x minutes
-- of the window at most.
CREATE TABLE route_stats (
    carrier          text        NOT NULL,
    -- ISO 3166-1 alpha-2, or 'ZZ' for a number of no country.
    country          text        NOT NULL,
    minute           timestamptz NOT NULL,
    sent             bigint      NOT NULL DEFAULT 0,
    delivered        bigint      NOT NULL DEFAULT 0,
    failed_route     bigint      NOT NULL DEFAULT 0,
    failed_recipient bigint      NOT NULL DEFAULT 0,
    -- Sum of the milliseconds from a send to its final receipt, over the receipts counted.
    receipt_ms_sum   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (carrier, country, minute)
);
