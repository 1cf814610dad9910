-- Every accepted message: what it is, where it stands, and (until it is final) its body.
-- Wide and updated rarely: once when it is queued, once when it ends.
CREATE TABLE messages (
    id                 uuid        PRIMARY KEY,
    recipient          text        NOT NULL,
    body               text        NOT NULL,
    sender             text,
    client_ip          inet,
    user_agent         text,
    signer             text,
    status             text        NOT NULL DEFAULT 'queued',
    carrier            text,
    carrier_message_id text,
    attempts           integer     NOT NULL DEFAULT 0,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    sent_at            timestamptz,
    finished_at        timestamptz,
    CONSTRAINT messages_status_known
        CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'expired', 'rate_limited')),
    CONSTRAINT messages_finished_iff_final
        CHECK ((status IN ('queued', 'sending')) = (finished_at IS NULL))
);

-- Retention walks final rows by age; rows still in flight are not in this index.
CREATE INDEX messages_finished_at ON messages (finished_at) WHERE finished_at IS NOT NULL;

-- The hot queue: one narrow row per message that is not final yet, deleted when it ends.
-- A claim pushes run_at forward by the lease, so a crashed worker's message simply becomes
-- due again; no status column means no index churn on state changes. Autovacuum is tuned
-- to run on absolute row counts, because dead tuples at the head of the due index are what
-- slows SKIP LOCKED claims down (shared research, pgqueue.md §2).
CREATE TABLE message_queue (
    message_id  uuid        PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    run_at      timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    lease_token bigint
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 50000
);

CREATE INDEX message_queue_due ON message_queue (run_at, message_id);

-- One row per carrier call. Calls made in one dispatch attempt (failover) share `attempt`.
CREATE TABLE message_attempts (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id         uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    attempt            integer     NOT NULL,
    carrier            text        NOT NULL,
    outcome            text        NOT NULL,
    http_status        integer,
    error_code         text,
    error_message      text,
    latency_ms         integer,
    carrier_message_id text,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX message_attempts_message ON message_attempts (message_id, id);
