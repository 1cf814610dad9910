-- An idempotency key can never point at nothing: it goes when its message goes (retention at
-- any `retention.days`, 0 included). Before this, a key outliving its message made a repeated
-- request fail for its whole ingress batch. Keys whose message is already gone are dropped
-- first; a repeat of one is then a new message, as after the key's own expiry.
DELETE FROM idempotency_keys k WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = k.message_id);

-- The cascade finds a message's keys by this index rather than by a scan.
CREATE INDEX idempotency_keys_message_id ON idempotency_keys (message_id);

ALTER TABLE idempotency_keys
    ADD CONSTRAINT idempotency_keys_message_fk
    FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE;
