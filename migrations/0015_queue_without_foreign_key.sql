-- The queue no longer references `messages` by a foreign key. Its check ran for every queued
-- row: a `FOR KEY SHARE` lock on the new message (a page write and a WAL record) through a
-- plan that locks every partition of `messages`, which cost the bare ingress 60 % of its rate
-- (BENCHMARKS.md, "Issue 24"). What it guarded holds by construction instead:
--   * a queue row is inserted by the statement that inserts its message (db::messages::insert);
--   * a message leaves the queue in the statement that makes it final (db::queue::complete,
--     db::operator::cancel), and only final messages are ever deleted (db::retention) or
--     dropped with their day (db::partitions checks the queue under a SHARE lock first);
--   * the claim joins `messages`, so even a row orphaned by hand is never sent.
ALTER TABLE message_queue DROP CONSTRAINT message_queue_message_id_fkey;
