-- Calls for voice requests: each message's channel ('sms' or 'voice'; older rows are SMS)
-- and the locale its text is in (the voice a call speaks it in).
ALTER TABLE messages
    ADD COLUMN channel text NOT NULL DEFAULT 'sms',
    ADD COLUMN locale text;
