-- Carriers an operator took out of service at runtime (POST /v1/carriers/{name}/disable).
-- Every worker process reads this table every second, so a switch reaches all of them.
CREATE TABLE carrier_states (
    carrier    text        PRIMARY KEY,
    disabled   boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
