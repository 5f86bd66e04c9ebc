-- The retention sweep finds expired rows by these, oldest first, without reading the rest.
-- (Failed jobs already have jobs_failed, on finished_at.)
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('succeeded', 'cancelled', 'expired');
CREATE INDEX conversations_last_activity ON conversations (last_activity_at);
