-- Messages, their attempts and the delivery receipts are kept in one partition per UTC day,
-- so retention drops a whole day at once (no row deletes, no dead rows, the files go back to
-- the file system) instead of deleting it row by row (src/db/partitions.rs).
--
-- Messages and attempts are partitioned by the message id: ids are UUIDv7, whose first 48 bits
-- are the creation time in epoch milliseconds, so a day is a range of ids, bounded by the uuid
-- whose first 48 bits are the day's start and the rest zero; a lookup by id reads one
-- partition. Receipts name the carrier's id, not ours: they are partitioned by `received_at`.
--
-- A populated table is not copied: it is renamed and attached whole as one "legacy" partition
-- (from MINVALUE up to a bound past its newest row), after a CHECK constraint that proves the
-- bound so ATTACH does not scan it again. Its indexes are attached as they are. Retention drops
-- the legacy partition like a day's once all of it is past retention. Empty tables (a new
-- installation) are simply replaced. A DEFAULT partition on each table catches rows outside
-- every day created (a gateway clock far off), so an insert never fails for want of one.
--
-- Attempts no longer reference messages by a foreign key: detaching a messages partition
-- would check every attempt of every day against it (a scan of the whole attempts table under
-- the messages table's lock). They share the messages' bounds and are dropped with them.

ALTER TABLE message_queue DROP CONSTRAINT message_queue_message_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_message_fk;

ALTER TABLE messages RENAME TO messages_legacy;
ALTER INDEX messages_pkey RENAME TO messages_legacy_pkey;
ALTER INDEX messages_finished_at RENAME TO messages_legacy_finished_at;
ALTER INDEX messages_carrier_message_id RENAME TO messages_legacy_carrier_message_id;

ALTER TABLE message_attempts RENAME TO message_attempts_legacy;
ALTER TABLE message_attempts_legacy DROP CONSTRAINT message_attempts_message_id_fkey;
ALTER TABLE message_attempts_legacy ALTER COLUMN id DROP IDENTITY;
ALTER INDEX message_attempts_pkey RENAME TO message_attempts_legacy_pkey;
ALTER INDEX message_attempts_message RENAME TO message_attempts_legacy_message;

ALTER TABLE delivery_receipts RENAME TO delivery_receipts_legacy;
ALTER TABLE delivery_receipts_legacy ALTER COLUMN id DROP IDENTITY;
ALTER INDEX delivery_receipts_pkey RENAME TO delivery_receipts_legacy_pkey;
ALTER INDEX delivery_receipts_once RENAME TO delivery_receipts_legacy_once;
ALTER INDEX delivery_receipts_pending RENAME TO delivery_receipts_legacy_pending;

CREATE TABLE messages
    (LIKE messages_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)
    PARTITION BY RANGE (id);
ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id);
CREATE INDEX messages_finished_at ON messages (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX messages_carrier_message_id ON messages (carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;

-- Ids come from a sequence (an identity column cannot span partitions here), unique by
-- construction; the index serves a message's attempts in order.
CREATE SEQUENCE message_attempts_id_seq;
CREATE TABLE message_attempts
    (LIKE message_attempts_legacy INCLUDING DEFAULTS INCLUDING STORAGE)
    PARTITION BY RANGE (message_id);
ALTER TABLE message_attempts ALTER COLUMN id SET DEFAULT nextval('message_attempts_id_seq');
ALTER SEQUENCE message_attempts_id_seq OWNED BY message_attempts.id;
CREATE INDEX message_attempts_message ON message_attempts (message_id, id);

-- A report is recorded once across all days: each partition has a unique index on
-- (carrier, carrier_message_id, status), and the insert looks through every partition under
-- an advisory lock on the report (src/db/receipts.rs).
CREATE SEQUENCE delivery_receipts_id_seq;
CREATE TABLE delivery_receipts
    (LIKE delivery_receipts_legacy INCLUDING DEFAULTS INCLUDING STORAGE)
    PARTITION BY RANGE (received_at);
ALTER TABLE delivery_receipts ALTER COLUMN id SET DEFAULT nextval('delivery_receipts_id_seq');
ALTER SEQUENCE delivery_receipts_id_seq OWNED BY delivery_receipts.id;
CREATE INDEX delivery_receipts_pending ON delivery_receipts (received_at) WHERE NOT applied;

DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    -- Legacy rows keep their partition until two days from now at least, so binaries of the
    -- previous release still running during a rolling upgrade write into it, never into the
    -- default partition, and no day's partition is needed before maintenance first runs.
    bound_day date := today + 2;
    newest_ms bigint;
    newest_receipt timestamptz;
    bound_at timestamptz;
    bound_id uuid;
    first_day date := today;
    day date;
BEGIN
    IF EXISTS (SELECT 1 FROM messages_legacy) OR EXISTS (SELECT 1 FROM message_attempts_legacy)
       OR EXISTS (SELECT 1 FROM delivery_receipts_legacy) THEN
        -- The newest id's first 48 bits: its time in epoch milliseconds.
        SELECT ('x' || left(replace(id::text, '-', ''), 12))::bit(48)::bigint
            INTO newest_ms FROM messages_legacy ORDER BY id DESC LIMIT 1;
        IF newest_ms IS NOT NULL THEN
            bound_day := greatest(bound_day,
                (to_timestamp(newest_ms / 1000.0) AT TIME ZONE 'UTC')::date + 1);
        END IF;
        SELECT max(received_at) INTO newest_receipt FROM delivery_receipts_legacy;
        IF newest_receipt IS NOT NULL THEN
            bound_day := greatest(bound_day, (newest_receipt AT TIME ZONE 'UTC')::date + 1);
        END IF;
        bound_at := bound_day::timestamp AT TIME ZONE 'UTC';
        bound_id := (lpad(to_hex((extract(epoch FROM bound_at) * 1000)::bigint), 12, '0')
                     || repeat('0', 20))::uuid;
        EXECUTE format('ALTER TABLE messages_legacy
            ADD CONSTRAINT messages_legacy_bound CHECK (id < %L)', bound_id);
        EXECUTE format('ALTER TABLE messages ATTACH PARTITION messages_legacy
            FOR VALUES FROM (MINVALUE) TO (%L)', bound_id);
        EXECUTE format('ALTER TABLE message_attempts_legacy
            ADD CONSTRAINT message_attempts_legacy_bound CHECK (message_id < %L)', bound_id);
        EXECUTE format('ALTER TABLE message_attempts ATTACH PARTITION message_attempts_legacy
            FOR VALUES FROM (MINVALUE) TO (%L)', bound_id);
        EXECUTE format('ALTER TABLE delivery_receipts_legacy
            ADD CONSTRAINT delivery_receipts_legacy_bound CHECK (received_at < %L)', bound_at);
        EXECUTE format('ALTER TABLE delivery_receipts ATTACH PARTITION delivery_receipts_legacy
            FOR VALUES FROM (MINVALUE) TO (%L)', bound_at);
        PERFORM setval('message_attempts_id_seq',
            coalesce((SELECT max(id) FROM message_attempts_legacy), 0) + 1, false);
        PERFORM setval('delivery_receipts_id_seq',
            coalesce((SELECT max(id) FROM delivery_receipts_legacy), 0) + 1, false);
        first_day := bound_day;
    ELSE
        DROP TABLE messages_legacy, message_attempts_legacy, delivery_receipts_legacy;
    END IF;

    -- Today and the next three days (src/db/partitions.rs keeps this horizon from now on).
    FOR day IN SELECT generate_series(first_day, today + 3, interval '1 day')::date LOOP
        bound_at := day::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I PARTITION OF messages FOR VALUES FROM (%L) TO (%L)',
            'messages_p' || to_char(day, 'YYYYMMDD'),
            (lpad(to_hex((extract(epoch FROM bound_at) * 1000)::bigint), 12, '0')
             || repeat('0', 20))::uuid,
            (lpad(to_hex((extract(epoch FROM bound_at + interval '1 day') * 1000)::bigint), 12,
                  '0') || repeat('0', 20))::uuid);
        EXECUTE format('CREATE TABLE %I PARTITION OF message_attempts
                        FOR VALUES FROM (%L) TO (%L)',
            'message_attempts_p' || to_char(day, 'YYYYMMDD'),
            (lpad(to_hex((extract(epoch FROM bound_at) * 1000)::bigint), 12, '0')
             || repeat('0', 20))::uuid,
            (lpad(to_hex((extract(epoch FROM bound_at + interval '1 day') * 1000)::bigint), 12,
                  '0') || repeat('0', 20))::uuid);
        EXECUTE format('CREATE TABLE %I PARTITION OF delivery_receipts
                        FOR VALUES FROM (%L) TO (%L)',
            'delivery_receipts_p' || to_char(day, 'YYYYMMDD'), bound_at,
            bound_at + interval '1 day');
        EXECUTE format('CREATE UNIQUE INDEX ON %I (carrier, carrier_message_id, status)',
            'delivery_receipts_p' || to_char(day, 'YYYYMMDD'));
    END LOOP;
END $$;

CREATE TABLE messages_default PARTITION OF messages DEFAULT;
CREATE TABLE message_attempts_default PARTITION OF message_attempts DEFAULT;
CREATE TABLE delivery_receipts_default PARTITION OF delivery_receipts DEFAULT;
CREATE UNIQUE INDEX ON delivery_receipts_default (carrier, carrier_message_id, status);

-- The queue and the keys stay unpartitioned (small, swept by row) and reference the messages
-- again: detaching a day checks them, which is cheap because they are small.
ALTER TABLE message_queue ADD CONSTRAINT message_queue_message_id_fkey
    FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_message_fk
    FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE;
