-- Idempotency keys of accepted requests (an `Idempotency-Key` header, or one derived from an
-- Auth0 Action's notification): a retried request finds its key and gets the first message's
-- id instead of a second message. Keys are kept for a bounded window (retention deletes older
-- ones), so the table stays small and a key can be reused much later.
CREATE TABLE idempotency_keys (
    key        text        PRIMARY KEY,
    message_id uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
