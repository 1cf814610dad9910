-- What a key's first request asked for (a digest of recipient, body and sender), so a key
-- reused for a different message is refused instead of silently answered with the first.
ALTER TABLE idempotency_keys ADD COLUMN fingerprint text;
