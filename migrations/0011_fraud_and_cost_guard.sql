-- The fraud and cost guard: each message's segments, encoding, destination country and
-- estimated cost (nullable: rows of older binaries have none), and the estimated spend per
-- UTC day, all countries together (scope '*') and per country, which the ingress locks and
-- decides the daily ceilings on.
ALTER TABLE messages
    ADD COLUMN segments smallint,
    ADD COLUMN encoding text,
    ADD COLUMN country text,
    ADD COLUMN estimated_cost_micros bigint;

CREATE TABLE spend_days (
    day          date        NOT NULL,
    scope        text        NOT NULL,
    spent_micros bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (day, scope)
);
