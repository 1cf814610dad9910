-- The W3C traceparent of the ingress's span (docs/metrics.md, "Traces"): every carrier call of
-- the message is a child of it, so one trace runs from Auth0's request to each carrier's answer,
-- across processes. 55 characters; none for messages stored before this migration.
ALTER TABLE messages ADD COLUMN traceparent text;
